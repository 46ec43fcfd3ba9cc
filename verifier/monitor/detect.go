package monitor

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/vouch-dev/vouch/attest"
)

// Rule names: stable, they label metrics, alerts and audit records.
const (
	RuleRate            = "rate-anomaly"
	RuleDenyRatio       = "deny-ratio"
	RuleOutOfIntent     = "out-of-intent"
	RuleNewResourceKind = "new-resource-kind"
	RuleNewNetwork      = "new-network"
	RuleOffHours        = "off-hours"
	RulePoPTheft        = "pop-theft"
	RulePoPFailures     = "pop-failures"
	RuleReattestFailure = "reattest-failure"
	RuleRevokedUse      = "revoked-use"
)

// Rules lists every rule.
var Rules = []string{RuleRate, RuleDenyRatio, RuleOutOfIntent, RuleNewResourceKind, RuleNewNetwork, RuleOffHours,
	RulePoPTheft, RulePoPFailures, RuleReattestFailure, RuleRevokedUse}

// Finding is one rule firing on one signal: part of what an alert reports.
type Finding struct {
	Rule   string    `json:"rule"`
	Score  float64   `json:"score"`
	Time   time.Time `json:"time"`
	Detail string    `json:"detail"`
	Value  float64   `json:"value,omitempty"`
	Limit  float64   `json:"limit,omitempty"`
	// Scope is the quarantine this finding asks for, when quarantine is
	// the response: "agent", "workload" (default) or "machine".
	Scope string `json:"quarantine_scope,omitempty"`
}

