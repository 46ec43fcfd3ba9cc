package monitor

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"reflect"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/verifier/store"
)

// runFleet feeds 10 minutes of the benign fleet to m and returns the time
// of the last signal.
func runFleet(t *testing.T, m *Monitor, start time.Time) (*fleet, time.Time) {
	t.Helper()
	ctx := context.Background()
	f := newFleet(7, 20, start)
	var last time.Time
	for n := 0; ; n++ {
		s, _ := f.next()
		m.Observe(ctx, s)
		last = s.Time
		if s.Time.Sub(start) > 10*time.Minute {
			break
		}
		if n%1000 == 0 {
			m.Sync(ctx)
		}
	}
	if err := m.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	return f, last
}

// A restart keeps what the monitor learned. The decisive case: a machine
// that attested well before the restart comes back after it with a changed
// measurement. With the state restored that is a critical re-attestation
// failure and the machine is quarantined; a monitor that forgot (cold
// start) has nothing to compare with and stays silent.
func TestLearnedStateSurvivesRestart(t *testing.T) {
	for _, tc := range []struct {
		name      string
		persist   time.Duration
		wantAlert bool
	}{
		{"restored", time.Hour, true},
		{"cold start (persistence off)", -1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			st := openStore(t)
			start := time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)
			var clock time.Time
			now := func() time.Time { return clock }
			clock = start
			m1, err := New(Options{Store: st, PersistInterval: tc.persist, Now: now, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			f, last := runFleet(t, m1, start)
			m1.Close() // saves
			before := m1.takeSnapshot()

			clock = last.Add(5 * time.Minute) // the restart took five minutes
			sink := newSink()
			m2 := newTestMonitor(t, DefaultConfig(), sink, Options{Store: st, PersistInterval: tc.persist, Now: now})
			if tc.persist > 0 {
				after := m2.takeSnapshot()
				if len(after.Agents) != len(before.Agents) || len(after.Agents) != 20 {
					t.Fatalf("restored %d agents, saved %d", len(after.Agents), len(before.Agents))
				}
				byKey := map[string]agentSnap{}
				for _, a := range before.Agents {
					byKey[a.Key] = a
				}
				for _, a := range after.Agents {
					b := byKey[a.Key]
					if a.RateMean != b.RateMean || a.RateVar != b.RateVar || a.RateN != b.RateN || a.Risk != b.Risk ||
						!reflect.DeepEqual(a.LastGood, b.LastGood) || !sameSet(a.Kinds, b.Kinds) || !sameSet(a.Nets, b.Nets) || a.Events != b.Events {
						t.Errorf("agent %s restored as %+v, saved as %+v", a.Key, a, b)
					}
				}
				if !reflect.DeepEqual(before.Machines, after.Machines) || len(after.Machines) != 10 {
					t.Errorf("machines restored as %v, saved as %v", after.Machines, before.Machines)
				}
				if got := counterValue(m2.metrics.persist.WithLabelValues("loaded")); got != 1 {
					t.Errorf("vouch_monitor_state_total{outcome=loaded} = %v", got)
				}
			}

			// Machine 0 comes back from the restart running something else.
			mach := f.agents[0]
			m2.Observe(ctx, Signal{Kind: KindAttestation, Time: clock, Agent: "urn:agent:after-restart", AK: mach.ak,
				Image: "sha256:" + fmt.Sprintf("%064d", 0), Outcome: OutcomeRefused, Reason: "refs-image-digest", Measurement: "pcrs:changed"})
			if err := m2.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			alerts := sink.all()
			if !tc.wantAlert {
				if len(alerts) != 0 {
					t.Fatalf("a cold monitor raised %+v", alerts)
				}
				return
			}
			if len(alerts) != 1 || alerts[0].Rules[len(alerts[0].Rules)-1] != RuleReattestFailure || alerts[0].Severity != SeverityCritical {
				t.Fatalf("alerts after the restart: %+v; want one critical %s", alerts, RuleReattestFailure)
			}
			if q, _ := st.ActiveQuarantine(ctx, "anyone", mach.ak, "sha256:any"); q == nil || q.Scope != store.QuarantineMachine {
				t.Errorf("the machine is not quarantined after its changed measurement: %+v", q)
			}
		})
	}
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	set := map[string]bool{}
	for _, x := range a {
		set[x] = true
	}
	for _, x := range b {
		if !set[x] {
			return false
		}
	}
	return true
}

