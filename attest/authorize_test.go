package attest

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseResource(t *testing.T) {
	tests := []struct {
		in      string
		want    Resource
		pattern bool
		bad     bool
	}{
		{in: `Document::"customer-A/report-7"`, want: Resource{"Document", "customer-A/report-7"}},
		{in: `Document::"customer-A/*"`, want: Resource{"Document", "customer-A/*"}, pattern: true},
		{in: `Document::"*"`, want: Resource{"Document", "*"}, pattern: true},
		{in: `Vouch::Document::"x"`, want: Resource{"Vouch::Document", "x"}},
		{in: `Document::""`, bad: true},
		{in: `Document::"a*b"`, bad: true},
		{in: `Document::"a"b"`, bad: true},
		{in: `Document::"a\b"`, bad: true},
		{in: "Document::\"a\nb\"", bad: true},
		{in: `document:"x"`, bad: true},
		{in: `::"x"`, bad: true},
		{in: `1Doc::"x"`, bad: true},
		{in: `Doc ument::"x"`, bad: true},
		{in: `Document::"x`, bad: true},
		{in: `Document::x`, bad: true},
		{in: `Document::"` + strings.Repeat("a", MaxResourceLen) + `"`, bad: true},
	}
	for _, tt := range tests {
		r, err := ParseResource(tt.in)
		if tt.bad {
			if err == nil {
				t.Errorf("ParseResource(%q) = %+v, want error", tt.in, r)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseResource(%q): %v", tt.in, err)
			continue
		}
		if r != tt.want || r.IsPattern() != tt.pattern || r.String() != tt.in {
			t.Errorf("ParseResource(%q) = %+v (pattern %v, %s)", tt.in, r, r.IsPattern(), r)
		}
	}
}

func TestResourceCovers(t *testing.T) {
	tests := []struct {
		p, r string
		want bool
	}{
		{`Document::"customer-A/*"`, `Document::"customer-A/report-7"`, true},
		{`Document::"customer-A/*"`, `Document::"customer-A/2026/*"`, true},
		{`Document::"customer-A/*"`, `Document::"customer-A/*"`, true},
		{`Document::"customer-A/*"`, `Document::"customer-A*"`, false},
		{`Document::"customer-A/*"`, `Document::"customer-AB/x"`, false},
		{`Document::"customer-A/*"`, `Summary::"customer-A/x"`, false},
		{`Document::"customer-A/x"`, `Document::"customer-A/x"`, true},
		{`Document::"customer-A/x"`, `Document::"customer-A/*"`, false},
		{`Document::"*"`, `Document::"anything"`, true},
	}
	for _, tt := range tests {
		p, _ := ParseResource(tt.p)
		r, _ := ParseResource(tt.r)
		if got := p.Covers(r); got != tt.want {
			t.Errorf("%s covers %s = %v", tt.p, tt.r, got)
		}
	}
}

func TestScopeEntries(t *testing.T) {
	e, err := ParseScopeEntry(`documents:read:Document::"customer-A/*"`)
	if err != nil {
		t.Fatal(err)
	}
	if e.Action != "documents:read" || e.Resource.String() != `Document::"customer-A/*"` {
		t.Fatalf("parsed %+v", e)
	}
	for _, bad := range []string{"", "documents", "documents:read", `read:Document::"x"`, `Documents:read:Document::"x"`, `documents:read:x`, `a:b:c:Document::"x"`} {
		if _, err := ParseScopeEntry(bad); err == nil {
			t.Errorf("ParseScopeEntry(%q) succeeded", bad)
		}
	}
	scope := []string{`documents:read:Document::"customer-A/*"`, `summaries:create:Summary::"customer-A/r7"`, `garbage`}
	tests := []struct {
		action, res string
		want        bool
	}{
		{"documents:read", `Document::"customer-A/r1"`, true},
		{"documents:read", `Document::"customer-B/r1"`, false},
		{"documents:delete", `Document::"customer-A/r1"`, false},
		{"documents:rea", `Document::"customer-A/r1"`, false},
		{"summaries:create", `Summary::"customer-A/r7"`, true},
		{"summaries:create", `Summary::"customer-A/r8"`, false},
	}
	for _, tt := range tests {
		r, _ := ParseResource(tt.res)
		if got := ScopeAllows(scope, tt.action, r); got != tt.want {
			t.Errorf("ScopeAllows(%s, %s) = %v", tt.action, tt.res, got)
		}
	}
}

// docMapper maps /v1/docs/<tenant>/<doc> to documents:<verb>.
func docMapper(r *http.Request) (string, string, error) {
	verb := map[string]string{http.MethodGet: "read", http.MethodPut: "write", http.MethodDelete: "delete"}[r.Method]
	return "documents:" + verb, `Document::"` + strings.TrimPrefix(r.URL.Path, "/v1/docs/") + `"`, nil
}

func TestScopeAuthorizer(t *testing.T) {
	f := newRP(t, func(o *MiddlewareOptions) {
		o.Authorize = ScopeAuthorizer(docMapper)
	})
	// claimsFor grants read:Document::"customer-A/1", which is not a valid
	// action: re-issue with a real scope.
	c := claimsFor(f.ag, time.Now())
	c.Scope = []string{`documents:read:Document::"customer-A/*"`}
	f.cred = f.is.sign(t, c)
	tests := []struct {
		method, path string
		status       int
		reason       Reason
	}{
		{http.MethodGet, "/v1/docs/customer-A/r1", http.StatusOK, ""},
		{http.MethodDelete, "/v1/docs/customer-A/r1", http.StatusForbidden, ReasonScopeInsufficient},
		{http.MethodGet, "/v1/docs/customer-B/r1", http.StatusForbidden, ReasonScopeInsufficient},
		{http.MethodGet, "/v1/docs/customer-A/*", http.StatusForbidden, ReasonRequestMalformed},
	}
	for _, tt := range tests {
		resp, p := do(t, f.request(t, tt.method, tt.path, nil, f.ag.key))
		if resp.StatusCode != tt.status || (p != nil && p.Reason != tt.reason) {
			t.Errorf("%s %s: %d %+v", tt.method, tt.path, resp.StatusCode, p)
		}
		if resp.StatusCode == http.StatusOK {
			<-f.seen
			<-f.bodies
		}
	}
}

// fakeDecider is a verifier's /v1/authorize that checks the forwarded proof
// as the real one does, and answers with a fixed decision.
type fakeDecider struct {
	mu       sync.Mutex
	is       *testIssuer
	pop      *PoPVerifier
	decision Decision
	got      []AuthorizeRequest
	popErr   error
}

func (d *fakeDecider) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var q AuthorizeRequest
	if err := json.NewDecoder(r.Body).Decode(&q); err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.got = append(d.got, q)
	c, err := VerifyCredential(q.Credential, d.is.keys, CredentialOptions{Audience: []string{q.Audience}})
	if err == nil {
		cnf, _ := ECDSAPublic(c.Confirm.Key)
		_, err = d.pop.VerifyDigest(q.PoP, cnf, q.Method, q.Target, q.BodySHA256, q.Credential)
	}
	d.popErr = err
	json.NewEncoder(w).Encode(d.decision)
}

