package monitor

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/vouch-dev/vouch/verifier/store"
)

// fleet generates the signals of a well-behaved fleet: agents with their
// own steady Poisson request rates (some change pace for a while), actions
// inside their declared intent, a few denies, resources of their cohort's
// kinds, a fixed source address (sometimes a neighbour in the same /24),
// and a good re-attestation every minute.
type fleet struct {
	agents []benignAgent
	rng    *rand.Rand
	start  time.Time
}

type benignAgent struct {
	sub, image, ip string
	ak             []byte
	rate           float64 // requests per second
	next           time.Time
	nextAttest     time.Time
	boostUntil     time.Time
}

var (
	benignActions = []string{"read", "list", "summarize"}
	benignKinds   = map[string][]string{"A": {"doc", "folder", "report"}, "B": {"ticket", "queue"}}
)

func newFleet(seed uint64, n int, start time.Time) *fleet {
	f := &fleet{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), start: start}
	for i := range n {
		cohort := "A"
		if i%2 == 1 {
			cohort = "B"
		}
		ak := sha256.Sum256([]byte(fmt.Sprintf("machine-%d", i/2)))
		a := benignAgent{
			sub:   fmt.Sprintf("urn:agent:%d", i),
			image: "sha256:" + fmt.Sprintf("%064x", sha256.Sum256([]byte(cohort))),
			ip:    fmt.Sprintf("10.0.%d.%d", i%2, 10+i),
			ak:    ak[:],
			rate:  0.5 + 1.5*f.rng.Float64(),
		}
		a.next = start.Add(time.Duration(f.rng.ExpFloat64() / a.rate * float64(time.Second)))
		a.nextAttest = start
		f.agents = append(f.agents, a)
	}
	return f
}

// next returns the next signal in time order and whether it is a decision.
func (f *fleet) next() (Signal, bool) {
	best, attest := -1, false
	var at time.Time
	for i := range f.agents {
		a := &f.agents[i]
		if best < 0 || a.nextAttest.Before(at) {
			best, attest, at = i, true, a.nextAttest
		}
		if a.next.Before(at) {
			best, attest, at = i, false, a.next
		}
	}
	a := &f.agents[best]
	cohort := "A"
	if best%2 == 1 {
		cohort = "B"
	}
	if attest {
		a.nextAttest = at.Add(time.Minute + time.Duration(f.rng.IntN(5000))*time.Millisecond)
		return Signal{Kind: KindAttestation, Time: at, Agent: a.sub, AK: a.ak, Cohort: a.image, Image: a.image,
			Outcome: OutcomeIssued, Measurement: "pcrs:" + cohort, Intent: "support"}, false
	}
	rate := a.rate
	if at.Before(a.boostUntil) {
		rate *= 1.5
	} else if f.rng.Float64() < 0.002 {
		a.boostUntil = at.Add(time.Minute)
	}
	a.next = at.Add(time.Duration(f.rng.ExpFloat64() / rate * float64(time.Second)))
	kinds := benignKinds[cohort]
	s := Signal{
		Kind: KindDecision, Time: at, Agent: a.sub, AK: a.ak, Cohort: a.image, Outcome: OutcomePermit,
		Action:          benignActions[f.rng.IntN(len(benignActions))],
		Resource:        fmt.Sprintf("%s:tenant-%d/item-%d", kinds[f.rng.IntN(len(kinds))], f.rng.IntN(5), f.rng.IntN(1000)),
		Intent:          "support",
		DeclaredActions: benignActions,
		SourceIP:        a.ip,
		Delegation:      "del-" + a.sub,
	}
	if f.rng.Float64() < 0.03 {
		s.Outcome = OutcomeDeny
	}
	if f.rng.Float64() < 0.05 {
		s.SourceIP = fmt.Sprintf("10.0.%d.%d", best%2, 200+f.rng.IntN(50))
	}
	return s, true
}

