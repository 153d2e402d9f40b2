// Package metrics holds the host daemon's Prometheus metric families, the
// ones the product's contract names plus HTTP request latencies. Labels stay
// low-cardinality: persona names and results, never command lines.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics is one registry with every family the host daemon exports.
type Metrics struct {
	Registry *prometheus.Registry

	// Activations counts activation outcomes by persona and result
	// (activated, aborted, rolled_back, failed, deactivated, error).
	Activations *prometheus.CounterVec
	// ActivationDuration observes activation round trips in seconds.
	ActivationDuration prometheus.Histogram
	// Commands counts execs by route: default, override, denied.
	Commands *prometheus.CounterVec
	// AgentsConnected is the number of guest agents with a live session.
	AgentsConnected prometheus.Gauge
	// AuditEvents counts audit events stored, by type.
	AuditEvents *prometheus.CounterVec
	// HTTPDuration observes API requests by route pattern, method and code.
	HTTPDuration *prometheus.HistogramVec
}

// New registers every family, with the Go and process collectors, on a fresh
// registry.
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		Activations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmpersona_activations_total",
			Help: "Persona activations and deactivations by persona and result.",
		}, []string{"persona", "result"}),
		ActivationDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vmpersona_activation_duration_seconds",
			Help:    "Time from an activation request to the guest's answer.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}),
		Commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmpersona_commands_total",
			Help: "Commands executed through guest routing tables, by route (default, override, denied).",
		}, []string{"route"}),
		AgentsConnected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vmpersona_agents_connected",
			Help: "Guest agents with a live session.",
		}),
		AuditEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmpersona_audit_events_total",
			Help: "Audit events stored, by type.",
		}, []string{"type"}),
		HTTPDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vmpersona_http_request_duration_seconds",
			Help:    "REST API request latency by route, method and status code.",
			Buckets: prometheus.DefBuckets,
		}, []string{"route", "method", "code"}),
	}
	m.Registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.Activations, m.ActivationDuration, m.Commands, m.AgentsConnected, m.AuditEvents, m.HTTPDuration,
	)
	for _, r := range []string{"default", "override", "denied"} {
		m.Commands.WithLabelValues(r)
	}
	return m
}
