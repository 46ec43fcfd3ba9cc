package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/agentside"
	"github.com/vouch-dev/vouch/attest"
	firmwarerefs "github.com/vouch-dev/vouch/firmware-refs"
	vouchd "github.com/vouch-dev/vouch/verifier"
	"github.com/vouch-dev/vouch/verifier/store"
)

// The workload the built-in reference set allows.
const (
	demoRef    = "ghcr.io/vouch-dev/demo-agent:v1"
	demoDigest = "sha256:3c4fb7f0373cabf8eac9f7938eb821d4ef554bc24794530404836212914ff97d"
)

// startRealVerifier runs a real verifier on loopback with credentials of
// the given lifetime, and enrolls the AK of the simulator in state.
func startRealVerifier(t *testing.T, ttl time.Duration, state string) (*httptest.Server, *vouchd.Server) {
	t.Helper()
	refs, err := firmwarerefs.Load()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := vouchd.New(context.Background(), vouchd.Config{
		DataDir: t.TempDir(), Refs: vouchd.NewRefHolder(refs), CredentialTTL: ttl,
		Logger: slog.New(slog.DiscardHandler), RateLimits: vouchd.NoRateLimits(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	akPEM := filepath.Join(t.TempDir(), "ak.pem")
	if code, _, stderr := runCmd(t, "ak", "--state", state, "--out", akPEM, "--log-level", "error"); code != exitOK {
		t.Fatalf("ak: exit %d: %s", code, stderr)
	}
	b, err := os.ReadFile(akPEM)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if _, err := x509.ParsePKIXPublicKey(blk.Bytes); err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256(blk.Bytes)
	if err := srv.Store().Enroll(context.Background(), store.Enrollment{AKDigest: d[:], AKPublic: blk.Bytes, Method: "operator", EnrolledBy: "test", EnrolledAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	return hs, srv
}

// seen is what the relying party saw of one request.
type seen struct {
	Method, Path, Query, Body, Subject, Authorization string
}

// relyingParty is a real Vouch relying party: the attest middleware with
// the verifier's published keys, in front of a handler that records.
type relyingParty struct {
	*httptest.Server
	mu   sync.Mutex
	seen []seen
}

func startRelyingParty(t *testing.T, verifierURL string) *relyingParty {
	t.Helper()
	rp := &relyingParty{Server: httptest.NewUnstartedServer(nil)}
	origin := "http://" + rp.Listener.Addr().String()
	keys, err := attest.NewRemoteKeys(attest.RemoteKeysOptions{URL: verifierURL + "/v1/keys"})
	if err != nil {
		t.Fatal(err)
	}
	mw, err := attest.NewMiddleware(attest.MiddlewareOptions{Keys: keys, Credential: attest.CredentialOptions{Audience: []string{origin}}, Origin: origin})
	if err != nil {
		t.Fatal(err)
	}
	rp.Config.Handler = mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/redirect" {
			http.Redirect(w, r, "/docs/moved?from=redirect", http.StatusFound)
			return
		}
		c, _ := attest.ClaimsFromContext(r.Context())
		body, _ := io.ReadAll(r.Body)
		s := seen{r.Method, r.URL.Path, r.URL.RawQuery, string(body), c.Subject, r.Header.Get("Authorization")}
		rp.mu.Lock()
		rp.seen = append(rp.seen, s)
		rp.mu.Unlock()
		_ = json.NewEncoder(w).Encode(s)
	}))
	rp.Start()
	t.Cleanup(rp.Close)
	return rp
}

func (rp *relyingParty) count() int { rp.mu.Lock(); defer rp.mu.Unlock(); return len(rp.seen) }

func (rp *relyingParty) last() seen {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	return rp.seen[len(rp.seen)-1]
}

// startSidecar runs "vouch-agent run" in-process and returns its base URL.
func startSidecar(t *testing.T, args ...string) string {
	t.Helper()
	addr := make(chan net.Addr, 1)
	var stderr bytes.Buffer
	a := &app{stdout: io.Discard, stderr: &stderr, listening: func(x net.Addr) { addr <- x }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- a.execute(ctx, append([]string{"run", "--listen", "127.0.0.1:0", "--log-level", "error"}, args...))
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != exitOK {
			t.Errorf("run exited %d: %s", code, stderr.String())
		}
	})
	select {
	case x := <-addr:
		return "http://" + x.String()
	case code := <-done:
		t.Fatalf("run exited %d before listening: %s", code, stderr.String())
	case <-time.After(time.Minute):
		t.Fatal("the sidecar did not start listening")
	}
	return ""
}

