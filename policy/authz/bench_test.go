package authz

import (
	"github.com/vouch-dev/vouch/attest"
	"slices"
	"testing"
	"time"
)

// BenchmarkDecide is the in-process decision with the credential already
// verified: delegation checks and the Cedar policy set. It reports the
// median and 99th percentile of single decisions besides the mean.
func BenchmarkDecide(b *testing.B) {
	e := engine(b)
	g, a, en := grant(b), agent(), env()
	res := mustRes(b, `Document::"customer-A/report-7"`)
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		r := e.Decide(g, a, "documents:read", res, en)
		lat = append(lat, time.Since(start))
		if !r.Permit {
			b.Fatalf("denied: %+v", r.Reasons)
		}
	}
	b.StopTimer()
	reportPercentiles(b, lat)
}

// BenchmarkScope is the scope computation at issuance for two resources.
func BenchmarkScope(b *testing.B) {
	e := engine(b)
	g, a, en := grant(b), agent(), env()
	res := []attest.Resource{mustRes(b, `Document::"customer-A/report-7"`), mustRes(b, `Summary::"customer-A/report-7"`)}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := e.Scope(g, a, "", res, en); err != nil {
			b.Fatal(err)
		}
	}
}

func reportPercentiles(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
}
