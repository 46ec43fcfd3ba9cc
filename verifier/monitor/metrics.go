package monitor

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the monitor's Prometheus metrics. Names are stable.
type metrics struct {
	signals     *prometheus.CounterVec
	dropped     prometheus.Counter
	alerts      *prometheus.CounterVec
	findings    *prometheus.CounterVec
	revocations *prometheus.CounterVec
	quarantines *prometheus.CounterVec
	releases    prometheus.Counter
	actions     *prometheus.CounterVec
	response    prometheus.Histogram
	webhook     *prometheus.CounterVec
	pending     prometheus.Gauge
	reloads     *prometheus.CounterVec
	persist     *prometheus.CounterVec
	auditErrors prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, queueLen func() float64, agents func() float64) *metrics {
	m := &metrics{
		signals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vouch_monitor_signals_total",
			Help: "Signals the monitor processed, by kind (attestation, decision, request).",
		}, []string{"kind"}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vouch_monitor_signals_dropped_total",
			Help: "Signals dropped because the monitor's queue was full (decisions never wait for the monitor).",
		}),
		alerts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vouch_alerts_total",
			Help: "Alerts raised, by severity.",
		}, []string{"severity"}),
		findings: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vouch_monitor_findings_total",
			Help: "Detection rules that fired, by rule.",
		}, []string{"rule"}),
		revocations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vouch_revocations_total",
			Help: "Revocation feed entries written, by kind (credential, agent).",
		}, []string{"kind"}),
		quarantines: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vouch_quarantines_total",
			Help: "Quarantines put in force, by scope (agent, workload, machine).",
		}, []string{"scope"}),
		releases: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vouch_quarantine_releases_total",
			Help: "Quarantines released by an operator (recorded in the audit log).",
		}),
		actions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vouch_response_actions_total",
			Help: "Automated response actions, by action and outcome (done, skipped, failed).",
		}, []string{"action", "outcome"}),
		response: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vouch_monitor_response_seconds",
			Help:    "From the signal that raised an alert entering the monitor to the alert's response being done.",
			Buckets: prometheus.ExponentialBuckets(100e-6, 2.5, 14),
		}),
		webhook: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vouch_webhook_deliveries_total",
			Help: "Alert webhook delivery attempts, by outcome (delivered, failed, dropped).",
		}, []string{"outcome"}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vouch_webhook_outbox_pending",
			Help: "Alert webhook deliveries waiting in the outbox.",
		}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vouch_monitor_config_reloads_total",
			Help: "Monitor configuration reloads, by outcome (ok, error).",
		}, []string{"outcome"}),
		persist: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vouch_monitor_state_total",
			Help: "Saves and loads of the monitor's learned state, by outcome (saved, error, skipped-busy, loaded, load-skipped).",
		}, []string{"outcome"}),
		auditErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vouch_monitor_audit_errors_total",
			Help: "Monitor records the audit log did not take.",
		}),
	}
	reg.MustRegister(m.signals, m.dropped, m.alerts, m.findings, m.revocations, m.quarantines, m.releases, m.actions,
		m.response, m.webhook, m.pending, m.reloads, m.persist, m.auditErrors,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "vouch_monitor_queue_length",
			Help: "Signals waiting for the monitor.",
		}, queueLen),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "vouch_monitor_agents",
			Help: "Agents (and machines) whose behaviour the monitor tracks.",
		}, agents))
	for _, s := range Severities {
		m.alerts.WithLabelValues(string(s))
	}
	for _, r := range Rules {
		m.findings.WithLabelValues(r)
	}
	m.dropped.Add(0)
	return m
}
