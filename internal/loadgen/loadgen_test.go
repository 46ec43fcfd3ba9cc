package loadgen

import (
	"context"
	"testing"
	"time"
)

// TestRun drives an in-process verifier briefly: every question must be
// permitted and the figures filled. It asserts no speed.
func TestRun(t *testing.T) {
	for _, presign := range []bool{false, true} {
		res, err := Run(context.Background(), Options{Workers: 2, Duration: 300 * time.Millisecond, Warmup: 50 * time.Millisecond, Presign: presign, Rate: 400})
		if err != nil {
			t.Fatal(err)
		}
		if res.Decisions == 0 || res.Denies != 0 || res.Errors != 0 || res.Permits != res.Decisions {
			t.Fatalf("presign %v: %+v", presign, res)
		}
		if res.DecisionsPerS <= 0 || res.P50ms <= 0 || res.P99ms < res.P50ms || !res.InProcess || res.PolicySet == "" {
			t.Fatalf("figures %+v", res)
		}
	}
}

func TestRunNeedsDataWithServer(t *testing.T) {
	if _, err := Run(context.Background(), Options{Server: "http://127.0.0.1:1"}); err == nil {
		t.Fatal("ran against a server without its data directory")
	}
}
