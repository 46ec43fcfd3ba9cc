package monitor

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/attest"
)

// theft is a signal that raises a high alert on its own: a relying party saw
// the agent's credential with a proof signed by another key.
func theft(agent string) Signal {
	return Signal{Kind: KindRequest, Agent: agent, AK: []byte("machine-1"), Cohort: "sha256:img",
		Outcome: OutcomeRefused, Reason: attest.ReasonPoPSignature, CredentialID: []byte("0123456789abcdef")}
}

// receiver is a real loopback webhook receiver that verifies signatures.
type receiver struct {
	t      *testing.T
	secret []byte
	mu     sync.Mutex
	got    map[string]Alert
	ch     chan string
	srv    *http.Server
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if err := VerifyWebhook(rc.secret, r.Header.Get(SignatureHeader), body, time.Now(), 5*time.Minute); err != nil {
		rc.t.Errorf("receiver: %v", err)
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	var a Alert
	if err := json.Unmarshal(body, &a); err != nil || a.ID != r.Header.Get("Vouch-Alert-Id") {
		rc.t.Errorf("receiver: body %s: %v", body, err)
	}
	rc.mu.Lock()
	rc.got[a.ID] = a
	rc.mu.Unlock()
	rc.ch <- a.ID
	w.WriteHeader(http.StatusNoContent)
}

// up starts serving on addr (the same port it had while down).
func (rc *receiver) up(addr string) {
	var ln net.Listener
	var err error
	for range 50 { // the port was just released; rebinding can take a moment
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		rc.t.Fatalf("receiver: %v", err)
	}
	rc.srv = &http.Server{Handler: rc}
	go rc.srv.Serve(ln)
	rc.t.Cleanup(func() { rc.srv.Close() })
}

// TestWebhookReceiverDownThenUp: alerts raised while the receiver is down
// (connection refused) do not hold up the monitor, survive a restart of the
// verifier (the outbox is in the database), and are delivered, signed, once
// the receiver listens again.
func TestWebhookReceiverDownThenUp(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // down: nothing listens on addr
	secret := []byte("0123456789abcdef-webhook-secret")
	rc := &receiver{t: t, secret: secret, got: map[string]Alert{}, ch: make(chan string, 16)}
	st := openStore(t)
	wopts := &WebhookOptions{URL: "http://" + addr + "/hook", Secret: secret, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
	ctx := context.Background()

	// Verifier 1 raises an alert, fails to deliver it, and stops.
	sink1 := newSink()
	m1, err := New(Options{Store: st, Config: DefaultConfig(), OnAlert: sink1.add, Webhook: wopts, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	m1.Observe(ctx, theft("urn:agent:one"))
	first := <-sink1.ch
	waitFor(t, func() bool { return counterValue(m1.metrics.webhook.WithLabelValues("failed")) >= 2 })
	m1.Close()

	// Verifier 2, on the same database, keeps taking decisions while the
	// receiver is still down, and raises a second alert.
	sink2 := newSink()
	m2 := newTestMonitor(t, DefaultConfig(), sink2, Options{Store: st, Webhook: wopts})
	start := time.Now()
	f := newFleet(9, 20, time.Now())
	for range 5000 {
		s, _ := f.next()
		m2.Observe(ctx, s)
	}
	observeTime := time.Since(start)
	m2.Observe(ctx, theft("urn:agent:two"))
	second := <-sink2.ch
	if err := m2.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if d := counterValue(m2.metrics.dropped); d != 0 {
		t.Errorf("%v signals dropped while the webhook was down", d)
	}
	t.Logf("5000 decisions observed in %v while the receiver was down", observeTime)

	// The receiver comes back: both alerts arrive.
	rc.up(addr)
	want := map[string]bool{first.ID: true, second.ID: true}
	timeout := time.After(20 * time.Second)
	for len(want) > 0 {
		select {
		case id := <-rc.ch:
			delete(want, id)
		case <-timeout:
			t.Fatalf("alerts %v not delivered after the receiver came back", want)
		}
	}
	rc.mu.Lock()
	got := rc.got[first.ID]
	rc.mu.Unlock()
	if got.Severity != SeverityHigh || got.Agent.ID != "urn:agent:one" || !strings.Contains(got.Signals[0].Detail, "pop-signature") {
		t.Errorf("delivered alert: %+v", got)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached within 20 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestWebhookSignature(t *testing.T) {
	secret := []byte("0123456789abcdef")
	body := []byte(`{"id":"x"}`)
	now := time.Unix(1_800_000_000, 0)
	h := SignWebhook(secret, now, body)
	tests := []struct {
		name   string
		header string
		body   []byte
		now    time.Time
		ok     bool
	}{
		{"valid", h, body, now, true},
		{"other body", h, []byte(`{"id":"y"}`), now, false},
		{"too old", h, body, now.Add(10 * time.Minute), false},
		{"no signature", "t=1800000000", body, now, false},
		{"garbage", "v1=zz,t=abc", body, now, false},
		{"wrong secret", SignWebhook([]byte("another secret!!"), now, body), body, now, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := VerifyWebhook(secret, tc.header, tc.body, tc.now, 5*time.Minute)
			if (err == nil) != tc.ok {
				t.Errorf("VerifyWebhook = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	min, max := 100*time.Millisecond, 2*time.Second
	for attempts, want := range []time.Duration{100, 200, 400, 800, 1600, 2000, 2000} {
		want *= time.Millisecond
		for range 20 {
			d := backoff(attempts, min, max)
			if d < want/2 || d > want {
				t.Fatalf("backoff(%d) = %v, want within [%v, %v]", attempts, d, want/2, want)
			}
		}
	}
}
