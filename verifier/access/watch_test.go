package access_test

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/verifier/audit"
	"github.com/vouch-dev/vouch/verifier/store"
)

// recordIssued stores a minted credential as /v1/attest would have.
func (f *fixture) recordIssued(t *testing.T, raw []byte) *attest.Claims {
	t.Helper()
	c, err := attest.VerifyCredential(raw, f.srv.Keys().KeySet(), attest.CredentialOptions{Audience: []string{audience}, Now: f.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.srv.Store().RecordCredential(context.Background(), store.Credential{ID: c.ID, Subject: c.Subject, Audience: c.Audience,
		AKDigest: []byte("ak"), ImageDigest: image, Scope: c.Scope, IssuedAt: c.IssuedAtTime(), ExpiresAt: c.ExpiresAt(),
		Delegation: c.Delegation, Intent: c.Intent}); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestRevokedCredentialDenied: a decision re-checks revocation every time,
// whoever revoked (the monitor, an operator, a delegation's suspension).
func TestRevokedCredentialDenied(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	dlg := f.delegate(t, nil)
	ask := func(raw []byte) *attest.Decision {
		return f.ask(t, f.question(t, raw, nil, http.MethodGet, "documents:read", report))
	}

	cred := f.mint(t, nil, func(c *attest.Claims) { c.Delegation = dlg.ID })
	c := f.recordIssued(t, cred)
	if d := ask(cred); !d.Permitted() {
		t.Fatalf("before revocation: %+v", d.Reasons)
	}
	// Revoked by another process (the CLI, another replica): decisions see
	// it once the verifier re-reads the revocation feed's head, within a
	// heartbeat (250 ms).
	if _, err := f.srv.Store().RevokeCredentialID(ctx, c.ID, store.Revocation{Reason: "test", RevokedBy: "test", RevokedAt: f.clock.Now()}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for d := ask(cred); d.Permitted(); d = ask(cred) {
		if time.Since(start) > 5*time.Second {
			t.Fatal("a credential revoked in the database is still permitted after 5 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if d := ask(cred); d.Reasons[0].Reason != attest.ReasonCredentialRevoked {
		t.Fatalf("revoked credential: %+v", d)
	}
	t.Logf("revoked by another process → refused after %v", time.Since(start).Round(time.Millisecond))

	// Suspending the delegation revokes its live credentials through the
	// feed that offline relying parties follow.
	cred2 := f.mint(t, nil, func(c *attest.Claims) { c.Delegation = dlg.ID })
	c2 := f.recordIssued(t, cred2)
	if _, err := f.alice.SetStatus(ctx, dlg.ID, "suspend", "investigating"); err != nil {
		t.Fatal(err)
	}
	feed, err := f.srv.Store().Revocations(ctx, 0, 100, f.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(feed, func(r store.Revocation) bool { return string(r.CTI) == string(c2.ID) }) {
		t.Fatalf("the suspended delegation's credential is not in the revocation feed: %+v", feed)
	}
	if rec := f.audit.last(); rec.Kind != audit.KindRevocation || rec.Detail["credentials_revoked"] != "1" {
		t.Fatalf("audit record %+v", rec)
	}
}

// TestDecisionsFeedTheMonitor: out-of-intent requests decided by
// /v1/authorize reach the behaviour monitor, which raises an alert.
func TestDecisionsFeedTheMonitor(t *testing.T) {
	f := newFixture(t)
	dlg := f.delegate(t, nil)
	cred := f.mint(t, nil, func(c *attest.Claims) { c.Delegation = dlg.ID })
	f.recordIssued(t, cred)
	for range 3 {
		if d := f.ask(t, f.question(t, cred, nil, http.MethodDelete, "documents:delete", report)); d.Permitted() {
			t.Fatal("a delete was permitted")
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if slices.ContainsFunc(f.audit.all(), func(r *audit.Record) bool {
			return r.Kind == audit.KindAlert && strings.Contains(r.Detail["rules"], "out-of-intent")
		}) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("the monitor raised no out-of-intent alert for three deletes outside the intent")
}
