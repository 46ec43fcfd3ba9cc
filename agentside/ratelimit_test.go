package agentside

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/attest"
)

// The client waits out the verifier's rate limit (429 with Retry-After),
// within MaxRateLimitWait, and then gives the refusal back.
func TestClientWaitsOutRateLimit(t *testing.T) {
	for _, tc := range []struct {
		name       string
		refusals   int
		retryAfter string
		wantWaits  int
		wantErr    attest.Reason
	}{
		{"served at once", 0, "1", 0, ""},
		{"two refusals, then served", 2, "1", 2, ""},
		{"asked to wait longer than the budget", 1, "60", 0, attest.ReasonRateLimited},
		{"refused until the budget is spent", 1000, "7", 2, attest.ReasonRateLimited}, // 7–8.75 s each: a third would pass 20 s
	} {
		t.Run(tc.name, func(t *testing.T) {
			var calls atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if int(calls.Add(1)) <= tc.refusals {
					w.Header().Set("Retry-After", tc.retryAfter)
					attest.WriteProblem(w, attest.ProblemFor(http.StatusTooManyRequests, attest.Errorf(attest.ReasonRateLimited, "too many requests from 127.0.0.1")))
					return
				}
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusCreated)
				fmt.Fprintf(w, `{"nonce":%q,"expires_at":%q}`, base64.StdEncoding.EncodeToString(make([]byte, attest.NonceSize)), time.Now().Add(time.Minute).Format(time.RFC3339))
			}))
			defer srv.Close()
			c, err := NewClient(srv.URL, nil)
			if err != nil {
				t.Fatal(err)
			}
			var waits []time.Duration
			c.sleep = func(_ context.Context, d time.Duration) error { waits = append(waits, d); return nil }
			_, err = c.Challenge(context.Background())
			if got := attest.ReasonOf(err); tc.wantErr == "" && err != nil || tc.wantErr != "" && got != tc.wantErr {
				t.Fatalf("err %v, want %q", err, tc.wantErr)
			}
			if len(waits) != tc.wantWaits {
				t.Fatalf("waited %v, want %d waits", waits, tc.wantWaits)
			}
			var total time.Duration
			for _, d := range waits {
				total += d
				if base, _ := time.ParseDuration(tc.retryAfter + "s"); d < base || d > base+base/4 {
					t.Errorf("waited %v for Retry-After %s s", d, tc.retryAfter)
				}
			}
			if total > MaxRateLimitWait {
				t.Errorf("waited %v in all, over %v", total, MaxRateLimitWait)
			}
		})
	}
}

func TestClientRateLimitWaitEndsWithContext(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "5")
		attest.WriteProblem(w, attest.ProblemFor(http.StatusTooManyRequests, attest.Errorf(attest.ReasonRateLimited, "slow down")))
	}))
	defer srv.Close()
	c, err := NewClient(srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.sleep = func(ctx context.Context, d time.Duration) error { cancel(); return sleepCtx(ctx, d) }
	if _, err := c.Challenge(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want the wait ended by the context", err)
	}
}
