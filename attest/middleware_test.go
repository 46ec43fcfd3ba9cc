package attest

import (
	"bytes"
	"context"
	"crypto"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// rpFixture is a relying party behind the middleware on a loopback server.
type rpFixture struct {
	srv    *httptest.Server
	is     *testIssuer
	ag     *testAgent
	cred   []byte
	seen   chan *Claims
	bodies chan []byte
}

func newRP(t *testing.T, mutate func(*MiddlewareOptions)) *rpFixture {
	t.Helper()
	f := &rpFixture{is: newIssuer(t), ag: newAgent(t), seen: make(chan *Claims, 1), bodies: make(chan []byte, 1)}
	f.cred = f.is.sign(t, claimsFor(f.ag, time.Now()))
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		c, ok := ClaimsFromContext(r.Context())
		if !ok {
			t.Error("handler reached without claims")
		}
		b, _ := io.ReadAll(r.Body)
		f.seen <- c
		f.bodies <- b
		w.Write([]byte("ok"))
	})
	f.srv = httptest.NewUnstartedServer(nil)
	f.srv.Start()
	opts := MiddlewareOptions{
		Keys:       StaticKeys{f.is.keys},
		Credential: CredentialOptions{Audience: []string{testAudience}},
		Origin:     f.srv.URL,
	}
	if mutate != nil {
		mutate(&opts)
	}
	mw, err := NewMiddleware(opts)
	if err != nil {
		t.Fatal(err)
	}
	f.srv.Config.Handler = mw(mux)
	t.Cleanup(f.srv.Close)
	return f
}

// request builds a request as a Vouch client does: credential, and a proof
// over method, TargetURI of the URL, body and credential.
func (f *rpFixture) request(t *testing.T, method, path string, body []byte, key crypto.Signer) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, f.srv.URL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	pop := makePoP(t, key, method, TargetURI(req.URL), body, f.cred, time.Now())
	req.Header.Set("Authorization", AuthScheme+" "+base64.RawURLEncoding.EncodeToString(f.cred))
	req.Header.Set(PoPHeader, base64.RawURLEncoding.EncodeToString(pop))
	return req
}

func do(t *testing.T, req *http.Request) (*http.Response, *Problem) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	if ct := resp.Header.Get("Content-Type"); ct != ProblemMediaType {
		t.Fatalf("refusal %d has Content-Type %q: %s", resp.StatusCode, ct, b)
	}
	var p Problem
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatal(err)
	}
	if p.Type != ProblemBase+string(p.Reason) || p.Status != resp.StatusCode || p.Detail == "" {
		t.Fatalf("problem document %+v", p)
	}
	if got, want := resp.Header.Get("WWW-Authenticate"), `Vouch error="`+string(p.Reason)+`"`; got != want {
		t.Fatalf("WWW-Authenticate %q, want %q", got, want)
	}
	return resp, &p
}

func TestMiddlewareAccepts(t *testing.T) {
	f := newRP(t, nil)
	body := []byte(`{"q":"summarise customer-A/1"}`)
	for _, path := range []string{"/v1/documents/customer-A%2F1?fields=title&x=%20y", "/v1/plain"} {
		resp, p := do(t, f.request(t, "POST", path, body, f.ag.key))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d %+v", path, resp.StatusCode, p)
		}
		c := <-f.seen
		if c.Subject != f.ag.sub || c.Intent != "summarise" {
			t.Fatalf("handler saw claims %+v", c)
		}
		if got := <-f.bodies; !bytes.Equal(got, body) {
			t.Fatalf("handler saw body %q", got)
		}
	}
	// A GET without a body, signed by a TPM-like DER signer.
	resp, p := do(t, f.request(t, "GET", "/v1/documents", nil, derSigner{f.ag.key}))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET: %d %+v", resp.StatusCode, p)
	}
	<-f.seen
	<-f.bodies
}