type alertSink struct {
	mu     sync.Mutex
	alerts []Alert
	ch     chan Alert
}

func newSink() *alertSink { return &alertSink{ch: make(chan Alert, 1024)} }

func (s *alertSink) add(a Alert) {
	s.mu.Lock()
	s.alerts = append(s.alerts, a)
	s.mu.Unlock()
	select {
	case s.ch <- a:
	default:
	}
}

func (s *alertSink) all() []Alert {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Alert(nil), s.alerts...)
}

func openStore(t testing.TB) *store.Store {
	t.Helper()
	st, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "vouch.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func newTestMonitor(t testing.TB, cfg *Config, sink *alertSink, opts Options) *Monitor {
	t.Helper()
	opts.Config, opts.OnAlert = cfg, sink.add
	if opts.Store == nil {
		opts.Store = openStore(t)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	m, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// TestBenignFleetNoFalsePositives runs 10,000 decisions (plus re-attestations)
// across 20 well-behaved agents, for several seeds, and one run of 100,000
// (about an hour of signal time), through the monitor with the built-in
// configuration, and requires that not one alert is raised.
func TestBenignFleetNoFalsePositives(t *testing.T) {
	const agents = 20
	runs := []struct {
		seed      uint64
		decisions int
	}{{1, 10000}, {2, 10000}, {3, 10000}, {4, 100000}}
	for _, run := range runs {
		seed, decisions := run.seed, run.decisions
		t.Run(fmt.Sprintf("seed=%d/decisions=%d", seed, decisions), func(t *testing.T) {
			if testing.Short() && decisions > 10000 {
				t.Skip("long run")
			}
			sink := newSink()
			m := newTestMonitor(t, DefaultConfig(), sink, Options{})
			f := newFleet(seed, agents, time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC))
			ctx := context.Background()
			var last time.Time
			for n := 0; n < decisions; {
				s, decision := f.next()
				m.Observe(ctx, s)
				if decision {
					n++
				}
				last = s.Time
				if n%1000 == 0 {
					m.Sync(ctx) // the queue is bounded; let the worker keep up
				}
			}
			if err := m.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			alerts := sink.all()
			for _, a := range alerts {
				t.Errorf("false positive: %s %s score %.1f: %+v", a.Severity, a.Agent.ID, a.Score, a.Signals)
			}
			dropped := counterValue(m.metrics.dropped)
			t.Logf("benign run: %d decisions across %d agents over %v of signal time: %d alerts (false positives), %v dropped",
				decisions, agents, last.Sub(f.start).Round(time.Second), len(alerts), dropped)
			if dropped != 0 {
				t.Errorf("%v signals dropped", dropped)
			}
		})
	}
}

// TestMisbehaviourAmongBenign runs the benign fleet with one more agent of
// cohort A that bursts, then acts outside its intent, then is refused
// re-attestation with a changed measurement; every phase must be detected
// and answered, and no benign agent flagged.
func TestMisbehaviourAmongBenign(t *testing.T) {
	sink := newSink()
	st := openStore(t)
	m := newTestMonitor(t, DefaultConfig(), sink, Options{Store: st})
	ctx := context.Background()
	start := time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)
	f := newFleet(7, 20, start)
	bad := f.agents[0] // a twin of agent 0: same cohort and machine
	bad.sub = "urn:agent:rogue"
	cti := []byte("rogue-credential")
	for now := start; ; {
		s, _ := f.next()
		m.Observe(ctx, s)
		if s.Time.Sub(now) > 10*time.Minute {
			break
		}
	}
	m.Sync(ctx)
	if n := len(sink.all()); n != 0 {
		t.Fatalf("%d alerts before the rogue agent started", n)
	}
	t0 := start.Add(10 * time.Minute)
	if err := st.RecordCredential(ctx, store.Credential{ID: cti, Subject: bad.sub, Audience: "rp", AKDigest: bad.ak,
		ImageDigest: bad.image, IssuedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	m.Observe(ctx, Signal{Kind: KindAttestation, Time: t0, Agent: bad.sub, AK: bad.ak, Cohort: bad.image, Image: bad.image,
		Outcome: OutcomeIssued, Measurement: "pcrs:A"})
	decide := func(at time.Time, action string) {
		m.Observe(ctx, Signal{Kind: KindDecision, Time: at, Agent: bad.sub, AK: bad.ak, Cohort: bad.image, Outcome: OutcomePermit,
			Action: action, Resource: "doc:tenant-1/item-1", DeclaredActions: benignActions, SourceIP: bad.ip})
	}
	// Phase 1: 200 requests in two seconds.
	for i := range 200 {
		decide(t0.Add(time.Duration(i)*10*time.Millisecond), "read")
	}
	al := waitAlert(t, sink, RuleRate)
	if !al.HasAction(ActionReattest) {
		t.Errorf("burst alert %s: want require-reattestation, got %+v", al.Severity, al.Actions)
	}
	if rs, _ := st.RevocationsOf(ctx, bad.sub, nil, 10); len(rs) == 0 {
		t.Error("burst: the rogue credential was not revoked")
	}
	// Phase 2: out-of-intent actions a minute later.
	t1 := t0.Add(90 * time.Second)
	for i := range 3 {
		decide(t1.Add(time.Duration(i)*time.Second), "delete")
	}
	al = waitAlert(t, sink, RuleOutOfIntent)
	if al.Severity != SeverityCritical || !al.HasAction(ActionQuarantine) || !al.HasAction(ActionRevoke) {
		t.Errorf("out-of-intent alert: severity %s actions %+v; want critical with revoke and quarantine", al.Severity, al.Actions)
	}
	if q, _ := st.ActiveQuarantine(ctx, "someone-else", bad.ak, bad.image); q == nil {
		t.Error("the rogue workload (AK + image) is not quarantined")
	}
	// Phase 3: a new instance on the rogue's machine comes back with another image.
	m.Observe(ctx, Signal{Kind: KindAttestation, Time: t1.Add(time.Minute), Agent: "urn:agent:rogue-2", AK: bad.ak,
		Image: "sha256:" + fmt.Sprintf("%064d", 0), Outcome: OutcomeRefused, Reason: "refs-image-digest", Measurement: "pcrs:changed"})
	al = waitAlert(t, sink, RuleReattestFailure)
	if q, _ := st.ActiveQuarantine(ctx, "anyone", bad.ak, "sha256:any"); q == nil || q.Scope != store.QuarantineMachine {
		t.Errorf("after a changed measurement the machine should be quarantined, got %+v", q)
	}
	for _, a := range sink.all() {
		if a.Agent.ID != bad.sub && a.Agent.ID != "urn:agent:rogue-2" {
			t.Errorf("benign agent flagged: %+v", a)
		}
	}
}

func waitAlert(t *testing.T, sink *alertSink, rule string) Alert {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case a := <-sink.ch:
			for _, r := range a.Rules {
				if r == rule && a.Signals[len(a.Signals)-1].Rule == rule {
					return a
				}
			}
		case <-timeout:
			t.Fatalf("no %s alert; alerts: %+v", rule, sink.all())
		}
	}
}

// BenchmarkObserve is the monitor's cost per decision: enqueue and process
// (detectors, baselines), for a fleet of 20 agents.
func BenchmarkObserve(b *testing.B) {
	m := newTestMonitor(b, DefaultConfig(), newSink(), Options{})
	f := newFleet(1, 20, time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC))
	sigs := make([]Signal, 100000)
	for i := range sigs {
		sigs[i], _ = f.next()
	}
	ctx := context.Background()
	i := 0
	for b.Loop() {
		m.Observe(ctx, sigs[i%len(sigs)])
		if i++; i%8192 == 0 {
			m.Sync(ctx)
		}
	}
	m.Sync(ctx)
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}
