// Package monitor is the verifier's continuous monitoring: every attestation
// and authorization decision, and every request a relying party reports,
// feeds a per-agent behaviour model (request rate against a learned EWMA
// baseline of the agent and of its cohort, deny ratio, actions outside the
// declared intent, new resource kinds and source networks, off-hours
// activity, failed proofs of possession, re-attestation failures). Rules
// that fire add to the agent's decaying risk score; crossing a severity
// raises an alert, and the configured response for that severity runs:
// revoke the agent's credentials (the revocation feed tells relying
// parties), quarantine it (no new credentials until an operator releases
// it), block its delegation, and deliver the alert to a signed webhook, the
// log and the audit log.
//
// Observe never blocks its caller: signals wait in a bounded queue for one
// worker, and a full queue drops them, counted in
// vouch_monitor_signals_dropped_total.
package monitor

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vouch-dev/vouch/verifier/audit"
	"github.com/vouch-dev/vouch/verifier/store"
)

// DefaultQueueSize is the default bound of the signal queue.
const DefaultQueueSize = 16384

// DelegationBlocker blocks a delegation so that no further decision permits
// under it. The authorization component (delegations) implements it.
type DelegationBlocker interface {
	BlockDelegation(ctx context.Context, delegation, reason string) error
}

// Options configure a Monitor.
type Options struct {
	// Store keeps revocations, quarantines, alerts and the webhook outbox.
	// Required.
	Store *store.Store
	// Config is the detection and response configuration; DefaultConfig()
	// when nil. Replace it at run time with SetConfig.
	Config *Config
	// Audit receives alert, revocation, quarantine and release records; nil
	// records nothing (until the audit log is wired).
	Audit audit.Log
	// Build names the verifier build in audit records.
	Build string
	// Webhook delivers alerts; nil means no webhook.
	Webhook *WebhookOptions
	// Delegations blocks delegations; nil makes block-delegation a no-op
	// reported as skipped.
	Delegations DelegationBlocker
	// OnRevocation is called after revocations are stored, to wake the
	// revocation feed.
	OnRevocation func()
	// OnAlert is called after an alert's response ran (tests, the demo).
	OnAlert func(Alert)
	// QueueSize bounds the signals waiting for the worker. Default
	// DefaultQueueSize.
	QueueSize int
	// PersistInterval is how often the learned state (baselines, novelty,
	// risk, machines' last good measurements) is saved to Store; it is
	// also saved on Close and restored by New. Default
	// DefaultPersistInterval; negative never saves nor restores.
	PersistInterval time.Duration
	// Logger; slog.Default() when nil.
	Logger *slog.Logger
	// Registry receives the metrics; none when nil.
	Registry prometheus.Registerer
	// Now returns the current time; time.Now when nil.
	Now func() time.Time
}

// Monitor watches agents' behaviour and responds to anomalies.
type Monitor struct {
	opts    Options
	log     *slog.Logger
	cfg     atomic.Pointer[Config]
	queue   chan item
	metrics *metrics
	webhook *webhook
	tracked atomic.Int64

	// owned by the worker
	agents   map[string]*agentState
	cohorts  map[string]*cohortState
	machines map[string]*good
	seen     int
	snapSeq  uint64

	// saving the learned state (persist.go)
	saves    chan *snapshot
	saveMu   sync.Mutex
	savedSeq uint64

	stop context.CancelFunc
	wg   sync.WaitGroup
}

type item struct {
	sig     Signal
	at      time.Time
	barrier chan struct{}
}

