package access_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/verifier/access"
	"github.com/vouch-dev/vouch/verifier/audit"
)

func TestAuthorize(t *testing.T) {
	f := newFixture(t)
	dlg := f.delegate(t, nil)
	withDelegation := func(c *attest.Claims) { c.Delegation = dlg.ID }
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)

	tests := []struct {
		name     string
		cred     func(c *attest.Claims) // on top of withDelegation
		question func(q *attest.AuthorizeRequest)
		key      *ecdsa.PrivateKey // proof key; nil = the credential's own
		action   string
		resource string
		want     attest.Reason // "" = permit
	}{
		{name: "read permitted", action: "documents:read", resource: report},
		{name: "delete refused: not in the credential's scope", action: "documents:delete", resource: report, want: attest.ReasonScopeInsufficient},
		{
			name: "action outside the intent even when the scope says so", action: "documents:delete", resource: report,
			cred: func(c *attest.Claims) { c.Scope = append(c.Scope, `documents:delete:Document::"customer-A/*"`) },
			want: attest.ReasonIntentAction,
		},
		{
			name: "resource outside the delegation even when the scope says so", action: "documents:read", resource: `Document::"customer-B/x"`,
			cred: func(c *attest.Claims) { c.Scope = []string{`documents:read:Document::"*"`} },
			want: attest.ReasonResourceNotDelegated,
		},
		{name: "resource outside the scope", action: "documents:read", resource: `Document::"customer-B/x"`, want: attest.ReasonScopeInsufficient},
		{name: "another agent's credential with a valid proof of its own", key: other, action: "documents:read", resource: report, want: attest.ReasonPoPSignature},
		{name: "credential without delegation", cred: func(c *attest.Claims) { c.Delegation = "" }, action: "documents:read", resource: report, want: attest.ReasonDelegationMissing},
		{name: "unknown delegation", cred: func(c *attest.Claims) { c.Delegation = "dlg_nope" }, action: "documents:read", resource: report, want: attest.ReasonDelegationUnknown},
		{name: "intent differs from the delegation's", cred: func(c *attest.Claims) { c.Intent = "read-summaries" }, action: "documents:read", resource: report, want: attest.ReasonIntentUnknown},
		{name: "another image", cred: func(c *attest.Claims) { c.Submods[attest.SubmodWorkload].Claims.ImageDigest.Value[0] ^= 1 }, action: "documents:read", resource: report, want: attest.ReasonDelegationAgent},
		{name: "credential for another relying party", question: func(q *attest.AuthorizeRequest) { q.Audience = "https://mail.example" }, action: "documents:read", resource: report, want: attest.ReasonCredentialAudience},
		{name: "proof for another request", question: func(q *attest.AuthorizeRequest) { q.Method = http.MethodDelete }, action: "documents:read", resource: report, want: attest.ReasonPoPTarget},
		{name: "proof for another body", question: func(q *attest.AuthorizeRequest) { q.BodySHA256 = bytes.Repeat([]byte{1}, 32) }, action: "documents:read", resource: report, want: attest.ReasonPoPBody},
		{name: "threat flagged", question: func(q *attest.AuthorizeRequest) { q.Context.ThreatFlags = []string{"tor-exit"} }, action: "documents:read", resource: report, want: attest.ReasonPolicyDenied},
		{name: "anomalous", question: func(q *attest.AuthorizeRequest) { q.Context.AnomalyScore = 95 }, action: "documents:read", resource: report, want: attest.ReasonPolicyDenied},
		{name: "not signed by this verifier", cred: func(c *attest.Claims) {}, action: "documents:read", resource: report, want: attest.ReasonCredentialSignature},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cred := f.mint(t, nil, func(c *attest.Claims) {
				withDelegation(c)
				if tt.cred != nil {
					tt.cred(c)
				}
			})
			if tt.want == attest.ReasonCredentialSignature {
				cred[len(cred)-1] ^= 1
			}
			var key = f.agent
			if tt.key != nil {
				key = tt.key
			}
			q := f.question(t, cred, key, http.MethodGet, tt.action, tt.resource)
			if tt.question != nil {
				tt.question(q)
			}
			d := f.ask(t, q)
			if tt.want == "" {
				if !d.Permitted() {
					t.Fatalf("denied: %+v", d.Reasons)
				}
				if !slices.Contains(d.Policies, "agents-with-active-delegation") || d.Delegation != dlg.ID || d.Subject != f.sub || !strings.HasPrefix(d.PolicySet, "sha256:") {
					t.Fatalf("decision %+v", d)
				}
			} else {
				if d.Permitted() || len(d.Reasons) == 0 || d.Reasons[0].Reason != tt.want || d.Reasons[0].Detail == "" {
					t.Fatalf("decision %+v, want deny %s", d, tt.want)
				}
			}
			rec := f.audit.last()
			if rec.Kind != audit.KindDecision || rec.Outcome != d.Decision || rec.Action != tt.action || rec.Resources[0] != tt.resource || rec.PolicyID != d.PolicySet {
				t.Fatalf("audit record %+v", rec)
			}
			if tt.want != "" && (len(rec.Reasons) != 1 || rec.Reasons[0] != tt.want) {
				t.Fatalf("audit reasons %v", rec.Reasons)
			}
		})
	}
	// The permit's record names user, delegation and agent.
	f.ask(t, f.question(t, f.mint(t, nil, withDelegation), nil, http.MethodGet, "documents:read", report))
	if rec := f.audit.last(); rec.User != "alice" || rec.Delegation != dlg.ID || rec.Agent.ID != f.sub || rec.Agent.ImageDigest != image {
		t.Fatalf("audit record %+v", rec)
	}
}

