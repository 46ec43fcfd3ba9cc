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
		"replay": attest.ReasonPoPReplayed, "stolen": attest.ReasonPoPSignature, "theft": attest.ReasonCredentialRevoked,
		"delegate": "", "delete": attest.ReasonScopeInsufficient, "elevate": "", "reuse": attest.ReasonCredentialReused,
		"revoked": attest.ReasonCredentialRevoked, // or delegation-revoked, see below
		"burst":   attest.ReasonCredentialRevoked, "intent": attest.ReasonCredentialRevoked, "quarantine": attest.ReasonAgentQuarantined,
		"bad image": attest.ReasonRefsImageDigest, "machine": "",
		"audit": "", "split view": "",
	}
	for _, st := range sum.Steps {
		r, ok := want[st.Name]
		if !ok {
			t.Errorf("unexpected step %q", st.Name)
			continue
		}
		if st.Reason != r && !(st.Name == "revoked" && st.Reason == attest.ReasonDelegationRevoked) {
			t.Errorf("step %s: reason %q, want %q", st.Name, st.Reason, r)
		}
		delete(want, st.Name)
	}
	if len(want) != 0 {
		t.Errorf("steps missing: %v", want)
	}
	if !sum.Quarantined || len(sum.Alerts) < 4 || sum.RevocationToRefusal <= 0 {
		t.Errorf("monitoring not in the summary: quarantined=%v alerts=%+v revocation→refusal=%v", sum.Quarantined, sum.Alerts, sum.RevocationToRefusal)
	}
	t.Logf("demo: %d alerts; burst revoked → refused at the relying party in %v", len(sum.Alerts), sum.RevocationToRefusal)
	if _, err := os.Stat(filepath.Join(dir, "vouch.db")); err != nil {
		t.Errorf("--data directory not kept: %v", err)
	}
	// Every decision is in the log: the demo's fixed steps alone make 30
	// records (start, delegations, enrollment, attestations, decisions,
	// revocations, quarantines, alerts); the burst adds one per request.
	// The "audit" step verified and re-appraised them all.
	if sum.AuditRecords < 30 {
		t.Errorf("audit log holds %d records, want at least 30", sum.AuditRecords)
	}
	if !strings.Contains(out.String(), "vouch audit verify --log "+dir) {
		t.Errorf("narration does not say how to audit the log:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "agent id urn:ietf:params:oauth:ckt:sha-256:") {
		t.Errorf("narration lacks the agent id:\n%s", out.String())
	}
}