func TestRemoteAuthorizer(t *testing.T) {
	dec := &fakeDecider{pop: NewPoPVerifier(PoPOptions{}), decision: Decision{Decision: Permit}}
	verifier := httptest.NewServer(dec)
	defer verifier.Close()
	var rp *rpFixture
	rp = newRP(t, func(o *MiddlewareOptions) {
		dec.is = nil // set below, once the fixture made its issuer
		az, err := NewRemoteAuthorizer(RemoteAuthorizerOptions{Verifier: verifier.URL, Origin: o.Origin, Audience: testAudience, Map: docMapper})
		if err != nil {
			t.Fatal(err)
		}
		o.Authorize = az
	})
	dec.is = rp.is

	body := []byte(`{"text":"new"}`)
	resp, p := do(t, rp.request(t, http.MethodPut, "/v1/docs/customer-A/r1?v=2", body, rp.ag.key))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("permit: %d %+v", resp.StatusCode, p)
	}
	<-rp.seen
	if got := <-rp.bodies; string(got) != string(body) {
		t.Fatalf("handler got body %q after the authorizer read it", got)
	}
	if dec.popErr != nil {
		t.Fatalf("the verifier could not re-check the forwarded proof: %v", dec.popErr)
	}
	q := dec.got[0]
	if q.Action != "documents:write" || q.Resource != `Document::"customer-A/r1"` || q.Audience != testAudience || q.Context.SourceIP != "127.0.0.1" {
		t.Fatalf("question %+v", q)
	}

	// A refusal of the credential itself is 401 whichever path refused
	// (the verifier's decision may know of a revocation before the relying
	// party's feed does); a refusal of the request is 403.
	for _, tc := range []struct {
		reason Reason
		status int
	}{
		{ReasonDelegationRevoked, http.StatusForbidden},
		{ReasonPolicyDenied, http.StatusForbidden},
		{ReasonAgentQuarantined, http.StatusForbidden},
		{ReasonCredentialRevoked, http.StatusUnauthorized},
		{ReasonCredentialReused, http.StatusUnauthorized},
		{ReasonCredentialExpired, http.StatusUnauthorized},
		{ReasonPoPReplayed, http.StatusUnauthorized},
	} {
		dec.decision = Decision{Decision: Deny, Reasons: []DecisionReason{{Reason: tc.reason, Detail: "refused by dlg_x"}}}
		resp, p = do(t, rp.request(t, http.MethodGet, "/v1/docs/customer-A/r1", nil, rp.ag.key))
		if resp.StatusCode != tc.status || p.Reason != tc.reason || !strings.Contains(p.Detail, "dlg_x") {
			t.Errorf("deny %s: %d %+v, want %d", tc.reason, resp.StatusCode, p, tc.status)
		}
	}

	verifier.Close()
	resp, p = do(t, rp.request(t, http.MethodGet, "/v1/docs/customer-A/r1", nil, rp.ag.key))
	if resp.StatusCode != http.StatusServiceUnavailable || p.Reason != ReasonUnavailable {
		t.Fatalf("verifier down: %d %+v", resp.StatusCode, p)
	}
}

