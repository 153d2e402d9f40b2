package fleet

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metricSet is the fleet's metrics on the daemon's registry.
type metricSet struct {
	reg        prometheus.Registerer
	collectors []prometheus.Collector
	writes     *prometheus.HistogramVec
	apply      prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer, b *Backend) metricSet {
	m := metricSet{
		reg: reg,
		writes: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vmpersona_fleet_write_duration_seconds",
			Help:    "Persona writes in etcd by operation and result (ok, refused, unavailable).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"op", "result"}),
		apply: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vmpersona_fleet_apply_duration_seconds",
			Help:    "Applying one watched batch of the catalogue to the local copy.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25},
		}),
	}
	connected := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "vmpersona_fleet_connected",
		Help: "1 while this host follows etcd (watch open with a leader, linearizable reads answer), else 0.",
	}, func() float64 {
		if b.connected() {
			return 1
		}
		return 0
	})
	revision := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "vmpersona_fleet_revision",
		Help: "The etcd revision of this host's local copy of the catalogue.",
	}, func() float64 { return float64(b.Applied()) })
	fullReads := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "vmpersona_fleet_full_reads_total",
		Help: "Complete re-reads of the catalogue (first load, after a compaction).",
	}, func() float64 { return float64(b.fullReads.Load()) })
	m.collectors = []prometheus.Collector{m.writes, m.apply, connected, revision, fullReads}
	if reg != nil {
		for _, c := range m.collectors {
			reg.MustRegister(c)
		}
	}
	return m
}

func (m metricSet) write(op, result string, d time.Duration) {
	m.writes.WithLabelValues(op, result).Observe(d.Seconds())
}

func (m metricSet) applySeconds(d time.Duration) { m.apply.Observe(d.Seconds()) }

func (m metricSet) unregister() {
	if m.reg == nil {
		return
	}
	for _, c := range m.collectors {
		m.reg.Unregister(c)
	}
}
