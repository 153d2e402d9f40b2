// Package metrics holds the host daemon's Prometheus metric families, the
// ones the product's contract names plus HTTP request latencies. Labels stay
// low-cardinality: persona names and results, never command lines.
package metrics

import (
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/vmpersona/vmpersona/protocol"
)

// Metrics is one registry with every family the host daemon exports.
type Metrics struct {
	Registry *prometheus.Registry

	// Activations counts activation outcomes by persona and result
	// (activated, aborted, rolled_back, failed, error).
	Activations *prometheus.CounterVec
	// ActivationDuration observes activation round trips in seconds.
	ActivationDuration prometheus.Histogram
	// Deactivations counts deactivation outcomes by the persona left and
	// result (deactivated, aborted, failed, error); they are not
	// activations.
	Deactivations *prometheus.CounterVec
	// DeactivationDuration observes deactivation round trips in seconds.
	DeactivationDuration prometheus.Histogram
	// Commands counts execs by route: default, override, denied.
	Commands *prometheus.CounterVec
	// AgentsConnected is the number of guest agents with a live session.
	AgentsConnected prometheus.Gauge
	// SessionsEnded counts agent sessions that ended, by cause: heartbeat
	// (silent through the probe), closed (by the host: removal,
	// shutdown, a new endpoint), no_session (the guest daemon
	// restarted), stream (the stream ended or failed).
	SessionsEnded *prometheus.CounterVec
	// LivenessProbes counts probes sent to silent agents, by outcome:
	// answered (a slow agent, kept) or unanswered.
	LivenessProbes *prometheus.CounterVec
	// AuditEvents counts audit events stored, by type.
	AuditEvents *prometheus.CounterVec
	// HTTPDuration observes API requests by route pattern, method and code.
	HTTPDuration *prometheus.HistogramVec

	// AuthFailures counts refused API requests by status (401, 403), all of
	// them (the audit log keeps a rate-limited sample).
	AuthFailures *prometheus.CounterVec
	// GuestInputRefused counts guest input the host refused, by reason
	// (hello, exec_result, audit_type).
	GuestInputRefused *prometheus.CounterVec
	// AuditThrottleSeconds counts the time audit batches were held back by
	// their instance's ingestion quota.
	AuditThrottleSeconds prometheus.Counter
	// StorageLow is 1 while the data directory's free space is under the
	// watermark (writes refused with 507), else 0.
	StorageLow prometheus.Gauge
	// StorageFreeBytes is the data directory's free space as last checked.
	StorageFreeBytes prometheus.Gauge
}

// New registers every family, with the Go and process collectors, on a fresh
// registry.
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		Activations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmpersona_activations_total",
			Help: "Persona activations by persona and result.",
		}, []string{"persona", "result"}),
		ActivationDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vmpersona_activation_duration_seconds",
			Help:    "Time from an activation request to the guest's answer.",
			Buckets: activationBuckets,
		}),
		Deactivations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmpersona_deactivations_total",
			Help: "Persona deactivations by the persona left and result.",
		}, []string{"persona", "result"}),
		DeactivationDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vmpersona_deactivation_duration_seconds",
			Help:    "Time from a deactivation request to the guest's answer.",
			Buckets: activationBuckets,
		}),
		Commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmpersona_commands_total",
			Help: "Commands executed through guest routing tables, by route (default, override, denied).",
		}, []string{"route"}),
		AgentsConnected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vmpersona_agents_connected",
			Help: "Guest agents with a live session.",
		}),
		SessionsEnded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmpersona_agent_sessions_ended_total",
			Help: "Agent sessions that ended, by cause (heartbeat, closed, no_session, stream).",
		}, []string{"cause"}),
		LivenessProbes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmpersona_agent_liveness_probes_total",
			Help: "Liveness probes sent to agents silent for three heartbeat intervals, by outcome (answered, unanswered).",
		}, []string{"outcome"}),
		AuditEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmpersona_audit_events_total",
			Help: "Audit events stored, by type.",
		}, []string{"type"}),
		HTTPDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vmpersona_http_request_duration_seconds",
			Help:    "REST API request latency by route, method and status code.",
			Buckets: prometheus.DefBuckets,
		}, []string{"route", "method", "code"}),
		AuthFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmpersona_auth_failures_total",
			Help: "Refused API requests by status code (401, 403).",
		}, []string{"code"}),
		GuestInputRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmpersona_guest_input_refused_total",
			Help: "Guest input out of bounds, refused by the host, by reason.",
		}, []string{"reason"}),
		AuditThrottleSeconds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vmpersona_audit_throttle_seconds_total",
			Help: "Time guest audit batches were held back by their instance's ingestion quota.",
		}),
		StorageLow: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vmpersona_storage_low",
			Help: "1 while the data directory's free space is under the watermark and writes are refused.",
		}),
		StorageFreeBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vmpersona_storage_free_bytes",
			Help: "Free space of the data directory's file system as last checked.",
		}),
	}
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "vmpersona_build_info",
		Help:        "Always 1; the labels say which vmpersona release and Go version run.",
		ConstLabels: prometheus.Labels{"version": protocol.SoftwareVersion, "goversion": runtime.Version()},
	})
	buildInfo.Set(1)
	m.Registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.Activations, m.ActivationDuration, m.Deactivations, m.DeactivationDuration,
		m.Commands, m.AgentsConnected, m.SessionsEnded, m.LivenessProbes, m.AuditEvents, m.HTTPDuration, buildInfo,
		m.AuthFailures, m.GuestInputRefused, m.AuditThrottleSeconds, m.StorageLow, m.StorageFreeBytes,
	)
	for _, r := range []string{"default", "override", "denied"} {
		m.Commands.WithLabelValues(r)
	}
	for _, c := range []string{"heartbeat", "closed", "no_session", "stream"} {
		m.SessionsEnded.WithLabelValues(c)
	}
	for _, o := range []string{"answered", "unanswered"} {
		m.LivenessProbes.WithLabelValues(o)
	}
	return m
}

var activationBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}

// InstanceAgent is one instance's agent connection, for the per-instance
// series.
type InstanceAgent struct {
	Instance  string
	Connected bool
}

// WatchInstances exports vmpersona_agent_connected{instance} (1 or 0) for
// each instance list returns at scrape time: the series an alert on one
// VM's agent can use. One series per instance the daemon manages.
func (m *Metrics) WatchInstances(list func() []InstanceAgent) error {
	return m.Registry.Register(instanceCollector{list})
}

var agentConnectedDesc = prometheus.NewDesc("vmpersona_agent_connected",
	"1 while the instance's guest agent has a live session, else 0.", []string{"instance"}, nil)

type instanceCollector struct{ list func() []InstanceAgent }

func (c instanceCollector) Describe(ch chan<- *prometheus.Desc) { ch <- agentConnectedDesc }

func (c instanceCollector) Collect(ch chan<- prometheus.Metric) {
	for _, ia := range c.list() {
		v := 0.0
		if ia.Connected {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(agentConnectedDesc, prometheus.GaugeValue, v, ia.Instance)
	}
}