func TestDelegationStatusMidSession(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	dlg := f.delegate(t, nil)
	cred := f.mint(t, nil, func(c *attest.Claims) { c.Delegation = dlg.ID })
	ask := func() *attest.Decision {
		return f.ask(t, f.question(t, cred, nil, http.MethodGet, "documents:read", report))
	}
	steps := []struct {
		op   string
		want attest.Reason
	}{
		{"", ""},
		{"suspend", attest.ReasonDelegationSuspended},
		{"resume", ""},
		{"revoke", attest.ReasonDelegationRevoked},
	}
	for _, st := range steps {
		if st.op != "" {
			v, err := f.alice.SetStatus(ctx, dlg.ID, st.op, "test "+st.op)
			if err != nil {
				t.Fatalf("%s: %v", st.op, err)
			}
			if rec := f.audit.last(); rec.Kind != audit.KindRevocation || rec.Delegation != dlg.ID {
				t.Fatalf("%s: audit %+v", st.op, rec)
			}
			_ = v
		}
		// The very next decision sees the change: no waiting.
		d := ask()
		if st.want == "" && !d.Permitted() || st.want != "" && (d.Permitted() || d.Reasons[0].Reason != st.want) {
			t.Fatalf("after %q: %+v", st.op, d)
		}
	}
	if _, err := f.alice.SetStatus(ctx, dlg.ID, "resume", ""); attest.ReasonOf(err) != attest.ReasonRequestMalformed {
		t.Fatalf("resuming a revoked delegation: %v", err)
	}
	// The revocation stream has the three events, in order.
	evs, err := f.srv.Store().DelegationEventsSince(ctx, 0, 10)
	if err != nil || len(evs) != 3 || evs[0].Event != "suspended" || evs[1].Event != "resumed" || evs[2].Event != "revoked" || evs[2].Target != dlg.ID {
		t.Fatalf("revocation events %+v %v", evs, err)
	}
}

