package verifier

import (
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/verifier/internal/ratelimit"
)

// Rate-limit classes: each groups routes whose requests cost the verifier
// about the same, and has its own bucket per client.
const (
	// RateClassAttest: POST /v1/challenge, /v1/attest, /v1/enroll and
	// /v1/enroll/activate. Each request writes to the database, and an
	// attestation also verifies signatures and appends durably to the audit
	// log; an agent needs one challenge and one attestation a minute.
	RateClassAttest = "attest"
	// RateClassRead: GET /v1/log/…, /v1/keys, /v1/revocations (and its
	// stream), and relying parties' reports to POST /v1/signals. Cheap,
	// and fetched in bursts (an auditor reads tiles, a relying party polls).
	RateClassRead = "read"
	// RateClassDecide: POST /v1/authorize and /v1/elevate. These carry a
	// credential and a proof of possession, come from relying parties at
	// thousands of requests a second, and are not limited by default.
	RateClassDecide = "decide"
)

// Default rate limits per client (IPv4 address or IPv6 /64).
const (
	DefaultRateAttest      = 10
	DefaultRateAttestBurst = 20
	DefaultRateRead        = 100
	DefaultRateReadBurst   = 200
	// DefaultRateMaxClients bounds the clients each class tracks.
	DefaultRateMaxClients = ratelimit.DefaultMaxClients
)

// RateLimit is the limit of one class per client: PerSecond requests a
// second sustained, up to Burst at once. PerSecond 0 disables the class.
type RateLimit struct {
	PerSecond float64
	// Burst is the bucket size; 0 means twice PerSecond (at least 1).
	Burst int
}

// RateLimits configure the per-client rate limits of the verifier's
// unauthenticated endpoints. Admin API routes (signed requests or mTLS),
// /healthz, /readyz and /metrics are never limited; /v1/authorize and
// /v1/elevate only when Decide is set.
type RateLimits struct {
	Attest RateLimit
	Read   RateLimit
	Decide RateLimit
	// MaxClients bounds the clients each class tracks at once (default
	// DefaultRateMaxClients, 65,536). When that many are active at once,
	// newcomers share one bucket.
	MaxClients int
	// Now returns the current time; time.Now when nil. (Not Config.Now:
	// tests stop that clock, and buckets would never refill.)
	Now func() time.Time
}

// DefaultRateLimits are the limits a Server applies when Config.RateLimits
// is nil: attest 10/s (burst 20), read 100/s (burst 200), decide off.
func DefaultRateLimits() RateLimits {
	return RateLimits{
		Attest: RateLimit{PerSecond: DefaultRateAttest, Burst: DefaultRateAttestBurst},
		Read:   RateLimit{PerSecond: DefaultRateRead, Burst: DefaultRateReadBurst},
	}
}

// NoRateLimits disables every limit (benchmarks and load tests that fire
// thousands of requests from one address).
func NoRateLimits() *RateLimits { return &RateLimits{} }

// rateClassOf names the class of an instrumented route; "" for routes never
// limited (admin API, health, metrics).
func rateClassOf(route string) string {
	switch route {
	case "challenge", "attest", "enroll", "enroll-activate":
		return RateClassAttest
	case "keys", "log", "revocations", "revocations-stream", "signals":
		return RateClassRead
	case "authorize", "elevate":
		return RateClassDecide
	}
	return ""
}

// rateLimiter holds the limiter of each enabled class.
type rateLimiter struct {
	classes map[string]*rateClass
}

type rateClass struct {
	name    string
	lim     *ratelimit.Limiter
	limited prometheus.Counter
}

