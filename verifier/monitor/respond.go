package monitor

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/verifier/audit"
	"github.com/vouch-dev/vouch/verifier/store"
)

// Alert is what the monitor raises: the agent, its risk score and severity,
// the findings (signals) that produced it and what was done about it. It is
// the webhook's JSON body.
type Alert struct {
	ID       string         `json:"id"`
	Time     time.Time      `json:"time"`
	Agent    AgentRef       `json:"agent"`
	Severity Severity       `json:"severity"`
	Score    float64        `json:"score"`
	Rules    []string       `json:"rules"`
	Signals  []Finding      `json:"signals"`
	Actions  []ActionResult `json:"actions"`
	Verifier string         `json:"verifier,omitempty"`
}

// AgentRef names the agent an alert is about.
type AgentRef struct {
	ID         string   `json:"id,omitempty"` // credential sub
	AK         string   `json:"ak,omitempty"` // hex SHA-256 of the AK: the machine
	Image      string   `json:"image,omitempty"`
	Images     []string `json:"images,omitempty"` // every image it attested with
	Delegation string   `json:"delegation,omitempty"`
}

// ActionResult is one response action and how it went.
type ActionResult struct {
	Action  Action `json:"action"`
	Outcome string `json:"outcome"` // done, skipped, failed
	Detail  string `json:"detail,omitempty"`
}

// HasAction reports whether the alert's response ran action successfully.
func (a *Alert) HasAction(action Action) bool {
	return slices.ContainsFunc(a.Actions, func(r ActionResult) bool { return r.Action == action && r.Outcome == "done" })
}

func (m *Monitor) newAlert(a *agentState, s *Signal, sev Severity) Alert {
	al := Alert{ID: newAlertID(), Time: s.Time.UTC(), Severity: sev, Score: round2(a.risk),
		Signals: slices.Clone(a.findings), Verifier: m.opts.Build}
	if !strings.HasPrefix(a.key, "ak:") {
		al.Agent.ID = a.key
	}
	if len(a.ak) > 0 {
		al.Agent.AK = hex.EncodeToString(a.ak)
	}
	al.Agent.Image = a.cohort
	for img := range a.images {
		al.Agent.Images = append(al.Agent.Images, img)
	}
	slices.Sort(al.Agent.Images)
	al.Agent.Delegation = s.Delegation
	for _, f := range al.Signals {
		if !slices.Contains(al.Rules, f.Rule) {
			al.Rules = append(al.Rules, f.Rule)
		}
	}
	return al
}

func round2(v float64) float64 { return float64(int64(v*100+0.5)) / 100 }

