package api

import (
	"context"
	"net/http"
	"sync"
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

	// pools is the cached pool metrics (RefreshMetrics).
	mu    sync.Mutex
	pools []prometheus.Metric
}

var (
	clonesDesc     = prometheus.NewDesc("thinlab_agent_clones", "Clones by status.", []string{"status"}, nil)
	snapshotsDesc  = prometheus.NewDesc("thinlab_agent_snapshots", "Snapshots per pool.", []string{"pool"}, nil)
	hibernatedDesc = prometheus.NewDesc("thinlab_agent_clones_hibernated", "Clones whose postgres is stopped until their next connection (counted as OK in thinlab_agent_clones).", nil, nil)
	warmDesc       = prometheus.NewDesc("thinlab_agent_warm_clones", "Warm clones kept for creates, by state (ready, starting, target).", []string{"state"}, nil)
	warmMemDesc    = prometheus.NewDesc("thinlab_agent_warm_clones_memory_bytes", "Proportional set size of the warm clones' processes (kind used) and its bound (kind max, 0: none).", []string{"kind"}, nil)
	poolDesc       = prometheus.NewDesc("thinlab_agent_pool_bytes", "Pool space in bytes by kind (size, free, used, used_by_snapshots, used_by_clones).", []string{"pool", "kind"}, nil)
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

// DefaultMetricsInterval is how often pool metrics (snapshot counts and
// space, which run storage commands) are read in the background.
const DefaultMetricsInterval = 15 * time.Second

func (s *Server) metricsHandler(c *gin.Context) {
	s.MetricsHandler().ServeHTTP(c.Writer, c.Request)
}

// MetricsHandler serves the Prometheus metrics without checking a token
// (the agent mounts it on server.metricsAddress). A scrape reads the
// clones from memory and the pools from the background cache: a flood of
// scrapes never runs a storage command.
func (s *Server) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{})
}

// RefreshMetrics reads every pool's snapshots and space into the cache
// that scrapes serve. The background loop calls it; tests call it when
// they disabled the loop.
func (s *Server) RefreshMetrics(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var out []prometheus.Metric
	for _, p := range s.pools {
		if snaps, err := p.Snapshots(ctx); err == nil {
			out = append(out, prometheus.MustNewConstMetric(snapshotsDesc, prometheus.GaugeValue, float64(len(snaps)), p.Name()))
		} else {
			s.log.Warn("metrics: could not list snapshots", "pool", p.Name(), "err", err)
		}
		if u, err := p.Usage(ctx); err == nil {
			for kind, v := range map[string]uint64{"size": u.Size, "free": u.Free, "used": u.Used, "used_by_snapshots": u.UsedBySnapshots, "used_by_clones": u.UsedByClones} {
				out = append(out, prometheus.MustNewConstMetric(poolDesc, prometheus.GaugeValue, float64(v), p.Name(), kind))
			}
		} else {
			s.log.Warn("metrics: could not read pool usage", "pool", p.Name(), "err", err)
		}
	}
	s.metrics.mu.Lock()
	s.metrics.pools = out
	s.metrics.mu.Unlock()
}

// refreshMetricsLoop refreshes the pool metrics until the server closes.
func (s *Server) refreshMetricsLoop(interval time.Duration) {
	defer s.bgWG.Done()
	s.RefreshMetrics(s.bg)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-s.bg.Done():
			return
		case <-t.C:
			s.RefreshMetrics(s.bg)
		}
	}
}

// stateCollector reads clones at scrape time (from memory) and pools from
// the cache.
type stateCollector struct{ s *Server }

func (sc stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- clonesDesc
	ch <- snapshotsDesc
	ch <- poolDesc
	ch <- hibernatedDesc
	ch <- warmDesc
	ch <- warmMemDesc
}

// warmReporter is the warm pool's state (clone.Manager has it; the API's
// test fakes need not).
type warmReporter interface{ Warm() clone.WarmStats }

func (sc stateCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[string]int{}
	for _, st := range []clone.StatusCode{clone.StatusOK, clone.StatusCreating, clone.StatusResetting, clone.StatusDeleting, clone.StatusFatal} {
		counts[string(st)] = 0
	}
	hibernated := 0
	for _, c := range sc.s.clones.List() {
		counts[string(c.Status)]++
		if c.Hibernated {
			hibernated++
		}
	}
	ch <- prometheus.MustNewConstMetric(hibernatedDesc, prometheus.GaugeValue, float64(hibernated))
	if w, ok := sc.s.clones.(warmReporter); ok {
		st := w.Warm()
		for state, n := range map[string]int{"ready": st.Ready, "starting": st.Starting, "target": st.Target} {
			ch <- prometheus.MustNewConstMetric(warmDesc, prometheus.GaugeValue, float64(n), state)
		}
		ch <- prometheus.MustNewConstMetric(warmMemDesc, prometheus.GaugeValue, float64(st.PSSBytes), "used")
		ch <- prometheus.MustNewConstMetric(warmMemDesc, prometheus.GaugeValue, float64(st.MaxBytes), "max")
	}
	for st, n := range counts {
		ch <- prometheus.MustNewConstMetric(clonesDesc, prometheus.GaugeValue, float64(n), st)
	}
	m := sc.s.metrics
	m.mu.Lock()
	cached := m.pools
	m.mu.Unlock()
	for _, metric := range cached {
		ch <- metric
	}
}