func newRateLimiter(cfg RateLimits, reg prometheus.Registerer) (*rateLimiter, error) {
	rl := &rateLimiter{classes: map[string]*rateClass{}}
	limited := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "vouch_rate_limited_total",
		Help: "Requests refused with 429 by the per-client rate limits, by class (attest, read, decide).",
	}, []string{"class"})
	for _, c := range []struct {
		name string
		lim  RateLimit
	}{{RateClassAttest, cfg.Attest}, {RateClassRead, cfg.Read}, {RateClassDecide, cfg.Decide}} {
		if c.lim.PerSecond == 0 {
			continue
		}
		if !(c.lim.PerSecond > 0) || math.IsInf(c.lim.PerSecond, 0) || c.lim.Burst < 0 {
			return nil, fmt.Errorf("rate limit %s: %v per second, burst %d: want a positive rate (0 disables) and a burst ≥ 0", c.name, c.lim.PerSecond, c.lim.Burst)
		}
		burst := c.lim.Burst
		if burst == 0 {
			burst = max(1, int(math.Ceil(2*c.lim.PerSecond)))
		}
		lim, err := ratelimit.New(ratelimit.Options{Rate: c.lim.PerSecond, Burst: burst, MaxClients: cfg.MaxClients, Now: cfg.Now})
		if err != nil {
			return nil, fmt.Errorf("rate limit %s: %w", c.name, err)
		}
		rl.classes[c.name] = &rateClass{name: c.name, lim: lim, limited: limited.WithLabelValues(c.name)}
		// Read at scrape time: Len takes the table's lock once.
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "vouch_rate_limit_clients",
			Help:        "Clients (IPv4 addresses, IPv6 /64s) a rate-limit class tracks; at most its maximum.",
			ConstLabels: prometheus.Labels{"class": c.name},
		}, func() float64 { return float64(lim.Len()) }))
	}
	reg.MustRegister(limited)
	return rl, nil
}

// class returns the limiter of route's class; nil when the route is not
// limited.
func (rl *rateLimiter) class(route string) *rateClass {
	if rl == nil {
		return nil
	}
	return rl.classes[rateClassOf(route)]
}

// admit takes a token for the request's client, or answers 429 with
// Retry-After and a rate-limited problem, and returns false.
func (s *Server) admit(c *rateClass, w http.ResponseWriter, r *http.Request) bool {
	// RemoteAddr is the client behind a trusted proxy already (clientAddress).
	client := ratelimit.ClientKey(ratelimit.Proxies{}.ClientAddr(r.RemoteAddr, nil))
	d := c.lim.Allow(client)
	if d.Allowed {
		return true
	}
	c.limited.Inc()
	secs := d.RetryAfterSeconds()
	who := clientName(client)
	if d.Notice {
		if d.Overflow {
			s.log.Warn("rate limiter full: every tracked client is active, so new clients share one bucket and are being refused (a flood from many addresses: defend upstream)",
				"class", c.name, "clients", c.lim.Len(), "client", who)
		} else {
			s.log.Warn("client rate limited (logged once a minute per client)",
				"class", c.name, "client", who, "route", r.URL.Path, "retry_after_s", secs,
				"rate", c.lim.Rate(), "burst", c.lim.Burst())
		}
	}
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	rate := strconv.FormatFloat(c.lim.Rate(), 'g', -1, 64)
	var err error
	if d.Overflow {
		err = attest.Errorf(attest.ReasonRateLimited,
			"too many %s requests: the verifier is tracking as many clients as it can (%d, all active: a flood from many addresses), and newcomers such as %s "+
				"share one bucket of %s per second with bursts of %d; retry after %d s. The verifier's operator can raise --rate-max-clients; a flood needs an upstream defence",
			c.name, c.lim.MaxClients(), who, rate, c.lim.Burst(), secs)
	} else {
		err = attest.Errorf(attest.ReasonRateLimited,
			"too many %s requests from %s: the limit is %s per second with bursts of %d per client address (IPv4 address, IPv6 /64); retry after %d s. "+
				"If many legitimate clients share this address (NAT, a proxy), the verifier's operator can raise the limit (vouchd --rate-%s, --rate-%s-burst) "+
				"or list the proxy in --trusted-proxies",
			c.name, who, rate, c.lim.Burst(), secs, c.name, c.name)
	}
	attest.WriteProblem(w, attest.ProblemFor(http.StatusTooManyRequests, err))
	return false
}

// clientName is a client key as the problem and the log show it.
func clientName(p netip.Prefix) string {
	switch {
	case !p.IsValid():
		return "an unknown address"
	case p.Addr().Is4():
		return p.Addr().String()
	}
	return p.String()
}

// limited wraps a handler that instrument does not (the audit log's tiles)
// in its route's rate limit.
func (s *Server) limited(route string, h http.Handler) http.Handler {
	c := s.rate.class(route)
	if c == nil {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.admit(c, w, r) {
			h.ServeHTTP(w, r)
		}
	})
}
