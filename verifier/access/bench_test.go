package access_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/policy/authz"
)

// BenchmarkAuthorize is one continuous decision in process, as
// /v1/authorize makes it but without HTTP: credential (signature cached),
// proof of possession (one ECDSA verify, replay cache), delegation (cached),
// scope, Cedar. The proofs are signed before the timer starts.
func BenchmarkAuthorize(b *testing.B) {
	f := newFixture(b)
	f.srv.Access() // the service under test
	dlg := f.delegate(b, nil)
	cred := f.mint(b, nil, func(c *attest.Claims) { c.Delegation = dlg.ID })
	qs := make([]*attest.AuthorizeRequest, b.N)
	for i := range qs {
		qs[i] = f.question(b, cred, nil, http.MethodGet, "documents:read", report)
	}
	svc := f.srv.Access()
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		d, err := svc.Authorize(ctx, qs[i])
		lat = append(lat, time.Since(t0))
		if err != nil || !d.Permitted() {
			b.Fatal(d, err)
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
}

// BenchmarkDecideVerified is the decision once credential and proof are
// verified: delegation from the cache and the policy engine.
func BenchmarkDecideVerified(b *testing.B) {
	eng, err := authz.Default()
	if err != nil {
		b.Fatal(err)
	}
	res, _ := attest.ParseResource(report)
	prefix, _ := attest.ParseResource(`Document::"customer-A/*"`)
	g := &authz.Grant{ID: "dlg_x", User: "alice", Intent: "summarize-documents", Status: authz.StatusActive,
		ImageDigests: []string{image}, Resources: []attest.Resource{prefix}, ExpiresAt: time.Now().Add(time.Hour)}
	a := &authz.Agent{ID: "urn:x", ImageDigest: image, EARStatus: "affirming", Platform: "rhel8-uefi"}
	scope := []string{`documents:read:Document::"customer-A/*"`, `summaries:create:Summary::"customer-A/*"`}
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		ok := attest.ScopeAllows(scope, "documents:read", res)
		r := eng.Decide(g, a, "documents:read", res, &authz.Env{Now: time.Now()})
		lat = append(lat, time.Since(t0))
		if !ok || !r.Permit {
			b.Fatal(r)
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
}

// BenchmarkAuthorizeHTTP is /v1/authorize over loopback HTTP, questions
// (with their proofs) encoded before the timer starts, from parallel
// clients.
func BenchmarkAuthorizeHTTP(b *testing.B) {
	f := newFixture(b)
	dlg := f.delegate(b, nil)
	cred := f.mint(b, nil, func(c *attest.Claims) { c.Delegation = dlg.ID })
	bodies := make(chan []byte, b.N)
	for range b.N {
		body, err := json.Marshal(f.question(b, cred, nil, http.MethodGet, "documents:read", report))
		if err != nil {
			b.Fatal(err)
		}
		bodies <- body
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	hc := &http.Client{Transport: tr}
	url := f.http.URL + attest.AuthorizePath
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := hc.Post(url, "application/json", bytes.NewReader(<-bodies))
			if err != nil {
				b.Error(err)
				return
			}
			var d attest.Decision
			json.NewDecoder(resp.Body).Decode(&d)
			resp.Body.Close()
			if !d.Permitted() {
				b.Errorf("denied: %+v", d)
				return
			}
		}
	})
}
