package auditor_test

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/vouch-dev/vouch/verifier/audit/auditor"
)

// benchRecords is the size of the log BenchmarkVerify generates. The
// issue's figure is for 1,000,000: go test -run XXX -bench Verify
// ./verifier/audit/auditor/ -benchtime 1x (the log is generated once per
// run, in the benchmark's temporary directory, and not counted).
var benchRecords = flag.Int("audit.records", 1_000_000, "records in the log BenchmarkVerify generates")

// BenchmarkVerify measures the auditor: records verified per second on a
// generated log (signature, recomputed tree, every tile, every record
// decoded; no evidence or re-appraisal).
func BenchmarkVerify(b *testing.B) {
	dir := b.TempDir()
	genLog(b, dir, *benchRecords, false)
	key, err := os.ReadFile(filepath.Join(dir, "log.pub"))
	if err != nil {
		b.Fatal(err)
	}
	src, err := auditor.OpenSource(dir, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	var records uint64
	for b.Loop() {
		rep, err := auditor.Verify(context.Background(), auditor.Options{Source: src, PublicKey: string(key[:len(key)-1])})
		if err != nil || !rep.OK() {
			b.Fatalf("%v %v", err, rep.Findings)
		}
		records += rep.Records
	}
	b.ReportMetric(float64(records)/b.Elapsed().Seconds(), "records/s")
}