func TestNewRemoteAuthorizerOptions(t *testing.T) {
	good := RemoteAuthorizerOptions{Verifier: "http://127.0.0.1:1", Origin: "https://docs.example", Audience: "a", Map: docMapper}
	for name, mut := range map[string]func(*RemoteAuthorizerOptions){
		"no map":      func(o *RemoteAuthorizerOptions) { o.Map = nil },
		"no audience": func(o *RemoteAuthorizerOptions) { o.Audience = "" },
		"bad url":     func(o *RemoteAuthorizerOptions) { o.Verifier = "ftp://x" },
		"bad origin":  func(o *RemoteAuthorizerOptions) { o.Origin = "docs.example" },
	} {
		o := good
		mut(&o)
		if _, err := NewRemoteAuthorizer(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := NewRemoteAuthorizer(good); err != nil {
		t.Fatal(err)
	}
}

func TestAuthorizeContextValidate(t *testing.T) {
	for _, c := range []AuthorizeContext{
		{SourceIP: "10.0.0.300"},
		{AnomalyScore: 101},
		{AnomalyScore: -1},
		{ThreatFlags: []string{""}},
		{ThreatFlags: make([]string, MaxThreatFlags+1)},
	} {
		if err := c.Validate(); ReasonOf(err) != ReasonRequestMalformed {
			t.Errorf("%+v: %v", c, err)
		}
	}
	ok := AuthorizeContext{SourceIP: "::1", ThreatFlags: []string{"tor-exit"}, AnomalyScore: 100}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestDecisionErr(t *testing.T) {
	if err := (&Decision{Decision: Permit}).Err(); err != nil {
		t.Fatal(err)
	}
	err := (&Decision{Decision: Deny}).Err()
	if ReasonOf(err) != ReasonPolicyDenied {
		t.Fatal(err)
	}
	var e *Error
	if !errors.As((&Decision{Decision: Deny, Reasons: []DecisionReason{{Reason: ReasonNetworkDenied}}}).Err(), &e) || e.Reason != ReasonNetworkDenied || e.Detail == "" {
		t.Fatal(e)
	}
}