// respond runs the configured actions of the alert's severity, then stores
// the alert, audits it and queues the webhook.
func (m *Monitor) respond(ctx context.Context, cfg *Config, a *agentState, s *Signal, al *Alert) {
	acts := cfg.Response[al.Severity]
	m.metrics.alerts.WithLabelValues(string(al.Severity)).Inc()
	reason := string(al.Severity) + " alert: " + strings.Join(al.Rules, ", ")
	now := m.opts.Now()
	result := func(act Action, outcome, format string, args ...any) {
		al.Actions = append(al.Actions, ActionResult{Action: act, Outcome: outcome, Detail: fmt.Sprintf(format, args...)})
		m.metrics.actions.WithLabelValues(string(act), outcome).Inc()
	}
	tmpl := store.Revocation{Reason: reason, RevokedBy: "monitor", AlertID: al.ID, RevokedAt: now}
	var revoked []store.Revocation
	revoke := func(act Action, agent bool) {
		var rs []store.Revocation
		var err error
		if al.Agent.ID != "" {
			rs, err = m.opts.Store.RevokeCredentialsOf(ctx, al.Agent.ID, agent, tmpl)
		} else if len(a.ak) > 0 {
			rs, err = m.opts.Store.RevokeCredentialsOfAK(ctx, a.ak, tmpl)
		}
		revoked = append(revoked, rs...)
		if err != nil {
			result(act, "failed", "%v", err)
			return
		}
		result(act, "done", "%d revocation entries", len(rs))
	}
	quarantined := 0
	for _, act := range acts {
		switch act {
		case ActionReattest:
			if !slices.Contains(acts, ActionRevoke) {
				revoke(act, false)
			}
		case ActionRevoke:
			revoke(act, al.Agent.ID != "")
		case ActionQuarantine:
			n, rs, err := m.quarantine(ctx, a, al, tmpl, now)
			quarantined += n
			revoked = append(revoked, rs...)
			if err != nil {
				result(act, "failed", "%v", err)
			} else {
				result(act, "done", "%d quarantines in force", n)
			}
		case ActionBlockDelegation:
			switch {
			case m.opts.Delegations == nil:
				result(act, "skipped", "no delegation store is configured")
			case s.Delegation == "":
				result(act, "skipped", "the agent used no delegation")
			default:
				if err := m.opts.Delegations.BlockDelegation(ctx, s.Delegation, reason); err != nil {
					result(act, "failed", "%v", err)
				} else {
					result(act, "done", "delegation %s blocked", s.Delegation)
				}
			}
		}
	}
	if len(revoked) > 0 {
		// Revocations restrict: they go to relying parties first, and are
		// recorded after (the feed is fed from the database, where they
		// already are).
		if m.opts.OnRevocation != nil {
			m.opts.OnRevocation()
		}
		for _, r := range revoked {
			m.metrics.revocations.WithLabelValues(r.Kind).Inc()
			m.audit(ctx, RevocationRecord(&r, m.opts.Build))
		}
	}
	if slices.Contains(acts, ActionLog) {
		m.log.Warn("monitor alert", "alert", al.ID, "severity", al.Severity, "score", al.Score, "rules", strings.Join(al.Rules, ","),
			"agent", al.Agent.ID, "ak", hexShort(a.ak), "image", al.Agent.Image, "revoked", len(revoked), "quarantined", quarantined,
			"signal", al.Signals[len(al.Signals)-1].Detail)
		al.Actions = append(al.Actions, ActionResult{Action: ActionLog, Outcome: "done"})
	}
	webhook := slices.Contains(acts, ActionWebhook)
	if webhook && m.webhook == nil {
		result(ActionWebhook, "skipped", "no webhook is configured")
	} else if webhook {
		al.Actions = append(al.Actions, ActionResult{Action: ActionWebhook, Outcome: "queued"})
	}
	body, err := json.Marshal(al)
	if err != nil {
		m.log.Error("monitor: encoding alert", "err", err)
		return
	}
	if err := m.opts.Store.RecordAlert(ctx, store.Alert{ID: al.ID, At: al.Time, Subject: al.Agent.ID, AKDigest: a.ak,
		ImageDigest: al.Agent.Image, Severity: string(al.Severity), Score: al.Score, Rules: strings.Join(al.Rules, " "), Body: body}); err != nil {
		m.log.Error("monitor: storing alert", "alert", al.ID, "err", err)
	}
	m.audit(ctx, AlertRecord(al, a.ak, m.opts.Build))
	if webhook && m.webhook != nil {
		m.webhook.enqueue(ctx, al.ID, body)
	}
}

// quarantine holds the agent: its instance, and its workload (AK + every
// image it attested with) or, when a finding asks for it, its whole
// machine. A machine quarantine also revokes every live credential of the
// machine.
func (m *Monitor) quarantine(ctx context.Context, a *agentState, al *Alert, tmpl store.Revocation, now time.Time) (int, []store.Revocation, error) {
	scope := store.QuarantineWorkload
	for _, f := range al.Signals {
		if f.Scope == store.QuarantineMachine {
			scope = store.QuarantineMachine
		}
	}
	base := store.Quarantine{Reason: tmpl.Reason, QuarantinedBy: "monitor", AlertID: al.ID, QuarantinedAt: now}
	var qs []store.Quarantine
	if al.Agent.ID != "" {
		q := base
		q.Scope, q.Subject, q.AKDigest = store.QuarantineAgent, al.Agent.ID, a.ak // the AK is informational here
		qs = append(qs, q)
	}
	if len(a.ak) > 0 {
		if scope == store.QuarantineMachine {
			q := base
			q.Scope, q.AKDigest = store.QuarantineMachine, a.ak
			qs = append(qs, q)
		} else {
			images := al.Agent.Images
			if al.Agent.Image != "" && !slices.Contains(images, al.Agent.Image) {
				images = append(images, al.Agent.Image)
			}
			for _, img := range images {
				q := base
				q.Scope, q.AKDigest, q.ImageDigest = store.QuarantineWorkload, a.ak, img
				qs = append(qs, q)
			}
		}
	}
	if len(qs) == 0 {
		return 0, nil, fmt.Errorf("neither the agent nor its machine is known")
	}
	n := 0
	for _, q := range qs {
		id, fresh, err := m.opts.Store.Quarantine(ctx, q)
		if err != nil {
			return n, nil, err
		}
		n++
		if fresh {
			q.ID = id
			m.metrics.quarantines.WithLabelValues(q.Scope).Inc()
			m.audit(ctx, QuarantineRecord(&q, m.opts.Build))
		}
	}
	var revoked []store.Revocation
	if scope == store.QuarantineMachine {
		rs, err := m.opts.Store.RevokeCredentialsOfAK(ctx, a.ak, tmpl)
		if err != nil {
			return n, nil, err
		}
		revoked = rs
	}
	return n, revoked, nil
}