func TestMiddlewareRefusals(t *testing.T) {
	errBackend := errors.New("revocation store at 10.0.0.7:5432 unreachable")
	tests := []struct {
		name   string
		opts   func(*MiddlewareOptions)
		req    func(t *testing.T, f *rpFixture) *http.Request
		status int
		reason Reason
		noLeak string
	}{
		{name: "no authorization", status: 401, reason: ReasonCredentialMissing,
			req: func(t *testing.T, f *rpFixture) *http.Request {
				r := f.request(t, "GET", "/v1/x", nil, f.ag.key)
				r.Header.Del("Authorization")
				return r
			}},
		{name: "bearer scheme", status: 401, reason: ReasonCredentialMissing,
			req: func(t *testing.T, f *rpFixture) *http.Request {
				r := f.request(t, "GET", "/v1/x", nil, f.ag.key)
				r.Header.Set("Authorization", "Bearer abc")
				return r
			}},
		{name: "credential not base64url", status: 401, reason: ReasonCredentialMalformed,
			req: func(t *testing.T, f *rpFixture) *http.Request {
				r := f.request(t, "GET", "/v1/x", nil, f.ag.key)
				r.Header.Set("Authorization", "Vouch ***")
				return r
			}},
		{name: "credential too long", status: 401, reason: ReasonCredentialMalformed,
			req: func(t *testing.T, f *rpFixture) *http.Request {
				r := f.request(t, "GET", "/v1/x", nil, f.ag.key)
				r.Header.Set("Authorization", "Vouch "+strings.Repeat("A", maxEncodedCredential+4))
				return r
			}},
		{name: "no proof", status: 401, reason: ReasonPoPMissing,
			req: func(t *testing.T, f *rpFixture) *http.Request {
				r := f.request(t, "GET", "/v1/x", nil, f.ag.key)
				r.Header.Del(PoPHeader)
				return r
			}},
		{name: "two proofs", status: 401, reason: ReasonPoPMalformed,
			req: func(t *testing.T, f *rpFixture) *http.Request {
				r := f.request(t, "GET", "/v1/x", nil, f.ag.key)
				r.Header.Add(PoPHeader, r.Header.Get(PoPHeader))
				return r
			}},
		{name: "wrong audience", status: 401, reason: ReasonCredentialAudience,
			opts: func(o *MiddlewareOptions) { o.Credential.Audience = []string{"https://other.example"} }},
		{name: "credential from another verifier", status: 401, reason: ReasonCredentialKeyUnknown,
			opts: func(o *MiddlewareOptions) { o.Keys = StaticKeys{newIssuer(t).keys} }},
		{name: "proof by another key", status: 401, reason: ReasonPoPSignature,
			req: func(t *testing.T, f *rpFixture) *http.Request {
				return f.request(t, "GET", "/v1/x", nil, newAgent(t).key)
			}},
		{name: "body changed", status: 401, reason: ReasonPoPBody,
			req: func(t *testing.T, f *rpFixture) *http.Request {
				r := f.request(t, "POST", "/v1/x", []byte("pay 10"), f.ag.key)
				r.Body = io.NopCloser(strings.NewReader("pay 99"))
				return r
			}},
		{name: "other path", status: 401, reason: ReasonPoPTarget,
			req: func(t *testing.T, f *rpFixture) *http.Request {
				r := f.request(t, "GET", "/v1/x", nil, f.ag.key)
				r.URL.Path = "/v1/y"
				return r
			}},
		{name: "origin differs", status: 401, reason: ReasonPoPTarget,
			opts: func(o *MiddlewareOptions) { o.Origin = "https://docs.example" }},
		{name: "body too large", status: 413, reason: ReasonRequestTooLarge,
			opts: func(o *MiddlewareOptions) { o.MaxBodySize = 4 },
			req: func(t *testing.T, f *rpFixture) *http.Request {
				return f.request(t, "PUT", "/v1/x", []byte("12345"), f.ag.key)
			}},
		{name: "revoked", status: 401, reason: ReasonCredentialRevoked,
			opts: func(o *MiddlewareOptions) {
				o.Revoked = func(context.Context, *Claims) (bool, error) { return true, nil }
			}},
		{name: "revocation check down", status: 503, reason: ReasonUnavailable, noLeak: "10.0.0.7",
			opts: func(o *MiddlewareOptions) {
				o.Revoked = func(context.Context, *Claims) (bool, error) { return false, errBackend }
			}},
		{name: "scope refused (plain error)", status: 403, reason: ReasonScopeInsufficient, noLeak: "10.0.0.7",
			opts: func(o *MiddlewareOptions) {
				o.Authorize = func(context.Context, *Claims, *http.Request) error { return errBackend }
			}},
		{name: "scope refused (typed)", status: 403, reason: ReasonScopeInsufficient,
			opts: func(o *MiddlewareOptions) {
				o.Authorize = func(_ context.Context, c *Claims, r *http.Request) error {
					return Errorf(ReasonScopeInsufficient, "scope %v does not include write on %s", c.Scope, r.URL.Path)
				}
			}},
		{name: "keys unavailable", status: 503, reason: ReasonUnavailable,
			opts: func(o *MiddlewareOptions) { o.Keys = StaticKeys{} }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newRP(t, tc.opts)
			req := f.request(t, "GET", "/v1/x", nil, f.ag.key)
			if tc.req != nil {
				req = tc.req(t, f)
			}
			resp, p := do(t, req)
			if resp.StatusCode != tc.status || p == nil || p.Reason != tc.reason {
				t.Fatalf("got %d %+v; want %d %s", resp.StatusCode, p, tc.status, tc.reason)
			}
			if tc.noLeak != "" && strings.Contains(p.Detail, tc.noLeak) {
				t.Fatalf("problem detail leaks an internal error: %q", p.Detail)
			}
		})
	}
}

