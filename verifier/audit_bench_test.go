package verifier_test

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/verifier"
	"github.com/vouch-dev/vouch/verifier/audit"
)

// discardLog accepts records without keeping them: only for measuring what
// the real log adds; the verifier never runs with it.
type discardLog struct{ n uint64 }

func (d *discardLog) Append(context.Context, *audit.Record) (uint64, error) { d.n++; return d.n, nil }

// BenchmarkAttestAuditCost measures the latency the audit log adds to an
// attestation (sequential requests: evidence archived with fsync, record
// durably sequenced through tessera's POSIX storage), against the same
// verifier with a discarding log. Reports p50 and p99 per attestation.
func BenchmarkAttestAuditCost(b *testing.B) {
	for _, tc := range []struct {
		name string
		mod  func(*verifier.Config)
	}{
		{"audit=tlog", func(*verifier.Config) {}},
		{"audit=discard", func(c *verifier.Config) { c.Audit = &discardLog{} }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			e := newEnv(b, demoImage, true, tc.mod, noRateLimits)
			h := e.srv.Handler()
			ctx := context.Background()
			bodies := make([][]byte, b.N)
			for i := range bodies {
				ch, err := e.client.Challenge(ctx)
				if err != nil {
					b.Fatal(err)
				}
				ev, err := e.agent.Evidence(ch.Nonce, request)
				if err != nil {
					b.Fatal(err)
				}
				bodies[i], _ = attest.Marshal(ev)
			}
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				start := time.Now()
				req := httptest.NewRequest(http.MethodPost, "/v1/attest", bytes.NewReader(bodies[i]))
				req.Header.Set("Content-Type", attest.EvidenceMediaType)
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK {
					b.Fatalf("attest: %d %s", rec.Code, rec.Body)
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}
