package verifier_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vouch-dev/vouch/attest"
	firmwarerefs "github.com/vouch-dev/vouch/firmware-refs"
	"github.com/vouch-dev/vouch/verifier"
	"github.com/vouch-dev/vouch/verifier/issuer"
	"github.com/vouch-dev/vouch/verifier/store"
)

// recordingHandler keeps the messages of the log records it receives.
type recordingHandler struct {
	mu   sync.Mutex
	msgs []string
}

func (h *recordingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.msgs = append(h.msgs, r.Message)
	h.mu.Unlock()
	return nil
}
func (h *recordingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordingHandler) WithGroup(string) slog.Handler      { return h }

func (h *recordingHandler) count(prefix string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, m := range h.msgs {
		if strings.HasPrefix(m, prefix) {
			n++
		}
	}
	return n
}

// limitedServer is a verifier with the given limits, whose buckets follow
// the returned clock (nothing here sleeps).
type limitedServer struct {
	srv   *verifier.Server
	clock *clock
	reg   *prometheus.Registry
	logs  *recordingHandler
}

func newLimitedServer(t *testing.T, rl verifier.RateLimits, trustedProxies ...netip.Prefix) *limitedServer {
	t.Helper()
	refs, err := firmwarerefs.Load()
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Now()}
	rl.Now = clk.Now
	ls := &limitedServer{clock: clk, reg: prometheus.NewRegistry(), logs: &recordingHandler{}}
	ls.srv, err = verifier.New(context.Background(), verifier.Config{DataDir: t.TempDir(), Refs: verifier.NewRefHolder(refs),
		Logger: slog.New(ls.logs), Registry: ls.reg, RateLimits: &rl, TrustedProxies: trustedProxies})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ls.srv.Close() })
	return ls
}

// do sends one request to the handler as if from remote ("ip:port").
func (ls *limitedServer) do(method, path, remote string, body []byte, header ...string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, bytes.NewReader(body))
	req.RemoteAddr = remote
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	rec := httptest.NewRecorder()
	ls.srv.Handler().ServeHTTP(rec, req)
	return rec
}

func (ls *limitedServer) challenge(remote string, header ...string) *httptest.ResponseRecorder {
	return ls.do(http.MethodPost, "/v1/challenge", remote, nil, header...)
}

