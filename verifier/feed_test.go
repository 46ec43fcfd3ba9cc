package verifier_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/attest"
	firmwarerefs "github.com/vouch-dev/vouch/firmware-refs"
	"github.com/vouch-dev/vouch/verifier"
	"github.com/vouch-dev/vouch/verifier/monitor"
	"github.com/vouch-dev/vouch/verifier/store"
)

// feedEnv is a verifier on loopback (no TPM needed) with a relying-party
// revocation follower.
type feedEnv struct {
	srv     *verifier.Server
	hs      *httptest.Server
	feed    *attest.RevocationFeed
	arrived chan arrival
	cancel  context.CancelFunc
}

type arrival struct {
	entry attest.RevocationEntry
	at    time.Time
}

func newFeedEnv(t testing.TB) *feedEnv {
	t.Helper()
	refs, err := firmwarerefs.Load()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := verifier.New(context.Background(), verifier.Config{DataDir: t.TempDir(), Refs: verifier.NewRefHolder(refs), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	e := &feedEnv{srv: srv, hs: hs, arrived: make(chan arrival, 4096)}
	e.feed, err = attest.NewRevocationFeed(attest.RevocationFeedOptions{URL: hs.URL, OnUpdate: func(es []attest.RevocationEntry) {
		now := time.Now()
		for _, en := range es {
			e.arrived <- arrival{en, now}
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); e.feed.Run(ctx) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	defer wcancel()
	if err := e.feed.WaitSynced(wctx); err != nil {
		t.Fatalf("follower never synced: %v", err)
	}
	return e
}

// issue records a live credential for sub, as issuance does.
func (e *feedEnv) issue(t testing.TB, sub string) *attest.Claims {
	t.Helper()
	id := make([]byte, attest.CredentialIDSize)
	rand.Read(id)
	now := time.Now()
	if err := e.srv.Store().RecordCredential(context.Background(), store.Credential{ID: id, Subject: sub, Audience: "https://rp",
		AKDigest: []byte("machine"), ImageDigest: "sha256:img", IssuedAt: now, ExpiresAt: now.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	return &attest.Claims{ID: id, Subject: sub, Expiry: now.Add(time.Minute).Unix()}
}

// theft is a report that makes the monitor revoke the agent's credentials.
func theft(sub string, cti []byte) monitor.Signal {
	return monitor.Signal{Kind: monitor.KindRequest, Agent: sub, AK: []byte("machine"), Cohort: "sha256:img",
		Outcome: monitor.OutcomeRefused, Reason: attest.ReasonPoPSignature, CredentialID: cti}
}

// waitArrival waits for the feed entry revoking cti at the follower.
func (e *feedEnv) waitArrival(t testing.TB, cti []byte) arrival {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case a := <-e.arrived:
			if slices.Equal(a.entry.CTI, cti) {
				return a
			}
		case <-timeout:
			t.Fatalf("revocation of %x never reached the relying party", cti)
		}
	}
}

// TestRevocationReachesRelyingParty measures "revoked → refused at a relying
// party": the monitor revokes a credential (the real response path), the
// verifier streams it, and the follower refuses the credential from then
// on. The delay is reported, never asserted; the test asserts that every
// revocation arrives and is refused, and that the feed stays fresh.
func TestRevocationReachesRelyingParty(t *testing.T) {
	e := newFeedEnv(t)
	ctx := context.Background()
	var delays []time.Duration
	for i := range 50 {
		sub := fmt.Sprintf("urn:agent:%d", i)
		c := e.issue(t, sub)
		if revoked, err := e.feed.Revoked(ctx, c); err != nil || revoked {
			t.Fatalf("live credential: revoked=%v err=%v", revoked, err)
		}
		e.srv.Monitor().Observe(ctx, theft(sub, c.ID))
		a := e.waitArrival(t, c.ID)
		if revoked, err := e.feed.Revoked(ctx, c); err != nil || !revoked {
			t.Fatalf("after the feed entry arrived: revoked=%v err=%v", revoked, err)
		}
		delays = append(delays, a.at.Sub(a.entry.RevokedAt))
	}
	slices.Sort(delays)
	t.Logf("revoked (monitor response) → known at the relying party, over %d revocations: p50 %v, p90 %v, max %v (stream heartbeat %v, fail-closed bound %v)",
		len(delays), delays[len(delays)/2], delays[len(delays)*9/10], delays[len(delays)-1], verifier.DefaultFeedHeartbeat, attest.DefaultMaxStaleness)

	// A revocation written by another process (the vouch CLI, another
	// replica) is found by the verifier's head poll.
	c := e.issue(t, "urn:agent:cli")
	start := time.Now()
	if _, err := e.srv.Store().RevokeCredentialID(ctx, c.ID, store.Revocation{Reason: "operator", RevokedBy: "test", RevokedAt: start}); err != nil {
		t.Fatal(err)
	}
	a := e.waitArrival(t, c.ID)
	t.Logf("revoked by another process → known at the relying party: %v", a.at.Sub(start))
}

// TestRevocationFeedFailsClosed: a follower that stops hearing from the
// verifier refuses every credential once MaxStaleness passes, and a
// follower that never synced refuses from the start.
func TestRevocationFeedFailsClosed(t *testing.T) {
	e := newFeedEnv(t)
	ctx := context.Background()
	c := e.issue(t, "urn:agent:x")
	if _, err := e.feed.Revoked(ctx, c); err != nil {
		t.Fatalf("fresh feed: %v", err)
	}
	e.hs.CloseClientConnections()
	e.hs.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := e.feed.Revoked(ctx, c)
		if err != nil {
			t.Logf("verifier gone: the follower fails closed after %v of silence: %v", e.feed.Staleness().Round(time.Millisecond), err)
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the follower kept answering from a stale feed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	never, err := attest.NewRevocationFeed(attest.RevocationFeedOptions{URL: "http://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := never.Revoked(ctx, c); err == nil {
		t.Error("a follower that never read the feed must fail closed")
	}
}

// BenchmarkRevocationPropagation is the time from the monitor's decision to
// revoke to the relying party's follower knowing, through the real stream.
func BenchmarkRevocationPropagation(b *testing.B) {
	e := newFeedEnv(b)
	ctx := context.Background()
	i := 0
	for b.Loop() {
		i++
		b.StopTimer()
		sub := fmt.Sprintf("urn:agent:%d", i)
		c := e.issue(b, sub)
		b.StartTimer()
		e.srv.Monitor().Observe(ctx, theft(sub, c.ID))
		e.waitArrival(b, c.ID)
	}
}

// TestSignalsNeedAKnownReporter: request reports are taken only from a
// relying party whose token the monitor configuration lists.
func TestSignalsNeedAKnownReporter(t *testing.T) {
	e := newFeedEnv(t)
	for _, auth := range []string{"", "Bearer not-a-known-token"} {
		req, _ := http.NewRequest(http.MethodPost, e.hs.URL+"/v1/signals", strings.NewReader(`{"reports":[]}`))
		req.Header.Set("Content-Type", "application/json")
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if reason := attest.ReasonOf(attest.ReadProblem(resp)); resp.StatusCode != http.StatusUnauthorized || reason != attest.ReasonReporterUnknown {
			t.Errorf("Authorization %q: %d %s, want 401 %s", auth, resp.StatusCode, reason, attest.ReasonReporterUnknown)
		}
		resp.Body.Close()
	}
}
