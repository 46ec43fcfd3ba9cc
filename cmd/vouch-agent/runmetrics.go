package main

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vouch-dev/vouch/agentside"
)

// sidecarMetrics are the sidecar's Prometheus metrics, on its own registry,
// served at /.vouch/metrics.
type sidecarMetrics struct {
	reg        *prometheus.Registry
	renewals   *prometheus.CounterVec
	requests   *prometheus.CounterVec
	elevations *prometheus.CounterVec
}

func newSidecarMetrics() *sidecarMetrics {
	m := &sidecarMetrics{
		reg: prometheus.NewRegistry(),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vouch_sidecar_renewals_total",
			Help: "Attestations by outcome: success, refused (the verifier refused the evidence), error (anything else).",
		}, []string{"outcome"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vouch_sidecar_requests_total",
			Help: "Requests proxied, by the status class answered to the local client (including the sidecar's own 413 and 503).",
		}, []string{"class"}),
	}
	m.elevations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "vouch_sidecar_elevations_total",
		Help: "Just-in-time elevations (Vouch-Elevate) by outcome: granted, refused.",
	}, []string{"outcome"})
	m.elevations.WithLabelValues("granted")
	m.elevations.WithLabelValues("refused")
	for _, o := range []agentside.RenewOutcome{agentside.RenewSuccess, agentside.RenewRefused, agentside.RenewFailed} {
		m.renewals.WithLabelValues(string(o))
	}
	m.reg.MustRegister(m.renewals, m.requests, m.elevations)
	return m
}

// watch adds the gauges that read r's state.
func (m *sidecarMetrics) watch(r *agentside.Renewer) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "vouch_sidecar_credential_expiry_seconds",
			Help: "Seconds until the current credential expires; 0 when no valid credential is held.",
		}, func() float64 {
			st := r.Status()
			if !st.Ready {
				return 0
			}
			return time.Until(st.Expiry).Seconds()
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "vouch_sidecar_ready",
			Help: "1 while a valid credential is held, else 0.",
		}, func() float64 {
			if r.Credential() == nil {
				return 0
			}
			return 1
		}),
	)
}

func (m *sidecarMetrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}
