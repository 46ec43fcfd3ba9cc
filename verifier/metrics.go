package verifier

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/verifier/appraisal"
)

// metrics are the verifier's Prometheus metrics. Names are stable.
type metrics struct {
	attestations  *prometheus.CounterVec   // by outcome and reason
	steps         *prometheus.HistogramVec // appraisal step durations
	stepFailures  *prometheus.CounterVec   // refusals by step and reason
	nonces        prometheus.Counter
	requests      *prometheus.CounterVec
	latency       *prometheus.HistogramVec
	refReloads    *prometheus.CounterVec
	refsInfo      *prometheus.GaugeVec
	auditRecords  *prometheus.CounterVec
	auditFailures prometheus.Counter
}

func newMetrics(reg *prometheus.Registry) *metrics {
	m := &metrics{
		attestations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vouch_attestations_total",
			Help: "Attestations by outcome (issued, refused) and refusal reason.",
		}, []string{"outcome", "reason"}),
		steps: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vouch_appraisal_step_seconds",
			Help:    "Time spent in each appraisal step.",
			Buckets: prometheus.ExponentialBuckets(10e-6, 2.5, 12),
		}, []string{"step"}),
		stepFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vouch_appraisal_refusals_total",
			Help: "Appraisal refusals by step and reason.",
		}, []string{"step", "reason"}),
		nonces: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vouch_nonces_issued_total",
			Help: "Challenge nonces handed out.",
		}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vouch_http_requests_total",
			Help: "HTTP API requests by route and status code.",
		}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vouch_http_request_seconds",
			Help:    "HTTP API latency by route.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 16),
		}, []string{"route"}),
	}
	m.refReloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "vouch_refs_reloads_total",
		Help: "Reference-value reloads by result: applied, unchanged, failed (the previous set stays in force).",
	}, []string{"result"})
	m.refsInfo = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "vouch_refs_info",
		Help: "The reference set in force (1 for its id).",
	}, []string{"id"})
	m.auditRecords = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "vouch_audit_records_total",
		Help: "Audit records durably appended, by kind.",
	}, []string{"kind"})
	m.auditFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "vouch_audit_failures_total",
		Help: "Audit appends that failed (each one a decision refused or left unrecorded).",
	})
	reg.MustRegister(m.auditRecords, m.auditFailures)
	reg.MustRegister(m.attestations, m.steps, m.stepFailures, m.nonces, m.requests, m.latency, m.refReloads, m.refsInfo,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Make every step visible from the start, so dashboards do not wait for
	// the first attestation.
	for _, s := range appraisal.Steps {
		m.steps.WithLabelValues(string(s))
	}
	return m
}

func (m *metrics) observeStep(step appraisal.Step, d time.Duration, err error) {
	m.steps.WithLabelValues(string(step)).Observe(d.Seconds())
	if err != nil {
		m.stepFailures.WithLabelValues(string(step), string(attest.ReasonOf(err))).Inc()
	}
}

func (m *metrics) setRefs(id string) {
	m.refsInfo.Reset()
	m.refsInfo.WithLabelValues(id).Set(1)
}