func (ls *limitedServer) limitedTotal(t *testing.T, class string) float64 {
	t.Helper()
	mfs, err := ls.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "vouch_rate_limited_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "class" && l.GetValue() == class {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// TestRateLimitChallenge: with the default limits, one client's 21st
// challenge in an instant is refused with 429, Retry-After and a
// rate-limited problem; other clients, other classes and the decision
// endpoint are served; the bucket refills with time.
func TestRateLimitChallenge(t *testing.T) {
	ls := newLimitedServer(t, verifier.DefaultRateLimits())
	const flooder = "198.51.100.7:40000"
	for i := range verifier.DefaultRateAttestBurst {
		if rec := ls.challenge(flooder); rec.Code != http.StatusCreated {
			t.Fatalf("challenge %d within the burst: %d %s", i, rec.Code, rec.Body)
		}
	}
	rec := ls.challenge("198.51.100.7:40001") // another connection, same client
	if rec.Code != http.StatusTooManyRequests {
		t.Fatalf("challenge past the burst: %d %s", rec.Code, rec.Body)
	}
	if got := rec.Header().Get("Retry-After"); got != "1" {
		t.Errorf("Retry-After %q, want 1 (one token at 10/s is 100 ms away, rounded up)", got)
	}
	if ct := rec.Header().Get("Content-Type"); ct != attest.ProblemMediaType {
		t.Errorf("Content-Type %q", ct)
	}
	var p attest.Problem
	if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
		t.Fatal(err)
	}
	if p.Reason != attest.ReasonRateLimited || p.Type != attest.ProblemBase+"rate-limited" || p.Status != http.StatusTooManyRequests {
		t.Errorf("problem %+v", p)
	}
	for _, want := range []string{"attest", "198.51.100.7", "10 per second", "bursts of 20", "retry after 1 s", "--rate-attest", "--trusted-proxies"} {
		if !strings.Contains(p.Detail, want) {
			t.Errorf("the detail does not say %q: %s", want, p.Detail)
		}
	}
	if attest.ReasonOf(attest.ReadProblem(rec.Result())) != attest.ReasonRateLimited {
		t.Error("clients do not read the reason back")
	}

	// Another client is served; so is the flooder in another class.
	if rec := ls.challenge("203.0.113.9:5555"); rec.Code != http.StatusCreated {
		t.Errorf("another client: %d %s", rec.Code, rec.Body)
	}
	if rec := ls.do(http.MethodGet, "/v1/keys", flooder, nil); rec.Code != http.StatusOK {
		t.Errorf("GET /v1/keys from the limited client: %d", rec.Code)
	}
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		for range 300 {
			if rec := ls.do(http.MethodGet, path, flooder, nil); rec.Code != http.StatusOK {
				t.Fatalf("GET %s from the limited client: %d", path, rec.Code)
			}
		}
	}
	// Attestations are in the same class as challenges.
	if rec := ls.do(http.MethodPost, "/v1/attest", flooder, []byte{0xa0}, "Content-Type", attest.EvidenceMediaType); rec.Code != http.StatusTooManyRequests {
		t.Errorf("POST /v1/attest from the limited client: %d", rec.Code)
	}

	// 100 ms later one token is back: one request passes, the next waits.
	ls.clock.Advance(100 * time.Millisecond)
	if rec := ls.challenge(flooder); rec.Code != http.StatusCreated {
		t.Errorf("after the refill: %d", rec.Code)
	}
	if rec := ls.challenge(flooder); rec.Code != http.StatusTooManyRequests {
		t.Errorf("past the refill: %d", rec.Code)
	}
	if got := ls.limitedTotal(t, verifier.RateClassAttest); got != 3 {
		t.Errorf("vouch_rate_limited_total{class=attest} = %v, want 3", got)
	}
	if n := ls.logs.count("client rate limited"); n != 1 {
		t.Errorf("%d log lines for one limited client, want 1 (once a minute)", n)
	}
	ls.clock.Advance(time.Minute)
	for range verifier.DefaultRateAttestBurst + 1 {
		ls.challenge(flooder)
	}
	if n := ls.logs.count("client rate limited"); n != 2 {
		t.Errorf("%d log lines after a minute, want 2", n)
	}
}

// TestRateLimitIPv6Prefix: IPv6 clients are counted per /64.
func TestRateLimitIPv6Prefix(t *testing.T) {
	ls := newLimitedServer(t, verifier.RateLimits{Attest: verifier.RateLimit{PerSecond: 1, Burst: 2}})
	ls.challenge("[2001:db8:1:2::1]:4000")
	ls.challenge("[2001:db8:1:2::2]:4000")
	rec := ls.challenge("[2001:db8:1:2:aaaa::3]:4000")
	if rec.Code != http.StatusTooManyRequests {
		t.Fatalf("third request from one /64: %d", rec.Code)
	}
	if !strings.Contains(rec.Body.String(), "2001:db8:1:2::/64") {
		t.Errorf("the detail does not name the /64: %s", rec.Body)
	}
	if rec := ls.challenge("[2001:db8:1:3::1]:4000"); rec.Code != http.StatusCreated {
		t.Errorf("the next /64: %d", rec.Code)
	}
}

// TestRateLimitTrustedProxies: behind a trusted proxy each client has its
// own bucket; X-Forwarded-For from anyone else is ignored.
func TestRateLimitTrustedProxies(t *testing.T) {
	ls := newLimitedServer(t, verifier.RateLimits{Attest: verifier.RateLimit{PerSecond: 1, Burst: 2}},
		netip.MustParsePrefix("10.0.0.0/8"))
	const proxy = "10.0.0.1:443"
	xff := "X-Forwarded-For"
	ls.challenge(proxy, xff, "198.51.100.7")
	ls.challenge(proxy, xff, "198.51.100.7")
	if rec := ls.challenge(proxy, xff, "6.6.6.6, 198.51.100.7"); rec.Code != http.StatusTooManyRequests {
		t.Errorf("the proxied client past its burst (spoofed hop prepended): %d", rec.Code)
	}
	if rec := ls.challenge(proxy, xff, "203.0.113.9"); rec.Code != http.StatusCreated {
		t.Errorf("another client through the same proxy: %d", rec.Code)
	}
	// An untrusted peer cannot pick a fresh bucket with the header.
	const direct = "192.0.2.50:1234"
	ls.challenge(direct, xff, "203.0.113.1")
	ls.challenge(direct, xff, "203.0.113.2")
	if rec := ls.challenge(direct, xff, "203.0.113.3"); rec.Code != http.StatusTooManyRequests {
		t.Errorf("an untrusted peer rotating X-Forwarded-For: %d, want 429", rec.Code)
	}
}

