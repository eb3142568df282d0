package api

import (
	"context"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/thinlab/thinlab/agent/clone"
)

// metrics are the agent's Prometheus metrics, on a registry of their own
// (no process-global state; two servers in one test process do not clash).
type metrics struct {
	registry      *prometheus.Registry
	cloneCreation prometheus.Histogram
}

var (
	clonesDesc    = prometheus.NewDesc("thinlab_agent_clones", "Clones by status.", []string{"status"}, nil)
	snapshotsDesc = prometheus.NewDesc("thinlab_agent_snapshots", "Snapshots per pool.", []string{"pool"}, nil)
	poolDesc      = prometheus.NewDesc("thinlab_agent_pool_bytes", "Pool space in bytes by kind (size, free, used, used_by_snapshots, used_by_clones).", []string{"pool", "kind"}, nil)
)

func newMetrics(s *Server) *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		cloneCreation: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "thinlab_agent_clone_creation_seconds",
			Help:    "Time from a create request to the clone accepting connections.",
			Buckets: []float64{0.25, 0.5, 1, 2, 5, 10, 30, 60, 300},
		}),
	}
	m.registry.MustRegister(m.cloneCreation, stateCollector{s})
	return m
}

func (s *Server) metricsHandler(c *gin.Context) {
	promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{}).ServeHTTP(c.Writer, c.Request)
}

// stateCollector reads clones, snapshots and pool usage at scrape time.
type stateCollector struct{ s *Server }

func (sc stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- clonesDesc
	ch <- snapshotsDesc
	ch <- poolDesc
}

func (sc stateCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[string]int{}
	for _, st := range []clone.StatusCode{clone.StatusOK, clone.StatusCreating, clone.StatusResetting, clone.StatusDeleting, clone.StatusFatal} {
		counts[string(st)] = 0
	}
	for _, c := range sc.s.clones.List() {
		counts[string(c.Status)]++
	}
	for st, n := range counts {
		ch <- prometheus.MustNewConstMetric(clonesDesc, prometheus.GaugeValue, float64(n), st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, p := range sc.s.pools {
		if snaps, err := p.Snapshots(ctx); err == nil {
			ch <- prometheus.MustNewConstMetric(snapshotsDesc, prometheus.GaugeValue, float64(len(snaps)), p.Name())
		}
		if u, err := p.Usage(ctx); err == nil {
			for kind, v := range map[string]uint64{"size": u.Size, "free": u.Free, "used": u.Used, "used_by_snapshots": u.UsedBySnapshots, "used_by_clones": u.UsedByClones} {
				ch <- prometheus.MustNewConstMetric(poolDesc, prometheus.GaugeValue, float64(v), p.Name(), kind)
			}
		}
	}
}