// audit appends a record, when an audit log is configured, and reports
// whether it is recorded (or there is no log).
func (m *Monitor) audit(ctx context.Context, r *audit.Record) bool {
	if m.opts.Audit == nil {
		return true
	}
	// Records at alert rate are enqueued, not awaited, when the log can
	// (audit.Enqueuer): the worker must keep up with the signals.
	var err error
	if q, ok := m.opts.Audit.(audit.Enqueuer); ok {
		err = q.Enqueue(ctx, r)
	} else {
		_, err = m.opts.Audit.Append(ctx, r)
	}
	if err != nil {
		m.metrics.auditErrors.Inc()
		m.log.Error("monitor: audit log refused a record", "kind", r.Kind, "err", err)
		return false
	}
	return true
}

// AlertRecord is the audit record of an alert.
func AlertRecord(al *Alert, ak []byte, build string) *audit.Record {
	acts := make([]string, 0, len(al.Actions))
	for _, a := range al.Actions {
		acts = append(acts, string(a.Action)+"="+a.Outcome)
	}
	return &audit.Record{
		Kind: audit.KindAlert, TimeMillis: al.Time.UnixMilli(), Outcome: string(al.Severity), Build: build,
		Agent:      &audit.Agent{ID: al.Agent.ID, AKDigest: ak, ImageDigest: al.Agent.Image},
		Delegation: al.Agent.Delegation,
		Detail: map[string]string{"alert": al.ID, "score": strconv.FormatFloat(al.Score, 'f', 2, 64),
			"rules": strings.Join(al.Rules, " "), "actions": strings.Join(acts, " ")},
	}
}

// RevocationRecord is the audit record of one revocation feed entry.
func RevocationRecord(r *store.Revocation, build string) *audit.Record {
	rec := &audit.Record{
		Kind: audit.KindRevocation, TimeMillis: r.RevokedAt.UnixMilli(), Outcome: "revoked", Build: build,
		Reasons: []attest.Reason{attest.ReasonCredentialRevoked},
		Agent:   &audit.Agent{ID: r.Subject, AKDigest: r.AKDigest, ImageDigest: r.ImageDigest},
		Detail:  map[string]string{"kind": r.Kind, "feed_id": strconv.FormatInt(r.ID, 10), "reason": r.Reason, "by": r.RevokedBy},
	}
	if r.AlertID != "" {
		rec.Detail["alert"] = r.AlertID
	}
	if len(r.CTI) > 0 {
		rec.Credential = &audit.Credential{ID: r.CTI, Expiry: r.ExpiresAt.Unix()}
	}
	return rec
}

// QuarantineRecord is the audit record of a quarantine put in force.
func QuarantineRecord(q *store.Quarantine, build string) *audit.Record {
	return &audit.Record{
		Kind: audit.KindQuarantine, TimeMillis: q.QuarantinedAt.UnixMilli(), Outcome: "quarantined", Build: build,
		Reasons: []attest.Reason{attest.ReasonAgentQuarantined},
		Agent:   &audit.Agent{ID: q.Subject, AKDigest: q.AKDigest, ImageDigest: q.ImageDigest},
		Detail: map[string]string{"scope": q.Scope, "quarantine_id": strconv.FormatInt(q.ID, 10), "reason": q.Reason,
			"by": q.QuarantinedBy, "alert": q.AlertID},
	}
}

// ReleaseRecord is the audit record of a quarantine released.
func ReleaseRecord(q *store.Quarantine, build string) *audit.Record {
	at := time.Now()
	if q.ReleasedAt != nil {
		at = *q.ReleasedAt
	}
	return &audit.Record{
		Kind: audit.KindRelease, TimeMillis: at.UnixMilli(), Outcome: "released", Build: build,
		Agent: &audit.Agent{ID: q.Subject, AKDigest: q.AKDigest, ImageDigest: q.ImageDigest},
		Detail: map[string]string{"scope": q.Scope, "quarantine_id": strconv.FormatInt(q.ID, 10), "by": q.ReleasedBy,
			"note": q.ReleaseNote},
	}
}