// TestRateLimitLogAndDisabledClasses: the audit log's tiles are in the read
// class; a class with rate 0 is not limited.
func TestRateLimitLogAndDisabledClasses(t *testing.T) {
	ls := newLimitedServer(t, verifier.RateLimits{Read: verifier.RateLimit{PerSecond: 1, Burst: 3}})
	const c = "198.51.100.7:1"
	for range 3 {
		if rec := ls.do(http.MethodGet, "/v1/log/checkpoint", c, nil); rec.Code != http.StatusOK {
			t.Fatalf("GET /v1/log/checkpoint: %d", rec.Code)
		}
	}
	if rec := ls.do(http.MethodGet, "/v1/log/checkpoint", c, nil); rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") != "1" {
		t.Errorf("GET /v1/log/checkpoint past the burst: %d, Retry-After %q", rec.Code, rec.Header().Get("Retry-After"))
	}
	if rec := ls.do(http.MethodGet, "/v1/revocations", c, nil); rec.Code != http.StatusTooManyRequests {
		t.Errorf("GET /v1/revocations past the burst: %d", rec.Code)
	}
	for i := range 100 {
		if rec := ls.challenge(c); rec.Code != http.StatusCreated {
			t.Fatalf("challenge %d with the attest class off: %d", i, rec.Code)
		}
	}
	if got := ls.limitedTotal(t, verifier.RateClassRead); got != 2 {
		t.Errorf("vouch_rate_limited_total{class=read} = %v, want 2", got)
	}
}

// TestAuthorizeNotRateLimited: a relying party asking for decisions far
// beyond every per-client limit, from one address, gets every one; with
// --rate-decide set it would not.
func TestAuthorizeNotRateLimited(t *testing.T) {
	ls := newLimitedServer(t, verifier.DefaultRateLimits())
	ask := authorizeFixture(t, ls.srv)
	const rp = "198.51.100.7:443"
	for i := range 3 * verifier.DefaultRateReadBurst {
		rec := ls.do(http.MethodPost, attest.AuthorizePath, rp, ask(t), "Content-Type", attest.AuthorizeMediaType)
		if rec.Code != http.StatusOK {
			t.Fatalf("decision %d: %d %s", i, rec.Code, rec.Body)
		}
		var d attest.Decision
		if err := json.Unmarshal(rec.Body.Bytes(), &d); err != nil || d.Err() != nil {
			t.Fatalf("decision %d: %s (%v)", i, rec.Body, d.Err())
		}
	}
	if got := ls.limitedTotal(t, verifier.RateClassDecide); got != 0 {
		t.Errorf("vouch_rate_limited_total{class=decide} = %v", got)
	}

	// Opt-in: the decide class limits the same questions.
	rl := verifier.DefaultRateLimits()
	rl.Decide = verifier.RateLimit{PerSecond: 1, Burst: 2}
	opt := newLimitedServer(t, rl)
	for i, want := range []int{http.StatusOK, http.StatusOK, http.StatusTooManyRequests} {
		rec := opt.do(http.MethodPost, attest.ElevatePath, rp, []byte("{}"), "Content-Type", attest.AuthorizeMediaType)
		if (rec.Code == http.StatusTooManyRequests) != (want == http.StatusTooManyRequests) {
			t.Errorf("elevation %d with --rate-decide 1: %d", i, rec.Code)
		}
	}
}