func TestMiddlewareReplay(t *testing.T) {
	f := newRP(t, nil)
	req := f.request(t, "GET", "/v1/x", nil, f.ag.key)
	again := req.Clone(context.Background())
	if resp, p := do(t, req); resp.StatusCode != 200 {
		t.Fatalf("%d %+v", resp.StatusCode, p)
	}
	<-f.seen
	<-f.bodies
	resp, p := do(t, again)
	if resp.StatusCode != 401 || p.Reason != ReasonPoPReplayed {
		t.Fatalf("replay: %d %+v", resp.StatusCode, p)
	}
}

// TestMiddlewareKeyRotation: the verifier rotates its key; the relying party
// fetches /v1/keys again on the unknown kid and accepts the new credential.
func TestMiddlewareKeyRotation(t *testing.T) {
	old := newIssuer(t)
	ksrv := newKeyServer(t, old.keys)
	src, err := NewRemoteKeys(RemoteKeysOptions{URL: ksrv.URL + "/v1/keys", MinInterval: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	f := newRP(t, func(o *MiddlewareOptions) { o.Keys = src })
	if _, err := src.KeySet(context.Background()); err != nil {
		t.Fatal(err)
	}
	ksrv.set(t, f.is.keys) // the fixture's issuer is the new key
	resp, p := do(t, f.request(t, "GET", "/v1/x", nil, f.ag.key))
	if resp.StatusCode != 200 {
		t.Fatalf("%d %+v", resp.StatusCode, p)
	}
	<-f.seen
	<-f.bodies
	if ksrv.hits.Load() != 2 {
		t.Fatalf("%d key fetches, want 2", ksrv.hits.Load())
	}
}

func TestNewMiddlewareOptions(t *testing.T) {
	is := newIssuer(t)
	good := MiddlewareOptions{Keys: StaticKeys{is.keys}, Credential: CredentialOptions{Audience: []string{"a"}}, Origin: "https://docs.example:8443"}
	if _, err := NewMiddleware(good); err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(*MiddlewareOptions){
		"no keys":     func(o *MiddlewareOptions) { o.Keys = nil },
		"no audience": func(o *MiddlewareOptions) { o.Credential.Audience = nil },
		"no origin":   func(o *MiddlewareOptions) { o.Origin = "" },
		"origin path": func(o *MiddlewareOptions) { o.Origin = "https://docs.example/api" },
		"origin ftp":  func(o *MiddlewareOptions) { o.Origin = "ftp://docs.example" },
	} {
		o := good
		mutate(&o)
		if _, err := NewMiddleware(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestMiddlewareStripPrefix: the proof covers the URI the client sent, even
// when the handler chain rewrites r.URL.
func TestMiddlewareStripPrefix(t *testing.T) {
	f := newRP(t, nil)
	mw, _ := NewMiddleware(MiddlewareOptions{Keys: StaticKeys{f.is.keys}, Credential: CredentialOptions{Audience: []string{testAudience}}, Origin: f.srv.URL})
	inner := mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }))
	f.srv.Config.Handler = http.StripPrefix("/api", inner)
	resp, p := do(t, f.request(t, "GET", "/api/v1/x?y=1", nil, f.ag.key))
	if resp.StatusCode != 200 {
		t.Fatalf("%d %+v", resp.StatusCode, p)
	}
}

func TestMiddlewareSingleUse(t *testing.T) {
	f := newRP(t, nil)
	c := claimsFor(f.ag, time.Now())
	c.SingleUse = true
	c.Expiry = c.IssuedAt + 10
	f.cred = f.is.sign(t, c)
	if resp, p := do(t, f.request(t, "GET", "/v1/x", nil, f.ag.key)); resp.StatusCode != 200 {
		t.Fatalf("%d %+v", resp.StatusCode, p)
	}
	<-f.seen
	<-f.bodies
	resp, p := do(t, f.request(t, "GET", "/v1/x", nil, f.ag.key))
	if resp.StatusCode != 401 || p.Reason != ReasonCredentialReused {
		t.Fatalf("second use: %d %+v", resp.StatusCode, p)
	}
}