// A saved state that cannot be used is skipped, said so, and the monitor
// starts cold; one that is larger than the configuration allows is cut to
// its bounds.
func TestSavedStateLoad(t *testing.T) {
	now := time.Date(2026, 3, 2, 12, 0, 0, 0, time.UTC)
	agent := func(i int, seen time.Time) agentSnap {
		return agentSnap{Key: fmt.Sprintf("urn:agent:%d", i), Cohort: "img", LastSeen: seen, RateMean: 3, RateVar: 1, RateN: 10,
			Kinds: []string{"doc"}, Risk: 1, RiskAt: seen}
	}
	encode := func(s snapshot) []byte {
		b, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	many := snapshot{Machines: map[string]goodSnap{"6d31": {At: now, Measurement: "pcrs:1"}}}
	for i := range 12 {
		many.Agents = append(many.Agents, agent(i, now.Add(-time.Duration(i)*time.Minute)))
	}
	many.Agents = append(many.Agents, agent(99, now.Add(-48*time.Hour))) // idle beyond idle_forget
	for _, tc := range []struct {
		name       string
		format     int
		state      []byte
		wantAgents int
		outcome    string
	}{
		{"bounded to max_agents, idle dropped", snapshotFormat, encode(many), 10, "loaded"},
		{"other format", snapshotFormat + 1, encode(many), 0, "load-skipped"},
		{"not JSON", snapshotFormat, []byte("\x00\x01garbage"), 0, "load-skipped"},
		{"truncated", snapshotFormat, encode(many)[:100], 0, "load-skipped"},
		{"negative counter", snapshotFormat, encode(snapshot{Agents: []agentSnap{func() agentSnap { a := agent(1, now); a.RateN = -1; return a }()}}), 0, "load-skipped"},
		{"machine key not hex", snapshotFormat, encode(snapshot{Machines: map[string]goodSnap{"zz": {}}}), 0, "load-skipped"},
		{"empty", snapshotFormat, encode(snapshot{}), 0, "loaded"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := openStore(t)
			if err := st.SaveMonitorState(context.Background(), store.MonitorState{Format: tc.format, SavedAt: now, State: tc.state}); err != nil {
				t.Fatal(err)
			}
			cfg := DefaultConfig()
			cfg.Scoring.MaxAgents = 10
			m := newTestMonitor(t, cfg, newSink(), Options{Store: st, Now: func() time.Time { return now }})
			if got := len(m.takeSnapshot().Agents); got != tc.wantAgents {
				t.Errorf("restored %d agents, want %d", got, tc.wantAgents)
			}
			if got := counterValue(m.metrics.persist.WithLabelValues(tc.outcome)); got != 1 {
				t.Errorf("vouch_monitor_state_total{outcome=%s} = %v, want 1", tc.outcome, got)
			}
			if tc.wantAgents == 10 {
				for _, a := range m.agents {
					if a.key == "urn:agent:99" || a.key == "urn:agent:10" || a.key == "urn:agent:11" {
						t.Errorf("kept %s, one of the idlest", a.key)
					}
				}
			}
		})
	}
}

// BenchmarkSave is the cost of saving the learned state every
// PersistInterval: "worker" is what the monitor's worker pays (the deep copy;
// signals queue meanwhile), "write" what the saver goroutine pays beside it
// (JSON encoding and the SQLite write), for fleets of 1,000 and 10,000
// agents with full novelty sets.
func BenchmarkSave(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		m := newTestMonitor(b, DefaultConfig(), newSink(), Options{PersistInterval: time.Hour})
		f := newFleet(1, n, time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC))
		ctx := context.Background()
		for i := range 20 * n {
			s, _ := f.next()
			m.Observe(ctx, s)
			if i%8192 == 0 {
				m.Sync(ctx)
			}
		}
		m.Sync(ctx)
		m.Close() // the worker is gone; the state is the benchmark's
		b.Run(fmt.Sprintf("agents=%d/worker", n), func(b *testing.B) {
			for b.Loop() {
				m.takeSnapshot()
			}
		})
		b.Run(fmt.Sprintf("agents=%d/write", n), func(b *testing.B) {
			for b.Loop() {
				if err := m.write(ctx, m.takeSnapshot()); err != nil {
					b.Fatal(err)
				}
			}
			st, _ := m.opts.Store.LoadMonitorState(ctx)
			b.ReportMetric(float64(len(st.State)), "bytes")
		})
	}
}