// authorizeFixture makes an agent key, a delegation for it and a
// credential from srv's issuing key, and returns a function that builds a
// /v1/authorize question with a fresh proof of possession.
func authorizeFixture(t *testing.T, srv *verifier.Server) func(t *testing.T) []byte {
	t.Helper()
	const (
		audience = "https://docs.example"
		target   = "https://docs.example/documents/customer-A/report-7"
		resource = `Document::"customer-A/report-7"`
	)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ck, err := attest.PublicCOSEKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	ck.ID = nil
	sub, err := attest.SubjectOf(ck)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if err := srv.Store().CreateDelegation(context.Background(), store.Delegation{
		ID: "dlg_ratelimit", User: "alice", Intent: "summarize-documents",
		DelegationSpec: store.DelegationSpec{AgentIDs: []string{sub}, Resources: []string{`Document::"customer-A/*"`}},
		CreatedAt:      now, ExpiresAt: now.Add(time.Hour),
	}); err != nil {
		t.Fatal(err)
	}
	cti, err := issuer.NewID()
	if err != nil {
		t.Fatal(err)
	}
	cred, err := srv.Keys().Sign(&attest.Claims{
		Issuer: "vouchd", Subject: sub, Audience: audience,
		Expiry: now.Add(time.Hour).Unix(), NotBefore: now.Unix(), IssuedAt: now.Unix(), ID: cti,
		Confirm: attest.Confirmation{Key: ck}, Nonce: make([]byte, attest.NonceSize), Profile: attest.Profile,
		Submods: map[string]attest.Appraisal{
			attest.SubmodTPM: {Status: attest.StatusAffirming, Claims: &attest.AttesterClaims{Platform: "test"}},
			attest.SubmodWorkload: {Status: attest.StatusAffirming, Claims: &attest.AttesterClaims{
				ImageDigest: &attest.Digest{Alg: attest.HashSHA256, Value: make([]byte, 32)}}},
		},
		VerifierID: attest.VerifierID{Developer: verifier.Developer, Build: "test"},
		Scope:      []string{`documents:read:Document::"customer-A/*"`},
		Delegation: "dlg_ratelimit", Intent: "summarize-documents",
	})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(target)
	bd := sha256.Sum256(nil)
	return func(t *testing.T) []byte {
		pc, err := attest.NewPoPClaims(http.MethodGet, attest.TargetURI(u), nil, cred, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		pop, err := attest.SignPoP(key, pc)
		if err != nil {
			t.Fatal(err)
		}
		b, err := json.Marshal(&attest.AuthorizeRequest{
			Credential: cred, PoP: pop, Method: http.MethodGet, Target: attest.TargetURI(u), BodySHA256: bd[:],
			Audience: audience, Action: "documents:read", Resource: resource,
		})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
}

// TestRateLimitTableFull: when every tracked client is active, newcomers
// share one bucket, and the refusal says so.
func TestRateLimitTableFull(t *testing.T) {
	ls := newLimitedServer(t, verifier.RateLimits{Attest: verifier.RateLimit{PerSecond: 1, Burst: 1}, MaxClients: 2})
	for _, c := range []string{"198.51.100.1:1", "198.51.100.2:1", "198.51.100.3:1"} {
		if rec := ls.challenge(c); rec.Code != http.StatusCreated {
			t.Fatalf("%s: %d", c, rec.Code) // the third takes the shared bucket's token
		}
	}
	rec := ls.challenge("198.51.100.4:1")
	if rec.Code != http.StatusTooManyRequests || !strings.Contains(rec.Body.String(), "--rate-max-clients") {
		t.Errorf("a fourth client in a full table: %d %s", rec.Code, rec.Body)
	}
	ls.challenge("198.51.100.5:1")
	if n := ls.logs.count("rate limiter full"); n != 1 {
		t.Errorf("%d warnings about the full table, want 1", n)
	}
	// A second later the first clients are idle: newcomers get buckets of
	// their own again.
	ls.clock.Advance(time.Second)
	if rec := ls.challenge("198.51.100.6:1"); rec.Code != http.StatusCreated {
		t.Errorf("a newcomer once the table has idle clients: %d", rec.Code)
	}
}
