package monitor

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"time"

	"github.com/vouch-dev/vouch/verifier/store"
)

// DefaultPersistInterval is how often the monitor saves its learned state.
const DefaultPersistInterval = 30 * time.Second

// snapshotFormat versions the saved state. A snapshot of another format is
// not loaded (the monitor starts cold and says so); bump it when a field
// changes meaning.
const snapshotFormat = 1

// snapshot is the monitor's learned state as saved in the store: what a
// restart must not forget. A restart that forgot would start every baseline
// cold, clear every agent's risk and forget what each machine measured when
// it last attested well, so that an agent could shed suspicion, or a
// machine its changed measurement, by waiting for a deploy.
type snapshot struct {
	seq uint64 // order of taking; a write never replaces a later snapshot

	Agents   []agentSnap           `json:"agents"`
	Cohorts  map[string]cohortSnap `json:"cohorts"`
	Machines map[string]goodSnap   `json:"machines"` // by AK digest, hex
}

type agentSnap struct {
	Key      string    `json:"key"`
	Cohort   string    `json:"cohort"`
	AK       []byte    `json:"ak,omitempty"`
	LastSeen time.Time `json:"last_seen"`

	WinStart   time.Time `json:"win_start"`
	WinCount   int       `json:"win_count"`
	WinFlagged bool      `json:"win_flagged,omitempty"`
	RateMean   float64   `json:"rate_mean"`
	RateVar    float64   `json:"rate_var"`
	RateN      int       `json:"rate_n"`

	Decisions []bool `json:"decisions,omitempty"`
	DecIdx    int    `json:"dec_idx,omitempty"`
	DecN      int    `json:"dec_n,omitempty"`

	Intent  []time.Time `json:"intent,omitempty"`
	Revoked []time.Time `json:"revoked,omitempty"`
	PoP     []time.Time `json:"pop,omitempty"`

	Events int      `json:"events"`
	Kinds  []string `json:"kinds,omitempty"`
	Nets   []string `json:"nets,omitempty"`

	LastGood *goodSnap `json:"last_good,omitempty"`
	Images   []string  `json:"images,omitempty"`

	Risk      float64              `json:"risk"`
	RiskAt    time.Time            `json:"risk_at"`
	Fired     map[string]time.Time `json:"fired,omitempty"`
	Findings  []Finding            `json:"findings,omitempty"`
	Alerted   Severity             `json:"alerted,omitempty"`
	AlertedAt time.Time            `json:"alerted_at"`
}

type cohortSnap struct {
	Kinds  []string  `json:"kinds,omitempty"`
	Nets   []string  `json:"nets,omitempty"`
	Events int       `json:"events"`
	Hours  [24]int   `json:"hours"`
	First  time.Time `json:"first"`
}

type goodSnap struct {
	At          time.Time `json:"at"`
	Measurement string    `json:"measurement"`
	Image       string    `json:"image"`
}

func keys(set map[string]struct{}) []string {
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	return out
}

func snapGood(g *good) *goodSnap {
	if g == nil {
		return nil
	}
	return &goodSnap{At: g.at, Measurement: g.measurement, Image: g.image}
}

// takeSnapshot copies the learned state, deeply: the copy is encoded and
// written while the worker goes on. Only the worker calls it; it costs
// about 1 µs per agent, the encoding and the write (in the saver) eight
// times that (BenchmarkSave).
func (m *Monitor) takeSnapshot() *snapshot {
	s := &snapshot{Agents: make([]agentSnap, 0, len(m.agents)), Cohorts: make(map[string]cohortSnap, len(m.cohorts)),
		Machines: make(map[string]goodSnap, len(m.machines))}
	for _, a := range m.agents {
		s.Agents = append(s.Agents, agentSnap{
			Key: a.key, Cohort: a.cohort, AK: a.ak, LastSeen: a.lastSeen,
			WinStart: a.winStart, WinCount: a.winCount, WinFlagged: a.winFlagged,
			RateMean: a.rate.mean, RateVar: a.rate.variance, RateN: a.rate.n,
			Decisions: slices.Clone(a.decisions), DecIdx: a.decIdx, DecN: a.decN,
			Intent: slices.Clone(a.intent), Revoked: slices.Clone(a.revoked), PoP: slices.Clone(a.pop),
			Events: a.events, Kinds: keys(a.kinds), Nets: keys(a.nets),
			LastGood: snapGood(a.lastGood), Images: keys(a.images),
			Risk: a.risk, RiskAt: a.riskAt, Fired: maps.Clone(a.fired), Findings: slices.Clone(a.findings),
			Alerted: a.alerted, AlertedAt: a.alertedAt,
		})
	}
	for name, c := range m.cohorts {
		s.Cohorts[name] = cohortSnap{Kinds: keys(c.kinds), Nets: keys(c.nets), Events: c.events, Hours: c.hours, First: c.first}
	}
	for ak, g := range m.machines {
		s.Machines[hex.EncodeToString([]byte(ak))] = *snapGood(g)
	}
	m.snapSeq++
	s.seq = m.snapSeq
	return s
}

