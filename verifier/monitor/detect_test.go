package monitor

import (
	"testing"
	"time"

	"github.com/vouch-dev/vouch/attest"
)

// TestDetectors drives each rule with a short history and the signal that
// should make it fire, through detect() with the default configuration.
func TestDetectors(t *testing.T) {
	t0 := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	base := Signal{Kind: KindDecision, Agent: "a", Cohort: "img", Outcome: OutcomePermit, Action: "read",
		Resource: "doc:x", SourceIP: "10.0.0.1", DeclaredActions: []string{"read"}}
	at := func(s Signal, d time.Duration) Signal { s.Time = t0.Add(d); return s }
	tests := []struct {
		name    string
		history func(add func(Signal))
		signal  Signal
		rule    string
	}{
		{"deny ratio", func(add func(Signal)) {
			for i := range 7 {
				s := base
				s.Outcome = OutcomeDeny
				add(at(s, time.Duration(i)*time.Second))
			}
		}, func() Signal { s := base; s.Outcome = OutcomeDeny; return at(s, 11*time.Second) }(), RuleDenyRatio},
		{"new resource kind", func(add func(Signal)) {
			for i := range 60 {
				add(at(base, time.Duration(i)*time.Second))
			}
		}, func() Signal { s := base; s.Resource = "secrets:vault/key"; return at(s, time.Minute+time.Second) }(), RuleNewResourceKind},
		{"new network", func(add func(Signal)) {
			for i := range 60 {
				add(at(base, time.Duration(i)*time.Second))
			}
		}, func() Signal { s := base; s.SourceIP = "203.0.113.9"; return at(s, time.Minute+time.Second) }(), RuleNewNetwork},
		{"off hours", func(add func(Signal)) {
			for i := range 1200 { // eight days, business hours only
				add(at(base, time.Duration(i/150)*24*time.Hour+time.Duration(i%150)*time.Minute))
			}
		}, at(base, 8*24*time.Hour+15*time.Hour), RuleOffHours},
		{"other proof failures", func(add func(Signal)) {
			for i := range 4 {
				s := base
				s.Kind, s.Outcome, s.Reason = KindRequest, OutcomeRefused, attest.ReasonPoPStale
				add(at(s, time.Duration(i)*time.Second))
			}
		}, func() Signal {
			s := base
			s.Kind, s.Outcome, s.Reason = KindRequest, OutcomeRefused, attest.ReasonPoPTarget
			return at(s, 5*time.Second)
		}(), RulePoPFailures},
		{"revoked credential used", func(add func(Signal)) {
			for i := range 4 {
				s := base
				s.Kind, s.Outcome, s.Reason = KindRequest, OutcomeRefused, attest.ReasonCredentialRevoked
				add(at(s, time.Duration(i)*time.Second))
			}
		}, func() Signal {
			s := base
			s.Kind, s.Outcome, s.Reason = KindRequest, OutcomeRefused, attest.ReasonCredentialRevoked
			return at(s, 5*time.Second)
		}(), RuleRevokedUse},
		{"refused re-attestation, measurement unknown", func(add func(Signal)) {
			add(Signal{Kind: KindAttestation, Time: t0, Agent: "a", AK: []byte("m"), Outcome: OutcomeIssued, Measurement: "pcrs:1"})
		}, Signal{Kind: KindAttestation, Time: t0.Add(time.Minute), Agent: "a", AK: []byte("m"), Outcome: OutcomeRefused, Reason: attest.ReasonEventLogReplay}, RuleReattestFailure},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			a, c, mach := newAgentState("a"), newCohortState(), &good{}
			c.members["a"] = a
			tc.history(func(s Signal) {
				if f := detect(cfg, a, c, mach, &s); len(f) > 0 {
					t.Fatalf("history fired %+v", f)
				}
			})
			s := tc.signal
			got := detect(cfg, a, c, mach, &s)
			if len(got) != 1 || got[0].Rule != tc.rule {
				t.Fatalf("fired %+v, want %s", got, tc.rule)
			}
			t.Logf("%s: %s", got[0].Rule, got[0].Detail)
			// The same signal again within the cooldown scores nothing.
			s2 := s
			s2.Time = s.Time.Add(time.Second)
			if again := detect(cfg, a, c, mach, &s2); len(again) != 0 && again[0].Rule == tc.rule {
				t.Errorf("fired again within the cooldown: %+v", again)
			}
		})
	}
}