// do sends a plain HTTP request, as an application in any language would.
func do(t *testing.T, method, url string, body io.Reader, header http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// waitFor polls cond every 10 ms until it holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func sidecarStatus(t *testing.T, base string) agentside.RenewStatus {
	t.Helper()
	_, b := do(t, "GET", base+"/.vouch/status", nil, nil)
	var st agentside.RenewStatus
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("/.vouch/status %q: %v", b, err)
	}
	return st
}

func problemOf(t *testing.T, resp *http.Response, b []byte) attest.Problem {
	t.Helper()
	var p attest.Problem
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), attest.ProblemMediaType) || json.Unmarshal(b, &p) != nil {
		t.Fatalf("%s: not a problem document: %q", resp.Status, b)
	}
	return p
}

// TestSidecar: a real verifier issuing 2 s credentials, a real relying
// party, and plain HTTP clients going through the sidecar.
func TestSidecar(t *testing.T) {
	state := t.TempDir()
	vhs, _ := startRealVerifier(t, 2*time.Second, state)
	rp := startRelyingParty(t, vhs.URL)
	base := startSidecar(t, "--state", state, "--verifier", vhs.URL, "--upstream", rp.URL,
		"--boot-log", bootLog, "--image-ref", demoRef, "--image-digest", demoDigest, "--max-body", "1024")
	waitFor(t, "readiness", func() bool { resp, _ := do(t, "GET", base+"/.vouch/readyz", nil, nil); return resp.StatusCode == 200 })

	// GET, with a query.
	resp, b := do(t, "GET", base+"/docs/a?x=1&y=2", nil, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("GET: %s %s", resp.Status, b)
	}
	got := rp.last()
	subject := sidecarStatus(t, base).Subject
	if got.Method != "GET" || got.Path != "/docs/a" || got.Query != "x=1&y=2" || got.Subject != subject || !strings.HasPrefix(subject, "urn:ietf:params:oauth:ckt:sha-256:") {
		t.Errorf("the relying party saw %+v (agent %s)", got, subject)
	}
	// A redirect of the relying party points back at the sidecar, so that
	// following it goes with a credential again.
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noFollow.Get(base + "/redirect")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != base+"/docs/moved?from=redirect" {
		t.Errorf("redirect through the sidecar: %s, Location %q", resp.Status, resp.Header.Get("Location"))
	}

	// POST with a body, and headers the application must not inject.
	resp, b = do(t, "POST", base+"/docs/b", strings.NewReader("hello"), http.Header{
		"Authorization": {"Bearer stolen"}, "Vouch-Pop": {"forged"}, "Content-Type": {"text/plain"}})
	if resp.StatusCode != 200 {
		t.Fatalf("POST: %s %s", resp.Status, b)
	}
	if got := rp.last(); got.Method != "POST" || got.Body != "hello" || !strings.HasPrefix(got.Authorization, attest.AuthScheme+" ") {
		t.Errorf("the relying party saw %+v", got)
	}

	// Bodies over --max-body: with a length, and chunked.
	n := rp.count()
	for _, body := range []io.Reader{bytes.NewReader(make([]byte, 1025)), io.MultiReader(bytes.NewReader(make([]byte, 2000)))} {
		resp, b = do(t, "POST", base+"/docs/big", body, nil)
		if resp.StatusCode != http.StatusRequestEntityTooLarge || problemOf(t, resp, b).Reason != attest.ReasonRequestTooLarge {
			t.Errorf("large body: %s %s", resp.Status, b)
		}
	}
	// The reserved paths are the sidecar's own, whatever the spelling.
	for path, want := range map[string]int{
		"/.vouch/healthz": 200, "/.vouch/readyz": 200, "/x/../.vouch/readyz": 200, "/.vouch/nope": 404, "/.vouch": 404,
	} {
		if resp, b := do(t, "GET", base+path, nil, nil); resp.StatusCode != want {
			t.Errorf("GET %s: %s %s, want %d", path, resp.Status, b, want)
		}
	}
	if _, b := do(t, "GET", base+"/.vouch/metrics", nil, nil); !bytes.Contains(b, []byte(`vouch_sidecar_renewals_total{outcome="success"}`)) ||
		!bytes.Contains(b, []byte(`vouch_sidecar_requests_total{class="4xx"} 2`)) || !bytes.Contains(b, []byte("vouch_sidecar_credential_expiry_seconds")) {
		t.Errorf("metrics:\n%s", b)
	}
	if rp.count() != n {
		t.Errorf("the relying party saw %d more requests: %+v", rp.count()-n, rp.last())
	}

	// Renewal: 2 s credentials are renewed at about 1.3 s, with the same key.
	waitFor(t, "a renewal", func() bool { return sidecarStatus(t, base).Successes >= 2 })
	if st := sidecarStatus(t, base); st.Subject != subject || !st.Ready {
		t.Errorf("after renewal: %+v, want subject %s", st, subject)
	}
	if resp, b := do(t, "GET", base+"/docs/c", nil, nil); resp.StatusCode != 200 || rp.last().Subject != subject {
		t.Errorf("GET after renewal: %s %s", resp.Status, b)
	}

	// The verifier goes away: once the credential expired, 503 and nothing
	// is sent upstream.
	vhs.CloseClientConnections()
	vhs.Close()
	waitFor(t, "the credential to expire", func() bool { resp, _ := do(t, "GET", base+"/.vouch/readyz", nil, nil); return resp.StatusCode == 503 })
	n = rp.count()
	resp, b = do(t, "GET", base+"/docs/a", nil, nil)
	if p := problemOf(t, resp, b); resp.StatusCode != 503 || p.Reason != attest.ReasonUnavailable || !strings.Contains(p.Detail, "attestation failed") {
		t.Errorf("without a valid credential: %s %s", resp.Status, b)
	}
	if rp.count() != n {
		t.Error("a request was forwarded without a valid credential")
	}
}