// detect runs every detector on one signal and returns what fired. It
// updates the agent's and cohort's learned state.
func detect(cfg *Config, a *agentState, c *cohortState, mach *good, s *Signal) []Finding {
	d := &cfg.Detectors
	var out []Finding
	fire := func(rule string, score float64, f Finding) {
		if score <= 0 || !a.mayFire(rule, s.Time, cfg.Scoring.Cooldown) {
			return
		}
		f.Rule, f.Score, f.Time = rule, score, s.Time
		out = append(out, f)
	}
	if s.Kind == KindAttestation {
		if d.ReattestFailure.Enabled {
			reattest(cfg, a, mach, s, fire)
		}
		return out
	}
	if !s.isActivity() {
		return out
	}

	// Rate against the agent's own and its cohort's baseline.
	rc := &d.Rate
	a.advanceWindow(s.Time, rc)
	a.winCount++
	if rc.Enabled && !a.winFlagged {
		if f, ok := rateAnomaly(rc, a, c, s.Time); ok {
			a.winFlagged = true
			fire(RuleRate, rc.Score, f)
		}
	}

	// Deny ratio over the last decisions.
	if dr := d.DenyRatio; dr.Enabled && (s.Kind == KindDecision || s.isDeny()) {
		denies, n := a.recordDecision(s.isDeny(), dr.Last)
		if denies >= dr.MinDenies && float64(denies) >= dr.Ratio*float64(n) {
			fire(RuleDenyRatio, dr.Score, Finding{Value: float64(denies) / float64(n), Limit: dr.Ratio,
				Detail: fmt.Sprintf("%d of the last %d decisions denied", denies, n)})
		}
	} else if dr.Enabled && s.Kind == KindRequest && s.Outcome == OutcomeAccepted {
		a.recordDecision(false, dr.Last)
	}

	// Actions outside the declared intent.
	if oi := d.OutOfIntent; oi.Enabled && s.Action != "" && s.Outcome != OutcomeRefused {
		declared := s.DeclaredActions
		if declared == nil {
			declared = cfg.declared(s.Intent)
		}
		if declared != nil && !slices.ContainsFunc(declared, func(p string) bool { return matchAction(p, s.Action) }) {
			a.intent = count(a.intent, s.Time, oi.Within)
			if len(a.intent) >= oi.Threshold {
				fire(RuleOutOfIntent, oi.Score, Finding{Value: float64(len(a.intent)), Limit: float64(oi.Threshold),
					Detail: fmt.Sprintf("%q is outside intent %q (declared %s); %d such actions within %v", s.Action, s.Intent, strings.Join(declared, ", "), len(a.intent), oi.Within)})
			}
		}
	}

	// Novelty: resource kinds and source networks.
	a.events++
	c.events++
	if s.Resource != "" {
		k := resourceKind(s.Resource)
		nc := d.NewResourceKind
		_, mine := a.kinds[k]
		_, ours := c.kinds[k]
		if nc.Enabled && !mine && !ours && (a.events > nc.WarmupEvents || c.events > 5*nc.WarmupEvents) {
			fire(RuleNewResourceKind, nc.Score, Finding{Detail: fmt.Sprintf("first access to a resource of kind %q (%s) by this agent and its cohort", k, s.Resource)})
		}
		addBounded(a.kinds, k, maxKinds)
		addBounded(c.kinds, k, maxCohortValues)
	}
	if s.SourceIP != "" {
		nc := &d.NewNetwork
		if n := network(s.SourceIP, nc); n != "" {
			_, mine := a.nets[n]
			_, ours := c.nets[n]
			if nc.Enabled && !mine && !ours && (a.events > nc.WarmupEvents || c.events > 5*nc.WarmupEvents) {
				fire(RuleNewNetwork, nc.Score, Finding{Detail: fmt.Sprintf("first request from network %s by this agent and its cohort", n)})
			}
			addBounded(a.nets, n, maxNets)
			addBounded(c.nets, n, maxCohortValues)
		}
	}

	// Off hours, learned from the cohort.
	h := s.Time.UTC().Hour()
	if c.first.IsZero() {
		c.first = s.Time
	}
	if oh := d.OffHours; oh.Enabled && s.Time.Sub(c.first) >= oh.LearnFor && c.events >= oh.MinEvents {
		if frac := float64(c.hours[h]) / float64(c.events); frac < oh.RareFraction {
			fire(RuleOffHours, oh.Score, Finding{Value: frac, Limit: oh.RareFraction,
				Detail: fmt.Sprintf("activity at %02d:00 UTC, when the cohort is active %.3f%% of the time", h, 100*frac)})
		}
	}
	c.hours[h]++

	// Refusals at relying parties: failed proofs, revoked credentials.
	if s.Kind == KindRequest && s.Outcome == OutcomeRefused {
		reason := string(s.Reason)
		pf := d.PoPFailure
		switch {
		case pf.Enabled && slices.Contains(pf.TheftReasons, reason):
			fire(RulePoPTheft, pf.TheftScore, Finding{Detail: fmt.Sprintf("a relying party refused the agent's credential with %s: someone without its key is presenting it", reason)})
		case pf.Enabled && strings.HasPrefix(reason, "pop-") && s.Reason != attest.ReasonPoPCacheFull:
			a.pop = count(a.pop, s.Time, pf.Within)
			if len(a.pop) >= pf.OtherThreshold {
				fire(RulePoPFailures, pf.OtherScore, Finding{Value: float64(len(a.pop)), Limit: float64(pf.OtherThreshold),
					Detail: fmt.Sprintf("%d failed proofs of possession within %v (last: %s)", len(a.pop), pf.Within, reason)})
			}
		case d.RevokedUse.Enabled && s.Reason == attest.ReasonCredentialRevoked:
			a.revoked = count(a.revoked, s.Time, d.RevokedUse.Within)
			if len(a.revoked) >= d.RevokedUse.Threshold {
				fire(RuleRevokedUse, d.RevokedUse.Score, Finding{Value: float64(len(a.revoked)), Limit: float64(d.RevokedUse.Threshold),
					Detail: fmt.Sprintf("a revoked credential presented %d times within %v", len(a.revoked), d.RevokedUse.Within)})
			}
		}
	}
	return out
}