// restore replaces the learned state with s, within the bounds of cfg: at
// most max_agents agents (the most recently seen), none idle longer than
// idle_forget, every set and ring within its bound. It returns how many
// agents it kept.
func (m *Monitor) restore(s *snapshot, cfg *Config, now time.Time) (int, error) {
	m.agents, m.cohorts, m.machines = map[string]*agentState{}, map[string]*cohortState{}, map[string]*good{}
	for name, cs := range s.Cohorts {
		if len(m.cohorts) >= cfg.Scoring.MaxAgents {
			break
		}
		c := newCohortState()
		for _, k := range cs.Kinds {
			addBounded(c.kinds, k, maxCohortValues)
		}
		for _, n := range cs.Nets {
			addBounded(c.nets, n, maxCohortValues)
		}
		c.events, c.hours, c.first = max(cs.Events, 0), cs.Hours, cs.First
		m.cohorts[name] = c
	}
	for _, as := range s.Agents {
		if as.Key == "" || now.Sub(as.LastSeen) > cfg.Scoring.IdleForget {
			continue
		}
		if !finite(as.RateMean, as.RateVar, as.Risk) || as.RateN < 0 || as.WinCount < 0 || as.Events < 0 {
			return 0, fmt.Errorf("agent %.40s: counters out of range", as.Key)
		}
		a := newAgentState(as.Key)
		a.cohort, a.ak, a.lastSeen = as.Cohort, as.AK, as.LastSeen
		a.winStart, a.winCount, a.winFlagged = as.WinStart, as.WinCount, as.WinFlagged
		a.rate = ewma{mean: as.RateMean, variance: as.RateVar, n: as.RateN}
		if n := len(as.Decisions); n > 0 && n <= 1<<16 && as.DecIdx >= 0 && as.DecIdx < n && as.DecN >= 0 && as.DecN <= n {
			a.decisions, a.decIdx, a.decN = as.Decisions, as.DecIdx, as.DecN
		}
		a.intent, a.revoked, a.pop = lastN(as.Intent, maxRecent), lastN(as.Revoked, maxRecent), lastN(as.PoP, maxRecent)
		a.events = as.Events
		for _, k := range as.Kinds {
			addBounded(a.kinds, k, maxKinds)
		}
		for _, n := range as.Nets {
			addBounded(a.nets, n, maxNets)
		}
		if g := as.LastGood; g != nil {
			a.lastGood = &good{at: g.At, measurement: g.Measurement, image: g.Image}
		}
		for _, i := range as.Images {
			addBounded(a.images, i, maxKinds)
		}
		a.risk, a.riskAt = as.Risk, as.RiskAt
		for rule, t := range as.Fired {
			if len(a.fired) < len(Rules) {
				a.fired[rule] = t
			}
		}
		a.findings = lastN(as.Findings, maxFindings)
		a.alerted, a.alertedAt = as.Alerted, as.AlertedAt
		if prev := m.agents[a.key]; prev != nil && prev.lastSeen.After(a.lastSeen) {
			continue
		}
		m.agents[a.key] = a
	}
	if over := len(m.agents) - cfg.Scoring.MaxAgents; over > 0 {
		m.forget(cfg, now) // drops the idlest beyond max_agents
	}
	for _, a := range m.agents {
		c := m.cohorts[a.cohort]
		if c == nil {
			c = newCohortState()
			m.cohorts[a.cohort] = c
		}
		c.members[a.key] = a
	}
	for akHex, g := range s.Machines {
		if len(m.machines) >= cfg.Scoring.MaxAgents {
			break
		}
		ak, err := hex.DecodeString(akHex)
		if err != nil || len(ak) == 0 {
			return 0, fmt.Errorf("machine %.40q: AK digest is not hex", akHex)
		}
		m.machines[string(ak)] = &good{at: g.At, measurement: g.Measurement, image: g.Image}
	}
	m.tracked.Store(int64(len(m.agents)))
	return len(m.agents), nil
}

