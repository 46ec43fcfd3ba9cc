package demo

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vouch-dev/vouch/attest"
)

// TestBootLogIsTheTestdataCopy keeps the embedded demo log identical to the
// attributed copy in testdata.
func TestBootLogIsTheTestdataCopy(t *testing.T) {
	want, err := os.ReadFile("../../testdata/eventlogs/rhel8-uefi.bin")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(BootLog, want) {
		t.Fatal("internal/demo/rhel8-uefi.bin differs from testdata/eventlogs/rhel8-uefi.bin")
	}
}

func TestRun(t *testing.T) {
	var out bytes.Buffer
	dir := filepath.Join(t.TempDir(), "data")
	sum, err := Run(context.Background(), Options{DataDir: dir, Out: &out})
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, out.String())
	}
	if !sum.OK() {
		t.Fatalf("steps not as expected:\n%s", out.String())
	}
	want := map[string]attest.Reason{
		"boot": "", "enroll": "", "attest": "", "call": "",
		"replay": attest.ReasonPoPReplayed, "stolen": attest.ReasonPoPSignature, "bad image": attest.ReasonRefsImageDigest,
		"delegate": "", "delete": attest.ReasonScopeInsufficient, "elevate": "", "reuse": attest.ReasonCredentialReused,
		"revoked": attest.ReasonDelegationRevoked,
		"audit":   "",
	}
	for _, st := range sum.Steps {
		r, ok := want[st.Name]
		if !ok {
			t.Errorf("unexpected step %q", st.Name)
			continue
		}
		if st.Reason != r {
			t.Errorf("step %s: reason %q, want %q", st.Name, st.Reason, r)
		}
		delete(want, st.Name)
	}
	if len(want) != 0 {
		t.Errorf("steps missing: %v", want)
	}
	if _, err := os.Stat(filepath.Join(dir, "vouch.db")); err != nil {
		t.Errorf("--data directory not kept: %v", err)
	}
	// start, delegation created, enrollment, issuance decision and
	// attestation, six authorization decisions (read, delete, elevation,
	// write, reused write, read after revocation), the delegation's
	// revocation and the bad image's refusal
	if sum.AuditRecords != 13 {
		t.Errorf("audit log holds %d records, want 13", sum.AuditRecords)
	}
	if !strings.Contains(out.String(), "vouch audit verify --log "+dir) {
		t.Errorf("narration does not say how to audit the log:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "agent id urn:ietf:params:oauth:ckt:sha-256:") {
		t.Errorf("narration lacks the agent id:\n%s", out.String())
	}
}