// TestSidecarRefused: the verifier refuses the image; requests get 503 with
// the verifier's reason.
func TestSidecarRefused(t *testing.T) {
	state := t.TempDir()
	vhs, _ := startRealVerifier(t, time.Minute, state)
	rp := startRelyingParty(t, vhs.URL)
	base := startSidecar(t, "--state", state, "--verifier", vhs.URL, "--upstream", rp.URL,
		"--boot-log", bootLog, "--image-ref", demoRef, "--image-digest", testDigest)
	waitFor(t, "a refusal", func() bool { return sidecarStatus(t, base).Failures > 0 })
	if st := sidecarStatus(t, base); !st.Refused || st.LastReason != attest.ReasonRefsImageDigest {
		t.Errorf("status %+v", st)
	}
	for _, path := range []string{"/docs/a", "/.vouch/readyz"} {
		resp, b := do(t, "GET", base+path, nil, nil)
		if p := problemOf(t, resp, b); resp.StatusCode != 503 || !strings.Contains(p.Detail, "refs-image-digest") {
			t.Errorf("GET %s: %s %s", path, resp.Status, b)
		}
	}
	if rp.count() != 0 {
		t.Error("a request was forwarded without a credential")
	}
}

func TestRunFlags(t *testing.T) {
	base := []string{"run", "--verifier", "http://127.0.0.1:1", "--image-ref", "r", "--image-digest", testDigest}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no upstream", base, "--upstream is required"},
		{"plain http upstream", append(base[:len(base):len(base)], "--upstream", "http://docs.example"), "must use https"},
		{"upstream with query", append(base[:len(base):len(base)], "--upstream", "https://docs.example/?a=b"), "query"},
		{"remote listen", append(base[:len(base):len(base)], "--upstream", "https://docs.example", "--listen", "0.0.0.0:8479"), "not a loopback address"},
		{"all interfaces", append(base[:len(base):len(base)], "--upstream", "https://docs.example", "--listen", ":8479"), "--allow-remote"},
		{"plain http verifier", []string{"run", "--verifier", "http://vouch.example", "--upstream", "https://docs.example", "--image-ref", "r", "--image-digest", testDigest}, "must use https"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runCmd(t, tc.args...)
			if code != exitUsage || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", code, stderr, exitUsage, tc.want)
			}
		})
	}
	code, stdout, _ := runCmd(t, "run", "--help")
	for _, want := range []string{"--upstream", "--allow-remote", "loopback", "curl http://127.0.0.1:8479", "/.vouch/readyz", "--image-digest", "--delegation"} {
		if code != exitOK || !strings.Contains(stdout, want) {
			t.Errorf("run --help lacks %q", want)
		}
	}
}
