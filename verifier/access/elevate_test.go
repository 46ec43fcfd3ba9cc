package access_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/agentside"
	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/verifier/access"
)

func TestElevation(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	dlg := f.delegate(t, nil)
	cred := f.mint(t, nil, func(c *attest.Claims) { c.Delegation = dlg.ID })
	ac := f.agentClient(t)

	// The read credential cannot write.
	if d := f.ask(t, f.question(t, cred, nil, http.MethodPut, "documents:write", report)); d.Permitted() {
		t.Fatal("write with a read credential permitted")
	}
	iss, err := ac.Elevate(ctx, cred, f.agent, "documents:write", report)
	if err != nil {
		t.Fatalf("Elevate: %v", err)
	}
	el, err := attest.VerifyCredential(iss.Credential, f.srv.Keys().KeySet(), attest.CredentialOptions{Audience: []string{audience}, Now: f.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if !el.SingleUse || el.Expiry-el.IssuedAt > 10 || len(el.Scope) != 1 || el.Scope[0] != `documents:write:`+report || el.Subject != f.sub || el.Delegation != dlg.ID {
		t.Fatalf("elevation claims %+v", el)
	}
	if rec := f.audit.last(); rec.Outcome != attest.Permit || rec.Credential == nil || !rec.Credential.SingleUse || rec.Detail["elevation"] != "true" || rec.User != "alice" {
		t.Fatalf("audit %+v", rec)
	}
	// First use permitted, second refused: by the verifier (remote mode)…
	if d := f.ask(t, f.question(t, iss.Credential, nil, http.MethodPut, "documents:write", report)); !d.Permitted() {
		t.Fatalf("first use: %+v", d)
	}
	if d := f.ask(t, f.question(t, iss.Credential, nil, http.MethodPut, "documents:write", report)); d.Permitted() || d.Reasons[0].Reason != attest.ReasonCredentialReused {
		t.Fatalf("second use: %+v", d)
	}
	// …and the single write only: a read with it is outside its scope.
	iss2, err := ac.Elevate(ctx, cred, f.agent, "documents:write", report)
	if err != nil {
		t.Fatal(err)
	}
	if d := f.ask(t, f.question(t, iss2.Credential, nil, http.MethodGet, "documents:read", report)); d.Permitted() || d.Reasons[0].Reason != attest.ReasonScopeInsufficient {
		t.Fatalf("read with the write elevation: %+v", d)
	}
	// …and by a relying party checking offline.
	rp := offlineRP(t, f)
	put := func(c []byte) int {
		hc := &http.Client{Transport: &agentside.Transport{Credential: func() []byte { return c }, Key: f.agent}}
		req, _ := http.NewRequest(http.MethodPut, rp.URL+"/documents/customer-A/report-7", nil)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		drain(resp.Body)
		return resp.StatusCode
	}
	if code := put(iss2.Credential); code != http.StatusOK {
		t.Fatalf("offline first use: %d", code)
	}
	if code := put(iss2.Credential); code != http.StatusUnauthorized {
		t.Fatalf("offline second use: %d", code)
	}
	// It expires within 10 s, whoever holds it.
	f.clock.Advance(16 * time.Second)
	iss3, _ := ac.Elevate(ctx, cred, f.agent, "documents:write", report)
	f.clock.Advance(16 * time.Second)
	if d := f.ask(t, f.question(t, iss3.Credential, nil, http.MethodPut, "documents:write", report)); d.Permitted() || d.Reasons[0].Reason != attest.ReasonCredentialExpired {
		t.Fatalf("after 16 s: %+v", d)
	}
}

func TestElevationRefusals(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	dlg := f.delegate(t, nil)
	readOnly := f.delegate(t, func(q *access.DelegationRequest) { q.Actions = []string{"documents:read"} })
	cred := f.mint(t, nil, func(c *attest.Claims) { c.Delegation = dlg.ID })
	el, err := f.agentClient(t).Elevate(ctx, cred, f.agent, "documents:write", report)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		cred     []byte
		action   string
		resource string
		want     attest.Reason
	}{
		{"resource not delegated", cred, "documents:write", `Document::"customer-B/report-1"`, attest.ReasonResourceNotDelegated},
		{"a pattern", cred, "documents:write", `Document::"customer-A/*"`, attest.ReasonElevationDenied},
		{"delete is never elevated", cred, "documents:delete", report, attest.ReasonIntentAction},
		{"elevating an elevation", el.Credential, "documents:write", report, attest.ReasonElevationDenied},
		{"delegation narrowed to reads", f.mint(t, nil, func(c *attest.Claims) { c.Delegation = readOnly.ID }), "documents:write", report, attest.ReasonIntentAction},
		{"no delegation", f.mint(t, nil, nil), "documents:write", report, attest.ReasonDelegationMissing},
		{"malformed resource", cred, "documents:write", "report-7", attest.ReasonRequestMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := f.agentClient(t).Elevate(ctx, tt.cred, f.agent, tt.action, tt.resource)
			if attest.ReasonOf(err) != tt.want {
				t.Fatalf("err = %v, want %s", err, tt.want)
			}
		})
	}
	// A stolen credential: the proof is made with another key.
	thief, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := f.agentClient(t).Elevate(ctx, cred, thief, "documents:write", report); attest.ReasonOf(err) != attest.ReasonPoPSignature {
		t.Fatalf("stolen credential: %v", err)
	}
	// Suspended delegation: no elevation.
	if _, err := f.alice.SetStatus(ctx, dlg.ID, "suspend", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := f.agentClient(t).Elevate(ctx, cred, f.agent, "documents:write", report); attest.ReasonOf(err) != attest.ReasonDelegationSuspended {
		t.Fatalf("suspended: %v", err)
	}
}

// offlineRP is a relying party that checks scopes locally.
func offlineRP(t *testing.T, f *fixture) *httptest.Server {
	t.Helper()
	rp := httptest.NewUnstartedServer(nil)
	rp.Start()
	t.Cleanup(rp.Close)
	mw, err := attest.NewMiddleware(attest.MiddlewareOptions{
		Keys:       attest.StaticKeys{Keys: f.srv.Keys().KeySet()},
		Credential: attest.CredentialOptions{Audience: []string{audience}, Now: f.clock.Now},
		Origin:     rp.URL,
		PoP:        attest.NewPoPVerifier(attest.PoPOptions{Now: f.clock.Now}),
		Authorize:  attest.ScopeAuthorizer(docMap),
		Logger:     slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	rp.Config.Handler = mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	return rp
}

func docMap(r *http.Request) (string, string, error) {
	verb := map[string]string{http.MethodGet: "read", http.MethodPut: "write", http.MethodDelete: "delete"}[r.Method]
	return "documents:" + verb, fmt.Sprintf("Document::%q", r.URL.Path[len("/documents/"):]), nil
}