// TestRevocationAcrossReplicas: a delegation revoked through one verifier
// is refused by another sharing the database within 1 s (the delegation
// cache lifetime).
func TestRevocationAcrossReplicas(t *testing.T) {
	f := newFixture(t)
	dlg := f.delegate(t, nil)
	cred := f.mint(t, nil, func(c *attest.Claims) { c.Delegation = dlg.ID })
	if d := f.ask(t, f.question(t, cred, nil, http.MethodGet, "documents:read", report)); !d.Permitted() {
		t.Fatal(d)
	}
	// Revoke behind this replica's back, straight in the shared database.
	if _, err := f.srv.Store().SetDelegationStatus(context.Background(), dlg.ID, "revoked", "other-replica", "", time.Now()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Second)
	for {
		d := f.ask(t, f.question(t, cred, nil, http.MethodGet, "documents:read", report))
		if !d.Permitted() {
			if d.Reasons[0].Reason != attest.ReasonDelegationRevoked {
				t.Fatal(d)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("still permitted 1 s after revocation")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestEnvironment(t *testing.T) {
	f := newFixture(t)
	now := f.clock.Now().UTC()
	window := time.Date(2000, 1, 1, now.Hour(), 0, 0, 0, time.UTC).Format("15:04") + "-" + time.Date(2000, 1, 1, now.Hour(), 0, 0, 0, time.UTC).Add(time.Hour).Format("15:04")
	dlg := f.delegate(t, func(q *access.DelegationRequest) {
		q.Networks = []string{"10.0.0.0/8", "192.0.2.7"}
		q.Window = window
		q.ExpiresAt = f.clock.Now().Add(30 * time.Second)
	})
	if !slices.Equal(dlg.Networks, []string{"10.0.0.0/8", "192.0.2.7/32"}) {
		t.Fatalf("networks stored as %v", dlg.Networks)
	}
	cred := f.mint(t, nil, func(c *attest.Claims) { c.Delegation = dlg.ID })
	tests := []struct {
		name string
		src  string
		want attest.Reason
	}{
		{"allowed network", "10.9.9.9", ""},
		{"allowed address", "192.0.2.7", ""},
		{"forbidden network", "192.0.2.8", attest.ReasonNetworkDenied},
		{"unknown address", "", attest.ReasonNetworkDenied},
	}
	for _, tt := range tests {
		q := f.question(t, cred, nil, http.MethodGet, "documents:read", report)
		q.Context.SourceIP = tt.src
		d := f.ask(t, q)
		if tt.want == "" && !d.Permitted() || tt.want != "" && (d.Permitted() || d.Reasons[0].Reason != tt.want) {
			t.Errorf("%s: %+v", tt.name, d)
		}
	}
	// Outside the hour window (an hour later the credential is expired
	// too, so move the window instead: a second delegation an hour off).
	later := f.delegate(t, func(q *access.DelegationRequest) {
		h := time.Date(2000, 1, 1, now.Hour(), 0, 0, 0, time.UTC).Add(time.Hour)
		q.Window = h.Format("15:04") + "-" + h.Add(time.Hour).Format("15:04")
	})
	d := f.ask(t, f.question(t, f.mint(t, nil, func(c *attest.Claims) { c.Delegation = later.ID }), nil, http.MethodGet, "documents:read", report))
	if d.Permitted() || d.Reasons[0].Reason != attest.ReasonTimeWindow {
		t.Fatalf("outside window: %+v", d)
	}

	// Clock edges: the delegation expires at +30 s, before the credential.
	f.clock.Advance(29 * time.Second)
	if d := f.ask(t, f.question(t, cred, nil, http.MethodGet, "documents:read", report)); !d.Permitted() {
		t.Fatalf("1 s before the delegation expires: %+v", d)
	}
	f.clock.Advance(time.Second)
	if d := f.ask(t, f.question(t, cred, nil, http.MethodGet, "documents:read", report)); d.Permitted() || d.Reasons[0].Reason != attest.ReasonDelegationExpired {
		t.Fatalf("at expiry: %+v", d)
	}
}

func TestClockSkewEdges(t *testing.T) {
	f := newFixture(t)
	dlg := f.delegate(t, nil)
	cred := f.mint(t, nil, func(c *attest.Claims) { c.Delegation = dlg.ID }) // exp = now + 60 s
	type step struct {
		name    string
		advance time.Duration // clock move before the question
		popAge  time.Duration // proof made this long before the verifier's now (negative: ahead)
		want    attest.Reason
	}
	steps := []step{
		{name: "proof 30 s old", popAge: 30 * time.Second},
		{name: "proof 31 s old", popAge: 31 * time.Second, want: attest.ReasonPoPStale},
		{name: "proof 5 s ahead", popAge: -5 * time.Second},
		{name: "proof 6 s ahead", popAge: -6 * time.Second, want: attest.ReasonPoPStale},
		{name: "credential 4 s past exp, within skew", advance: 64 * time.Second},
		{name: "credential 5 s past exp", advance: time.Second, want: attest.ReasonCredentialExpired},
	}
	for _, st := range steps {
		f.clock.Advance(st.advance)
		now := f.clock.Now()
		f.clock.Advance(-st.popAge)
		q := f.question(t, cred, nil, http.MethodGet, "documents:read", report)
		f.clock.Advance(st.popAge)
		if !f.clock.Now().Equal(now) {
			t.Fatal("clock drift in test")
		}
		d := f.ask(t, q)
		if st.want == "" && !d.Permitted() || st.want != "" && (d.Permitted() || d.Reasons[0].Reason != st.want) {
			t.Fatalf("%s: %+v", st.name, d)
		}
	}
	// A credential not yet valid (verifier clock behind the issuer's).
	early := f.mint(t, nil, func(c *attest.Claims) {
		c.Delegation, c.NotBefore, c.IssuedAt = dlg.ID, c.NotBefore+6, c.IssuedAt+6
	})
	if d := f.ask(t, f.question(t, early, nil, http.MethodGet, "documents:read", report)); d.Permitted() || d.Reasons[0].Reason != attest.ReasonCredentialNotYetValid {
		t.Fatalf("nbf 6 s ahead: %+v", d)
	}
}

func TestAuthorizeReplayAndMalformed(t *testing.T) {
	f := newFixture(t)
	dlg := f.delegate(t, nil)
	cred := f.mint(t, nil, func(c *attest.Claims) { c.Delegation = dlg.ID })
	q := f.question(t, cred, nil, http.MethodGet, "documents:read", report)
	if d := f.ask(t, q); !d.Permitted() {
		t.Fatal(d)
	}
	if d := f.ask(t, q); d.Permitted() || d.Reasons[0].Reason != attest.ReasonPoPReplayed {
		t.Fatalf("replayed question: %+v", d)
	}
	for name, mut := range map[string]func(*attest.AuthorizeRequest){
		"pattern resource": func(q *attest.AuthorizeRequest) { q.Resource = `Document::"customer-A/*"` },
		"bad resource":     func(q *attest.AuthorizeRequest) { q.Resource = "report-7" },
		"bad action":       func(q *attest.AuthorizeRequest) { q.Action = "READ" },
		"no audience":      func(q *attest.AuthorizeRequest) { q.Audience = "" },
		"short digest":     func(q *attest.AuthorizeRequest) { q.BodySHA256 = q.BodySHA256[:8] },
		"bad source ip":    func(q *attest.AuthorizeRequest) { q.Context.SourceIP = "nowhere" },
		"no credential":    func(q *attest.AuthorizeRequest) { q.Credential = nil },
	} {
		q := f.question(t, cred, nil, http.MethodGet, "documents:read", report)
		mut(q)
		_, err := attest.PostAuthorize(context.Background(), f.http.Client(), f.http.URL+attest.AuthorizePath, q)
		if attest.ReasonOf(err) != attest.ReasonRequestMalformed {
			t.Errorf("%s: %v", name, err)
		}
	}
	resp, err := f.http.Client().Post(f.http.URL+attest.AuthorizePath, "application/json", strings.NewReader(`{"credential":"AA==","extra":1}`))
	if err != nil {
		t.Fatal(err)
	}
	if p := attest.ReadProblem(resp); resp.StatusCode != http.StatusBadRequest || attest.ReasonOf(p) != attest.ReasonRequestMalformed {
		t.Fatalf("unknown field: %d %v", resp.StatusCode, p)
	}
}

func TestAuditFailureFailsClosed(t *testing.T) {
	f := newFixture(t)
	dlg := f.delegate(t, nil)
	cred := f.mint(t, nil, func(c *attest.Claims) { c.Delegation = dlg.ID })
	f.audit.fail = errors.New("disk full")
	_, err := attest.PostAuthorize(context.Background(), f.http.Client(), f.http.URL+attest.AuthorizePath, f.question(t, cred, nil, http.MethodGet, "documents:read", report))
	if attest.ReasonOf(err) != attest.ReasonUnavailable {
		t.Fatalf("decision without its audit record: %v", err)
	}
}
