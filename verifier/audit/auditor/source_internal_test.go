package auditor

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestHTTPSourceWaitsWhenRateLimited: a 429 from vouchd's per-client limit
// is waited out as its Retry-After asks, a bounded number of times.
func TestHTTPSourceWaitsWhenRateLimited(t *testing.T) {
	for _, tc := range []struct {
		name       string
		refusals   int
		retryAfter string
		waits      []time.Duration
		err        string
	}{
		{name: "served at once", refusals: 0},
		{name: "two refusals", refusals: 2, retryAfter: "3", waits: []time.Duration{3 * time.Second, 3 * time.Second}},
		{name: "no Retry-After: a second", refusals: 1, waits: []time.Duration{time.Second}},
		{name: "an absurd Retry-After is capped", refusals: 1, retryAfter: "86400", waits: []time.Duration{time.Minute}},
		{name: "refused for good", refusals: 1000, retryAfter: "1", err: "rate-limited"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var n atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if n.Add(1) <= int64(tc.refusals) {
					if tc.retryAfter != "" {
						w.Header().Set("Retry-After", tc.retryAfter)
					}
					w.Header().Set("Content-Type", "application/problem+json")
					w.WriteHeader(http.StatusTooManyRequests)
					w.Write([]byte(`{"type":"https://vouch.dev/problems/rate-limited","status":429,"reason":"rate-limited","detail":"too many read requests"}`))
					return
				}
				w.Write([]byte("checkpoint"))
			}))
			defer srv.Close()
			s, err := OpenSource(srv.URL, srv.Client())
			if err != nil {
				t.Fatal(err)
			}
			var waits []time.Duration
			s.(*httpSource).sleep = func(_ context.Context, d time.Duration) error { waits = append(waits, d); return nil }
			b, err := s.ReadCheckpoint(context.Background())
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				if len(waits) != maxRateLimitedRetries {
					t.Errorf("%d waits, want %d", len(waits), maxRateLimitedRetries)
				}
				return
			}
			if err != nil || string(b) != "checkpoint" {
				t.Fatalf("%q, %v", b, err)
			}
			if !slices.Equal(waits, tc.waits) {
				t.Errorf("waits %v, want %v", waits, tc.waits)
			}
		})
	}
}

// TestHTTPSourceWaitEndsWithContext: the wait for a Retry-After ends with
// the caller's context.
func TestHTTPSourceWaitEndsWithContext(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	defer srv.Close()
	s, err := OpenSource(srv.URL, srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = s.ReadCheckpoint(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "waiting 30s") {
		t.Errorf("error %v, want the wait cut short by the deadline", err)
	}
}
