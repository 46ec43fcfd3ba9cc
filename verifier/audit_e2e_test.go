package verifier_test

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/verifier/audit"
	"github.com/vouch-dev/vouch/verifier/audit/auditor"
)

// TestEveryOutcomeIsAudited drives a real verifier through a refusal at
// each kind of step and an issuance, then audits its data directory from
// outside: every outcome is a record with its reasons and failing step, the
// credential carries its record's index, the archived evidence re-appraises
// to the recorded outcomes, and a record that lies about an outcome is
// caught by re-appraisal even though the log itself verifies.
func TestEveryOutcomeIsAudited(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, demoImage, false)
	dataDir := e.srv.AuditLog().DataDir()

	// 1. AK not enrolled.
	if _, err := e.postEvidence(t, e.evidence(t)); attest.ReasonOf(err) != attest.ReasonAKUnknown {
		t.Fatalf("unenrolled AK: %v", err)
	}
	// 2. Enrolled (recorded, as enrollment does), then issued.
	e.enroll(t)
	spki, _ := x509.MarshalPKIXPublicKey(e.agent.AKPublic())
	akd := sha256.Sum256(spki)
	if _, err := e.srv.Record(ctx, &audit.Record{Kind: audit.KindEnrollment, Outcome: "enrolled", Agent: &audit.Agent{AKDigest: akd[:]}, Detail: map[string]string{"method": "operator"}}); err != nil {
		t.Fatal(err)
	}
	ev := e.evidence(t)
	issued, err := e.client.Attest(ctx, ev)
	if err != nil {
		t.Fatal(err)
	}
	claims, err := attest.VerifyCredential(issued.Credential, e.keys(t), attest.CredentialOptions{Audience: []string{request.Audience}, Now: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if claims.LogIndex == nil || issued.LogIndex != strconv.FormatUint(*claims.LogIndex, 10) {
		t.Fatalf("log index: claim %v, header %q", claims.LogIndex, issued.LogIndex)
	}
	// 3. The same evidence again: nonce replayed.
	if _, err := e.postEvidence(t, ev); attest.ReasonOf(err) != attest.ReasonNonceReplayed {
		t.Fatalf("replay: %v", err)
	}
	// 4. Certification signature tampered: refused at the agent-key step.
	bad := e.evidence(t)
	bad.CertifySig[len(bad.CertifySig)-1] ^= 1
	if _, err := e.postEvidence(t, bad); err == nil {
		t.Fatal("tampered certification accepted")
	}
	// 5. Wrong media type: refused before the evidence is read.
	if _, err := e.post(t, "application/json", []byte("{}")); attest.ReasonOf(err) != attest.ReasonUnsupportedMediaType {
		t.Fatalf("media type: %v", err)
	}
	if err := e.srv.Close(); err != nil {
		t.Fatal(err)
	}

	// The auditor, over HTTP from the tiles a handler serves (as vouchd does).
	key, err := os.ReadFile(filepath.Join(dataDir, audit.PublicKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	logSrv := httptest.NewServer(auditHandler(dataDir, strings.TrimSpace(string(key))))
	defer logSrv.Close()
	src, err := auditor.OpenSource(logSrv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	recs := map[uint64]*audit.Record{}
	rep, err := auditor.Verify(ctx, auditor.Options{Source: src, PublicKey: strings.TrimSpace(string(key)), Reappraise: true,
		OnRecord: func(i uint64, r *audit.Record) { recs[i] = r }})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		t.Fatalf("findings: %v", rep.Findings)
	}
	// start, refusal, enrollment, issuance, replay, agent-key, media type
	if rep.Records != 7 || rep.ByKind["attestation"] != 5 || rep.Reappraised != 3 {
		t.Fatalf("records %d, by kind %v, reappraised %d, skipped %v", rep.Records, rep.ByKind, rep.Reappraised, rep.Skipped)
	}
	iss := recs[*claims.LogIndex]
	if iss == nil || iss.Outcome != audit.OutcomeIssued || iss.Credential == nil || string(iss.Credential.ID) != string(claims.ID) ||
		iss.Credential.Subject != claims.Subject || iss.Credential.Expiry != claims.Expiry || iss.Agent.ID != claims.Subject {
		t.Fatalf("issuance record at %d: %+v", *claims.LogIndex, iss)
	}
	steps := map[string]attest.Reason{}
	for _, r := range recs {
		if r.Kind == audit.KindAttestation && r.Outcome == audit.OutcomeRefused {
			steps[r.Step] = r.Reasons[0]
		}
	}
	if steps["ak"] != attest.ReasonAKUnknown || steps["nonce"] != attest.ReasonNonceReplayed || steps["agent-key"] == "" || steps[""] != attest.ReasonUnsupportedMediaType {
		t.Fatalf("refusals by step: %v", steps)
	}
	inc, err := auditor.Prove(ctx, auditor.Options{Source: src, PublicKey: strings.TrimSpace(string(key))}, *claims.LogIndex)
	if err != nil || string(inc.Record.Credential.ID) != string(claims.ID) {
		t.Fatalf("inclusion proof of the issuance: %v", err)
	}

	// A validly signed record that lies: the refused evidence with the
	// tampered certification claimed as issued. The log verifies;
	// re-appraisal does not.
	var lie *audit.Record
	for _, r := range recs {
		if r.Step == "agent-key" {
			c := *r
			lie = &c
		}
	}
	lie.Outcome, lie.Step, lie.Reasons = audit.OutcomeIssued, "", nil
	l, err := audit.Open(ctx, audit.Options{DataDir: dataDir, CheckpointInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	lieIdx, err := l.Append(ctx, lie)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err = auditor.Verify(ctx, auditor.Options{Source: src, PublicKey: strings.TrimSpace(string(key)), Reappraise: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Findings) == 0 {
		t.Fatal("the lying record was not caught")
	}
	for _, f := range rep.Findings {
		if f.Kind != auditor.FindReappraisal || *f.Index != lieIdx {
			t.Errorf("unexpected finding %v", f)
		}
		t.Log(f)
	}
}