func finite(xs ...float64) bool {
	for _, x := range xs {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return false
		}
	}
	return true
}

func lastN[T any](xs []T, n int) []T {
	if len(xs) > n {
		return xs[len(xs)-n:]
	}
	return xs
}

// save takes a snapshot and writes it. Only the worker calls it.
func (m *Monitor) save(ctx context.Context) error {
	return m.write(ctx, m.takeSnapshot())
}

// write encodes s and stores it, unless a later snapshot was stored
// already. Any goroutine may call it.
func (m *Monitor) write(ctx context.Context, s *snapshot) error {
	m.saveMu.Lock()
	defer m.saveMu.Unlock()
	if s.seq <= m.savedSeq {
		return nil
	}
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encoding monitor state: %w", err)
	}
	start := time.Now()
	err = m.opts.Store.SaveMonitorState(ctx, store.MonitorState{Format: snapshotFormat, SavedAt: m.opts.Now(), State: b})
	m.metrics.persist.WithLabelValues(resultLabel(err)).Inc()
	if err != nil {
		return err
	}
	m.savedSeq = s.seq
	m.log.Debug("monitor: state saved", "agents", len(s.Agents), "bytes", len(b), "took", time.Since(start))
	return nil
}

// saver writes the snapshots the worker hands it, so that the worker does
// not wait for the encoding and the database.
func (m *Monitor) saver(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case s := <-m.saves:
			if err := m.write(ctx, s); err != nil && ctx.Err() == nil {
				m.log.Warn("monitor: saving learned state", "err", err)
			}
		}
	}
}

// queueSave hands a snapshot to the saver; when it is still busy with the
// previous one, this one is skipped (the next tick brings a newer one).
func (m *Monitor) queueSave() {
	select {
	case m.saves <- m.takeSnapshot():
	default:
		m.metrics.persist.WithLabelValues("skipped-busy").Inc()
	}
}

// load restores the learned state saved by an earlier run, if any. A
// snapshot that cannot be used is reported and skipped: the monitor then
// starts cold, as on first start.
func (m *Monitor) load(ctx context.Context) {
	st, err := m.opts.Store.LoadMonitorState(ctx)
	if errors.Is(err, store.ErrNotFound) {
		return
	}
	cold := func(why string, err error) {
		m.metrics.persist.WithLabelValues("load-skipped").Inc()
		m.log.Warn("monitor: saved state not used; baselines start cold and risk scores at zero", "why", why, "err", err)
	}
	if err != nil {
		cold("the database did not return it", err)
		return
	}
	if st.Format != snapshotFormat {
		cold(fmt.Sprintf("it is in format %d, this build reads %d", st.Format, snapshotFormat), nil)
		return
	}
	var s snapshot
	if err := json.Unmarshal(st.State, &s); err != nil {
		cold("it does not decode", err)
		return
	}
	n, err := m.restore(&s, m.cfg.Load(), m.opts.Now())
	if err != nil {
		m.agents, m.cohorts, m.machines = map[string]*agentState{}, map[string]*cohortState{}, map[string]*good{}
		m.tracked.Store(0)
		cold("it holds values out of range", err)
		return
	}
	m.metrics.persist.WithLabelValues("loaded").Inc()
	m.log.Info("monitor: learned state restored", "agents", n, "machines", len(m.machines), "saved_at", st.SavedAt)
}

func resultLabel(err error) string {
	if err != nil {
		return "error"
	}
	return "saved"
}