// New starts a monitor; Close stops it.
func New(opts Options) (*Monitor, error) {
	if opts.Store == nil {
		return nil, errors.New("monitor: Store is required")
	}
	if opts.Config == nil {
		opts.Config = DefaultConfig()
	} else if err := opts.Config.Validate(); err != nil {
		return nil, err
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = DefaultQueueSize
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.PersistInterval == 0 {
		opts.PersistInterval = DefaultPersistInterval
	}
	reg := opts.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := &Monitor{
		opts: opts, log: opts.Logger, queue: make(chan item, opts.QueueSize),
		agents: map[string]*agentState{}, cohorts: map[string]*cohortState{}, machines: map[string]*good{},
		saves: make(chan *snapshot, 1),
	}
	m.cfg.Store(opts.Config)
	m.metrics = newMetrics(reg, func() float64 { return float64(len(m.queue)) }, func() float64 { return float64(m.tracked.Load()) })
	if opts.PersistInterval > 0 {
		lctx, lcancel := context.WithTimeout(context.Background(), 30*time.Second)
		m.load(lctx)
		lcancel()
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.stop = cancel
	if opts.Webhook != nil {
		wh, err := newWebhook(*opts.Webhook, opts.Store, m.metrics, opts.Logger, opts.Now)
		if err != nil {
			cancel()
			return nil, err
		}
		m.webhook = wh
		m.wg.Add(1)
		go func() { defer m.wg.Done(); wh.run(ctx) }()
	}
	m.wg.Add(3)
	go func() { defer m.wg.Done(); m.run(ctx) }()
	go func() { defer m.wg.Done(); m.saver(ctx) }()
	go func() { defer m.wg.Done(); m.auditReleases(ctx) }()
	return m, nil
}

// Close stops the monitor's goroutines and saves its learned state; signals
// still queued are dropped.
func (m *Monitor) Close() {
	m.stop()
	m.wg.Wait()
}

// Config returns the configuration in force.
func (m *Monitor) Config() *Config { return m.cfg.Load() }

// SetConfig replaces the configuration; learned baselines are kept.
func (m *Monitor) SetConfig(c *Config) error {
	if err := c.Validate(); err != nil {
		m.metrics.reloads.WithLabelValues("error").Inc()
		return err
	}
	m.cfg.Store(c)
	m.metrics.reloads.WithLabelValues("ok").Inc()
	return nil
}

// ConfigRejected counts a configuration that failed to load (the one in
// force stays).
func (m *Monitor) ConfigRejected() { m.metrics.reloads.WithLabelValues("error").Inc() }

// Observe hands a signal to the monitor. It never blocks: when the queue is
// full the signal is dropped and counted.
func (m *Monitor) Observe(_ context.Context, s Signal) {
	now := m.opts.Now()
	if s.Time.IsZero() {
		s.Time = now
	}
	select {
	case m.queue <- item{sig: s, at: time.Now()}:
	default:
		m.metrics.dropped.Inc()
	}
}

// Sync waits until every signal observed before the call was processed.
func (m *Monitor) Sync(ctx context.Context) error {
	done := make(chan struct{})
	select {
	case m.queue <- item{barrier: done}:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *Monitor) run(ctx context.Context) {
	var persist <-chan time.Time
	if m.opts.PersistInterval > 0 {
		t := time.NewTicker(m.opts.PersistInterval)
		defer t.Stop()
		persist = t.C
	}
	for {
		select {
		case <-ctx.Done():
			if m.opts.PersistInterval > 0 {
				sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				if err := m.save(sctx); err != nil {
					m.log.Error("monitor: learned state not saved at shutdown; the next start is cold", "err", err)
				}
				cancel()
			}
			return
		case <-persist:
			m.queueSave()
		case it := <-m.queue:
			if it.barrier != nil {
				close(it.barrier)
				continue
			}
			m.process(ctx, it)
		}
	}
}

// process runs the detectors on one signal and responds to what they find.
func (m *Monitor) process(ctx context.Context, it item) {
	s := &it.sig
	cfg := m.cfg.Load()
	m.metrics.signals.WithLabelValues(string(s.Kind)).Inc()
	key := s.key()
	if key == "" {
		return
	}
	a := m.agent(key, s)
	if s.Kind == KindAttestation && s.Agent != "" && len(s.AK) > 0 {
		seen := store.AgentSeen{Subject: s.Agent, AKDigest: s.AK, ImageDigest: s.Image, LastAttested: s.Time,
			LastOutcome: s.Outcome, LastReason: string(s.Reason)}
		if err := m.opts.Store.RecordAgentSeen(ctx, seen); err != nil {
			m.log.Warn("monitor: recording agent", "err", err)
		}
	}
	var mach *good
	if len(s.AK) > 0 {
		k := string(s.AK)
		if mach = m.machines[k]; mach == nil && len(m.machines) < cfg.Scoring.MaxAgents {
			mach = &good{}
			m.machines[k] = mach
		}
	}
	findings := detect(cfg, a, m.cohorts[a.cohort], mach, s)
	if m.seen++; m.seen%4096 == 0 {
		m.forget(cfg, s.Time)
	}
	if len(findings) == 0 {
		return
	}
	for _, f := range findings {
		m.metrics.findings.WithLabelValues(f.Rule).Inc()
		a.addRisk(f.Score, s.Time, cfg.Scoring.HalfLife)
		a.findings = append(a.findings, f)
	}
	// Keep the findings that still weigh in the score.
	keep := a.findings[:0]
	for _, f := range a.findings {
		if s.Time.Sub(f.Time) < 4*cfg.Scoring.HalfLife {
			keep = append(keep, f)
		}
	}
	if len(keep) > maxFindings {
		keep = keep[len(keep)-maxFindings:]
	}
	a.findings = keep
	sev := cfg.severityOf(a.risk)
	if sev == "" || (sev.rank() <= a.alerted.rank() && s.Time.Sub(a.alertedAt) < cfg.Scoring.Cooldown) {
		return
	}
	a.alerted, a.alertedAt = sev, s.Time
	alert := m.newAlert(a, s, sev)
	m.respond(ctx, cfg, a, s, &alert)
	m.metrics.response.Observe(time.Since(it.at).Seconds())
	if m.opts.OnAlert != nil {
		m.opts.OnAlert(alert)
	}
}

// agent returns the state of key, creating it, and keeps its cohort and
// machine current.
func (m *Monitor) agent(key string, s *Signal) *agentState {
	a := m.agents[key]
	if a == nil {
		a = newAgentState(key)
		m.agents[key] = a
		m.tracked.Store(int64(len(m.agents)))
	}
	if s.Time.After(a.lastSeen) {
		a.lastSeen = s.Time
	}
	if len(s.AK) > 0 {
		a.ak = s.AK
	}
	if c := m.cohorts[a.cohort]; c == nil || (s.Cohort != "" && s.Cohort != a.cohort) {
		if c != nil {
			delete(c.members, key)
		}
		if s.Cohort != "" {
			a.cohort = s.Cohort
		}
		nc := m.cohorts[a.cohort]
		if nc == nil {
			nc = newCohortState()
			m.cohorts[a.cohort] = nc
		}
		nc.members[key] = a
	}
	return a
}

// forget drops agents idle longer than idle_forget, and the idlest beyond
// max_agents.
func (m *Monitor) forget(cfg *Config, now time.Time) {
	drop := func(a *agentState) {
		delete(m.agents, a.key)
		if c := m.cohorts[a.cohort]; c != nil {
			delete(c.members, a.key)
			if len(c.members) == 0 && now.Sub(a.lastSeen) > cfg.Scoring.IdleForget {
				delete(m.cohorts, a.cohort)
			}
		}
	}
	for _, a := range m.agents {
		if now.Sub(a.lastSeen) > cfg.Scoring.IdleForget {
			drop(a)
		}
	}
	if over := len(m.agents) - cfg.Scoring.MaxAgents; over > 0 {
		list := make([]*agentState, 0, len(m.agents))
		for _, a := range m.agents {
			list = append(list, a)
		}
		sort.Slice(list, func(i, j int) bool { return list[i].lastSeen.Before(list[j].lastSeen) })
		for _, a := range list[:over] {
			drop(a)
		}
	}
	m.tracked.Store(int64(len(m.agents)))
}

func newAlertID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// auditReleases writes quarantine releases (made with `vouch agents
// release`, which has no audit log) to the audit log and counts them.
func (m *Monitor) auditReleases(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rels, err := m.opts.Store.UnauditedReleases(ctx, 100)
		if err != nil {
			if ctx.Err() == nil {
				m.log.Warn("monitor: reading quarantine releases", "err", err)
			}
			continue
		}
		for _, q := range rels {
			rec := ReleaseRecord(&q, m.opts.Build)
			if !m.audit(ctx, rec) {
				break // retry later; the record must not be lost
			}
			if err := m.opts.Store.MarkReleaseAudited(ctx, q.ID); err != nil {
				m.log.Warn("monitor: marking release audited", "err", err)
				break
			}
			m.metrics.releases.Inc()
			m.log.Info("quarantine released", "id", q.ID, "scope", q.Scope, "agent", q.Subject,
				"ak", hexShort(q.AKDigest), "image", q.ImageDigest, "by", q.ReleasedBy, "note", q.ReleaseNote)
		}
	}
}
