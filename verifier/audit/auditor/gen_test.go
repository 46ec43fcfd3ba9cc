package auditor_test

import (
	"flag"
	"testing"
)

var genDir = flag.String("audit.gen", "", "generate a log of -audit.records records into this directory (benchmark helper)")

// TestGenerateLog is the benchmark helper that writes a large log to a
// directory, for timing `vouch audit verify` on it:
//
//	go test -run TestGenerateLog ./verifier/audit/auditor/ -args -audit.gen=/tmp/big -audit.records=1000000
func TestGenerateLog(t *testing.T) {
	if *genDir == "" {
		t.Skip("benchmark helper: give -audit.gen=DIR")
	}
	genLog(t, *genDir, *benchRecords, false)
}