// rateAnomaly judges the agent's current window against its own baseline
// (once warmed up) and its cohort's (once enough members are): anomalous
// when it exceeds every baseline available, or the absolute cap.
func rateAnomaly(rc *RateConfig, a *agentState, c *cohortState, t time.Time) (Finding, bool) {
	n := float64(a.winCount)
	if rc.BurstMax > 0 && a.winCount >= rc.BurstMax {
		return Finding{Value: n, Limit: float64(rc.BurstMax),
			Detail: fmt.Sprintf("%d requests in one %v window, at or above the cap of %d", a.winCount, rc.Window, rc.BurstMax)}, true
	}
	if a.winCount < rc.MinEvents {
		return Finding{}, false
	}
	own := a.rate.n >= rc.WarmupWindows
	cMean, cVar, cN := c.baseline(a, rc, t)
	cohort := cN >= rc.CohortMinAgents
	if !own && !cohort {
		return Finding{}, false
	}
	var lim float64
	var parts []string
	if own {
		l := limit(a.rate.mean, a.rate.variance, rc.Z)
		if n <= l || n < rc.MinRatio*a.rate.mean {
			return Finding{}, false
		}
		lim = l
		parts = append(parts, fmt.Sprintf("own baseline %.1f±%.1f", a.rate.mean, sqrt(a.rate.variance)))
	}
	if cohort {
		l := limit(cMean, cVar, rc.Z)
		if n <= l || n < rc.MinRatio*cMean {
			return Finding{}, false
		}
		lim = max(lim, l)
		parts = append(parts, fmt.Sprintf("cohort baseline %.1f±%.1f over %d agents", cMean, sqrt(cVar), cN))
	}
	return Finding{Value: n, Limit: lim,
		Detail: fmt.Sprintf("%d requests in one %v window, above %.1f (%s)", a.winCount, rc.Window, lim, strings.Join(parts, "; "))}, true
}

func sqrt(v float64) float64 { return math.Sqrt(math.Max(v, 0)) }

// measurementReason reports refusals that say the agent's measured state is
// not what it was: the platform or the workload changed, or its proof of it
// broke.
func measurementReason(r attest.Reason) bool {
	s := string(r)
	return strings.HasPrefix(s, "refs-") || strings.HasPrefix(s, "eventlog-") || strings.HasPrefix(s, "cel-") ||
		r == attest.ReasonQuoteInvalid || r == attest.ReasonAppraisalWarn
}

// reattest tracks good attestations and fires when an agent, or a machine,
// that attested well is refused for what it measured.
func reattest(cfg *Config, a *agentState, mach *good, s *Signal, fire func(string, float64, Finding)) {
	rf := cfg.Detectors.ReattestFailure
	if s.Outcome == OutcomeIssued {
		a.lastGood = &good{at: s.Time, measurement: s.Measurement, image: s.Image}
		if mach != nil {
			*mach = *a.lastGood
		}
		if s.Image != "" {
			addBounded(a.images, s.Image, maxKinds)
		}
		return
	}
	if s.Image != "" {
		addBounded(a.images, s.Image, maxKinds)
	}
	prev := a.lastGood
	if prev == nil && mach != nil && !mach.at.IsZero() {
		prev = mach // a new instance on a machine that attested well
	}
	if prev == nil || !measurementReason(s.Reason) {
		return
	}
	score := rf.FailedScore
	detail := fmt.Sprintf("re-attestation refused (%s) after a good attestation %v earlier", s.Reason, s.Time.Sub(prev.at).Round(time.Millisecond))
	if s.Measurement != "" && prev.measurement != "" && s.Measurement != prev.measurement {
		score = rf.ChangedScore
		detail = fmt.Sprintf("re-attestation refused (%s): the measurement changed since the good attestation %v earlier", s.Reason, s.Time.Sub(prev.at).Round(time.Millisecond))
		if s.Image != prev.image && s.Image != "" {
			detail += fmt.Sprintf(" (image %s → %s)", prev.image, s.Image)
		}
	}
	fire(RuleReattestFailure, score, Finding{Detail: detail, Scope: rf.QuarantineScope})
}
