package audit_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/verifier/audit"
)

func benchRecord(i int) *audit.Record {
	return &audit.Record{Version: audit.SchemaVersion, Kind: audit.KindAttestation, TimeMillis: time.Now().UnixMilli(), Outcome: audit.OutcomeIssued,
		Build: "bench", RefSetID: "sha256:" + fmt.Sprintf("%064x", 1), EvidenceDigest: make([]byte, 32),
		Agent:      &audit.Agent{ID: fmt.Sprintf("urn:ietf:params:oauth:ckt:%043d", i), AKDigest: make([]byte, 32), ImageDigest: "sha256:" + fmt.Sprintf("%064x", 2)},
		Reasons:    []attest.Reason{},
		Detail:     map[string]string{audit.DetailStatus: "affirming", audit.DetailProfile: "rhel8-uefi"},
		Credential: &audit.Credential{ID: []byte(fmt.Sprintf("%016d", i)), Audience: "https://docs.example", Expiry: time.Now().Unix() + 60}}
}

// BenchmarkAppend measures appends through the real tessera POSIX appender
// on this machine's disk, with the verifier's default batching: as many
// concurrent appenders as -cpu×64 (attestations in flight), each waiting
// for its record to be durably sequenced, as an issuance does. Reported:
// entries/s and the latency an append adds (p50, p99).
func BenchmarkAppend(b *testing.B) {
	for _, conc := range []int{1, 64, 1024} {
		b.Run(fmt.Sprintf("inflight=%d", conc), func(b *testing.B) {
			ctx := context.Background()
			l, err := audit.Open(ctx, audit.Options{DataDir: b.TempDir()})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close(ctx)
			var mu sync.Mutex
			lat := make([]time.Duration, 0, b.N)
			work := make(chan int)
			var wg sync.WaitGroup
			for range conc {
				wg.Add(1)
				go func() {
					defer wg.Done()
					local := make([]time.Duration, 0, 1024)
					for i := range work {
						start := time.Now()
						if _, err := l.Append(ctx, benchRecord(i)); err != nil {
							b.Error(err)
							return
						}
						local = append(local, time.Since(start))
					}
					mu.Lock()
					lat = append(lat, local...)
					mu.Unlock()
				}()
			}
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				work <- i
			}
			close(work)
			wg.Wait()
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(len(lat))/b.Elapsed().Seconds(), "entries/s")
			if len(lat) > 0 {
				b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
			}
		})
	}
}
