package agentside

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/attest"
	firmwarerefs "github.com/vouch-dev/vouch/firmware-refs"
	"github.com/vouch-dev/vouch/internal/cliconf"
	"github.com/vouch-dev/vouch/verifier"
	"github.com/vouch-dev/vouch/verifier/store"
)

// allowedImage is the workload the built-in reference set allows.
var allowedImage = Workload{
	ImageRef:    "ghcr.io/vouch-dev/demo-agent:v1",
	ImageDigest: "sha256:3c4fb7f0373cabf8eac9f7938eb821d4ef554bc24794530404836212914ff97d",
}

func TestBackoff(t *testing.T) {
	tests := []struct {
		failures int
		want     time.Duration
	}{
		{0, time.Second}, {1, 2 * time.Second}, {2, 4 * time.Second}, {3, 8 * time.Second},
		{4, 16 * time.Second}, {5, 30 * time.Second}, {6, 30 * time.Second}, {200, 30 * time.Second},
	}
	for _, tc := range tests {
		if got := backoff(tc.failures, time.Second, 30*time.Second); got != tc.want {
			t.Errorf("backoff(%d) = %v, want %v", tc.failures, got, tc.want)
		}
	}
}

// TestRenewerBackoffSchedule runs a Renewer against a verifier address
// nobody listens on, with a sleep that records what it is asked to wait.
func TestRenewerBackoffSchedule(t *testing.T) {
	_, agent := bootedAgent(t, "rhel8-uefi.bin", allowedImage)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	client, err := NewClient("http://"+addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		jitter func(time.Duration) time.Duration
		want   []float64 // seconds
	}{
		{"no jitter", func(time.Duration) time.Duration { return 0 },
			[]float64{1, 2, 4, 8, 16, 30, 30}},
		{"most jitter", func(n time.Duration) time.Duration { return max(n-1, 0) },
			[]float64{0.75, 1.5, 3, 6, 12, 22.5, 22.5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var got []time.Duration
			var outcomes []RenewOutcome
			r, err := NewRenewer(RenewerOptions{
				Agent: agent, Client: client, Request: &attest.Request{Audience: "https://docs.example"},
				Keys:   attest.StaticKeys{},
				Jitter: tc.jitter,
				Sleep: func(ctx context.Context, d time.Duration) error {
					if got = append(got, d); len(got) == len(tc.want) {
						cancel()
					}
					return ctx.Err()
				},
				OnAttempt: func(o RenewOutcome, _ error) { outcomes = append(outcomes, o) },
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := r.Run(ctx); !errors.Is(err, context.Canceled) {
				t.Fatalf("Run = %v, want context.Canceled", err)
			}
			for i, w := range tc.want {
				want := time.Duration(w * float64(time.Second))
				if i >= len(got) || got[i] < want-time.Nanosecond || got[i] > want+time.Nanosecond {
					t.Fatalf("waits %v, want %v seconds", got, tc.want)
				}
			}
			st := r.Status()
			if st.Ready || r.Credential() != nil || st.Refused || st.LastReason != attest.ReasonUnavailable || st.Failures != uint64(len(tc.want)) {
				t.Errorf("status %+v", st)
			}
			for _, o := range outcomes {
				if o != RenewFailed {
					t.Errorf("outcomes %v, want only %q", outcomes, RenewFailed)
					break
				}
			}
		})
	}
}

// testClock is a settable clock shared by the verifier and the Renewer.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// startVerifier runs a real verifier on loopback with clk and enrolls the
// agent's AK.
func startVerifier(t *testing.T, clk *testClock, agent *Agent) *httptest.Server {
	t.Helper()
	refs, err := firmwarerefs.Load()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := verifier.New(context.Background(), verifier.Config{
		DataDir: t.TempDir(), Refs: verifier.NewRefHolder(refs), Now: clk.Now,
		Logger: discard(), RateLimits: verifier.NoRateLimits(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	spki, err := x509.MarshalPKIXPublicKey(agent.AKPublic())
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256(spki)
	if err := srv.Store().Enroll(context.Background(), store.Enrollment{AKDigest: d[:], AKPublic: spki, Method: "operator", EnrolledBy: "test", EnrolledAt: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	return hs
}

// steppedSleep hands every wait the Renewer asks for to the test, which
// moves the clock and lets it go on.
type steppedSleep struct {
	asked   chan time.Duration
	release chan struct{}
}

func (s *steppedSleep) Sleep(ctx context.Context, d time.Duration) error {
	select {
	case s.asked <- d:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-s.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *steppedSleep) next(t *testing.T) time.Duration {
	t.Helper()
	select {
	case d := <-s.asked:
		return d
	case <-time.After(30 * time.Second):
		t.Fatal("the renewer did not ask to sleep")
		return 0
	}
}

// runRenewer runs a Renewer for a booted agent against a real verifier (60 s
// credentials) on a test clock, with a stepped sleep and no jitter, until
// the test ends.
func runRenewer(t *testing.T) (*Renewer, *steppedSleep, *testClock, *httptest.Server) {
	t.Helper()
	_, agent := bootedAgent(t, "rhel8-uefi.bin", allowedImage)
	clk := &testClock{t: time.Now()}
	hs := startVerifier(t, clk, agent)
	client, err := NewClient(hs.URL, hs.Client())
	if err != nil {
		t.Fatal(err)
	}
	ss := &steppedSleep{asked: make(chan time.Duration), release: make(chan struct{})}
	r, err := NewRenewer(RenewerOptions{
		Agent: agent, Client: client, Request: &attest.Request{Audience: "https://docs.example"},
		Now: clk.Now, Sleep: ss.Sleep, Jitter: func(time.Duration) time.Duration { return 0 },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return r, ss, clk, hs
}

// TestRenewerRenewsAndFailsClosed: a real verifier (60 s credentials) and a
// test clock. The Renewer renews at 2/3 of the lifetime with the same agent
// key; when the verifier goes away it backs off, keeps the old credential
// while it is valid, and returns nil once it expired.
func TestRenewerRenewsAndFailsClosed(t *testing.T) {
	r, ss, clk, hs := runRenewer(t)

	d := ss.next(t) // first credential issued
	select {
	case <-r.Ready():
	default:
		t.Fatal("Ready not closed after the first credential")
	}
	first := r.Credential()
	st := r.Status()
	if first == nil || !st.Ready || st.Successes != 1 {
		t.Fatalf("after the first attestation: status %+v", st)
	}
	// 2/3 of 60 s after iat (iat is whole seconds, so up to 1 s earlier).
	if d > 40*time.Second || d < 39*time.Second {
		t.Errorf("renewal planned in %v, want 2/3 of 60 s", d)
	}
	clk.Advance(d)
	ss.release <- struct{}{}
	d = ss.next(t)
	second := r.Credential()
	st2 := r.Status()
	if second == nil || bytes.Equal(first, second) || st2.Successes != 2 || st2.Subject != st.Subject || !st2.Expiry.After(st.Expiry) {
		t.Fatalf("after renewal: status %+v (subject before %s)", st2, st.Subject)
	}

	// The verifier goes away: backoff, the old credential until it expires.
	hs.CloseClientConnections()
	hs.Close()
	clk.Advance(d)
	ss.release <- struct{}{}
	sawExpiry := false
	for i := 0; i < 10 && !sawExpiry; i++ {
		d = ss.next(t)
		st := r.Status()
		if st.LastReason != attest.ReasonUnavailable || st.Refused {
			t.Fatalf("status after a failure: %+v", st)
		}
		valid := clk.Now().Before(st2.Expiry)
		if got := r.Credential(); valid != (got != nil) || (got != nil && !bytes.Equal(got, second)) {
			t.Fatalf("at %v before expiry: credential %d bytes", st2.Expiry.Sub(clk.Now()), len(got))
		}
		sawExpiry = !valid
		clk.Advance(d)
		ss.release <- struct{}{}
	}
	if !sawExpiry || r.Status().Ready {
		t.Fatalf("the credential never expired: %+v", r.Status())
	}
}

// TestRenewerRefused: the verifier refuses the image; the reason is in the
// status and no credential is ever returned.
func TestRenewerRefused(t *testing.T) {
	_, agent := bootedAgent(t, "rhel8-uefi.bin", Workload{ImageRef: "ghcr.io/acme/agent:1", ImageDigest: testDigest})
	clk := &testClock{t: time.Now()}
	hs := startVerifier(t, clk, agent)
	client, err := NewClient(hs.URL, hs.Client())
	if err != nil {
		t.Fatal(err)
	}
	ss := &steppedSleep{asked: make(chan time.Duration), release: make(chan struct{})}
	var outcome RenewOutcome
	r, err := NewRenewer(RenewerOptions{
		Agent: agent, Client: client, Request: &attest.Request{Audience: "https://docs.example"},
		Now: clk.Now, Sleep: ss.Sleep, OnAttempt: func(o RenewOutcome, _ error) { outcome = o },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	if d := ss.next(t); d > time.Second {
		t.Errorf("first retry in %v, want at most 1 s", d)
	}
	st := r.Status()
	if outcome != RenewRefused || !st.Refused || st.LastReason != attest.ReasonRefsImageDigest || st.Ready || r.Credential() != nil {
		t.Errorf("outcome %q, status %+v", outcome, st)
	}
}

// TestMain keeps the transparency-log library's informational logging
// (klog, from the verifier the renewal tests start) out of the test output.
func TestMain(m *testing.M) {
	cliconf.RouteLibraryLogs(slog.New(slog.NewTextHandler(os.Stderr, nil)))
	os.Exit(m.Run())
}

// TestRenewerRenewNow: a relying party refuses the credential as revoked;
// RenewNow cuts the planned wait short and a fresh credential is obtained
// at once. Asks right after an attempt are ignored.
func TestRenewerRenewNow(t *testing.T) {
	r, ss, clk, _ := runRenewer(t)
	if d := ss.next(t); d < 39*time.Second {
		t.Fatalf("first renewal planned in %v", d)
	}
	first := r.Credential()

	r.RenewNow() // within MinBackoff of the first attempt: ignored
	select {
	case d := <-ss.asked:
		t.Fatalf("a RenewNow right after an attempt cut the wait short (asked to sleep %v)", d)
	case <-time.After(50 * time.Millisecond):
	}

	clk.Advance(5 * time.Second) // the relying party refuses it as revoked 5 s later
	r.RenewNow()
	ss.next(t) // renewed without the planned 40 s having passed
	if second := r.Credential(); second == nil || bytes.Equal(first, second) || r.Status().Successes != 2 {
		t.Fatalf("RenewNow did not renew: status %+v", r.Status())
	}
}
