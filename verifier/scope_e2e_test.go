package verifier_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/verifier/store"
)

// delegate stores a delegation as the admin API would.
func (e *env) delegate(t *testing.T, id string, mutate func(*store.Delegation)) {
	t.Helper()
	now := e.clock.Now()
	d := store.Delegation{
		ID: id, User: "alice", Intent: "summarize-documents",
		DelegationSpec: store.DelegationSpec{
			ImageDigests: []string{demoImage.ImageDigest},
			Resources:    []string{`Document::"customer-A/*"`, `Summary::"customer-A/*"`},
		},
		CreatedAt: now, ExpiresAt: now.Add(time.Hour),
	}
	if mutate != nil {
		mutate(&d)
	}
	if err := e.srv.Store().CreateDelegation(context.Background(), d); err != nil {
		t.Fatal(err)
	}
}

// TestIssuanceScope attests for real (simulated TPM, real firmware log)
// with a delegation, and checks the scope is delegation ∩ intent ∩ policy.
func TestIssuanceScope(t *testing.T) {
	e := newEnv(t, demoImage, true, noRateLimits) // a dozen attestations within the second
	ctx := context.Background()
	e.delegate(t, "dlg_ok", nil)
	e.delegate(t, "dlg_short", func(d *store.Delegation) { d.ExpiresAt = e.clock.Now().Add(20 * time.Second) })
	e.delegate(t, "dlg_other_image", func(d *store.Delegation) { d.ImageDigests = []string{"sha256:00"} })
	e.delegate(t, "dlg_by_agent_id", func(d *store.Delegation) {
		ck, _ := attest.PublicCOSEKey(e.agent.PublicKey())
		sub, _ := attest.SubjectOf(ck)
		d.ImageDigests, d.AgentIDs = nil, []string{sub}
	})
	e.delegate(t, "dlg_suspended", nil)
	if _, err := e.srv.Store().SetDelegationStatus(ctx, "dlg_suspended", store.DelegationSuspended, "alice", "", e.clock.Now()); err != nil {
		t.Fatal(err)
	}
	e.delegate(t, "dlg_office", func(d *store.Delegation) { d.Networks = []string{"10.0.0.0/8"} })

	read := []string{`Document::"customer-A/report-7"`, `Summary::"customer-A/report-7"`}
	tests := []struct {
		name      string
		req       attest.Request
		wantScope []string
		wantLife  int64
		want      attest.Reason
	}{
		{
			name:      "delegated",
			req:       attest.Request{Intent: "summarize-documents", Resources: read, Delegation: "dlg_ok"},
			wantScope: []string{`documents:read:Document::"customer-A/report-7"`, `summaries:create:Summary::"customer-A/report-7"`},
			wantLife:  60,
		},
		{
			name:      "intent taken from the delegation, lifetime capped by it",
			req:       attest.Request{Resources: read[:1], Delegation: "dlg_short"},
			wantScope: []string{`documents:read:Document::"customer-A/report-7"`},
			wantLife:  20,
		},
		{
			name:      "agent id selector",
			req:       attest.Request{Resources: read[:1], Delegation: "dlg_by_agent_id"},
			wantScope: []string{`documents:read:Document::"customer-A/report-7"`},
			wantLife:  60,
		},
		{name: "identity only", req: attest.Request{}, wantLife: 60},
		{name: "intent without delegation", req: attest.Request{Intent: "summarize-documents", Resources: read}, want: attest.ReasonDelegationMissing},
		{name: "delegation for another image", req: attest.Request{Resources: read, Delegation: "dlg_other_image"}, want: attest.ReasonDelegationAgent},
		{name: "resource outside the delegation", req: attest.Request{Resources: []string{`Document::"customer-B/x"`}, Delegation: "dlg_ok"}, want: attest.ReasonResourceNotDelegated},
		{name: "another intent", req: attest.Request{Intent: "read-summaries", Resources: read, Delegation: "dlg_ok"}, want: attest.ReasonIntentUnknown},
		{name: "no resources", req: attest.Request{Delegation: "dlg_ok"}, want: attest.ReasonScopeEmpty},
		{name: "unknown delegation", req: attest.Request{Resources: read, Delegation: "dlg_nope"}, want: attest.ReasonDelegationUnknown},
		{name: "suspended delegation", req: attest.Request{Resources: read, Delegation: "dlg_suspended"}, want: attest.ReasonDelegationSuspended},
		{name: "from a network the delegation does not allow", req: attest.Request{Resources: read, Delegation: "dlg_office"}, want: attest.ReasonNetworkDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := tt.req
			req.Audience = "https://docs.example"
			cred, err := e.agent.Attest(ctx, e.client, &req)
			if tt.want != "" {
				if attest.ReasonOf(err) != tt.want {
					t.Fatalf("err = %v, want %s", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c, err := attest.VerifyCredential(cred, e.keys(t), attest.CredentialOptions{Audience: []string{req.Audience}, Now: e.clock.Now})
			if err != nil {
				t.Fatal(err)
			}
			slices.Sort(c.Scope)
			if !slices.Equal(c.Scope, tt.wantScope) || c.Expiry-c.IssuedAt != tt.wantLife || c.Delegation != req.Delegation {
				t.Fatalf("scope %v, lifetime %d, delegation %q", c.Scope, c.Expiry-c.IssuedAt, c.Delegation)
			}
			if c.Delegation != "" && c.Intent != "summarize-documents" {
				t.Fatalf("intent %q", c.Intent)
			}
			rec, err := e.srv.Store().CredentialByID(ctx, c.ID)
			if err != nil || rec.Delegation != c.Delegation || len(rec.Scope) != len(c.Scope) {
				t.Fatalf("recorded %+v %v", rec, err)
			}
		})
	}
}
