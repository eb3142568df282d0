package web

import (
	"fmt"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/notify"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/ui"
)

// The charts draw the saturation thresholds of notifications.
const (
	ThresholdCPUPercent    = notify.CPUSaturatedPercent
	ThresholdMemoryPercent = notify.MemorySaturatedPercent
	ThresholdDiskPercent   = notify.PoolSpaceLowPercent
	ThresholdIOUtilPercent = notify.DiskBusyPercent
)

// metricRanges are the ranges the page offers.
var metricRanges = map[string]time.Duration{"24h": 24 * time.Hour, "7d": 7 * 24 * time.Hour, "30d": 30 * 24 * time.Hour}

// agentMetricsPage charts the route's agent's resource samples: host CPU
// and memory, each pool's space and disk IO, and its clones' latest use.
func (w *Web) agentMetricsPage(c *gin.Context) {
	org, ag := access.Org(c), access.Agent(c)
	rng := c.DefaultQuery("range", "24h")
	span, ok := metricRanges[rng]
	if !ok {
		w.errorPage(c, http.StatusBadRequest, "range: choose 24h, 7d or 30d")
		return
	}
	now := time.Now().UTC()
	points, err := w.store.AgentMetrics(c.Request.Context(), org.ID, ag.ID, now.Add(-span))
	if err != nil {
		w.internal(c, "load the agent's metrics", err)
		return
	}
	v := ui.AgentMetrics{
		AgentID: ag.ID, AgentName: ag.Name, Range: rng, Ranges: []string{"24h", "7d", "30d"},
		Base: "/o/" + org.Slug + "/agents/" + ag.ID + "/metrics",
	}
	v.Host, v.Pools = metricCharts(points, now.Add(-span), now)
	if len(points) == 0 {
		v.Note = "No samples yet: agents send one every 30 seconds while connected."
	} else {
		last := points[len(points)-1].Sample
		for _, cl := range last.Clones {
			v.Clones = append(v.Clones, ui.CloneUse{
				ID: cl.ID, Href: clonePath(org.Slug, ag.ID, cl.ID), CPU: fmt.Sprintf("%.1f%%", cl.CPUPercent),
				Memory: ui.FormatBytes(cl.MemoryBytes), Connections: cl.Connections,
			})
		}
	}
	p := w.page(c, "Agents")
	p.Title = "Resources of " + ag.Name
	w.render(c, p.Status, ui.AgentMetricsPage(p, v))
}

// metricCharts builds the host charts (CPU and IO wait, memory used) and
// two per pool (space used, disk IO utilisation) from the points.
func metricCharts(points []store.MetricPoint, from, to time.Time) (host, pools []ui.Chart) {
	cpu := ui.Chart{ID: "chart-cpu", Title: "CPU", Unit: "%", Max: 100, Threshold: ThresholdCPUPercent, From: from, To: to,
		Series: []ui.Series{{Name: "busy", Class: "series-0"}, {Name: "IO wait", Class: "series-1"}}}
	mem := ui.Chart{ID: "chart-memory", Title: "Memory used", Unit: "%", Max: 100, Threshold: ThresholdMemoryPercent, From: from, To: to,
		Series: []ui.Series{{Name: "used", Class: "series-0"}}}
	type poolCharts struct{ space, io ui.Chart }
	byPool := map[string]*poolCharts{}
	var order []string
	for _, pt := range points {
		s := pt.Sample
		at := pt.At
		cpu.Series[0].Points = append(cpu.Series[0].Points, ui.ChartPoint{At: at, Value: s.CPUPercent})
		cpu.Series[1].Points = append(cpu.Series[1].Points, ui.ChartPoint{At: at, Value: s.IOWaitPercent})
		if s.MemTotalBytes > 0 {
			mem.Series[0].Points = append(mem.Series[0].Points, ui.ChartPoint{At: at, Value: 100 * float64(s.MemTotalBytes-min(s.MemAvailableBytes, s.MemTotalBytes)) / float64(s.MemTotalBytes)})
		}
		for _, pm := range s.Pools {
			pc := byPool[pm.Name]
			if pc == nil {
				n := len(order)
				pc = &poolCharts{
					space: ui.Chart{ID: fmt.Sprintf("chart-pool-%d-space", n), Title: "Pool " + pm.Name + ": space used", Unit: "%", Max: 100, Threshold: ThresholdDiskPercent, From: from, To: to,
						Series: []ui.Series{{Name: "used", Class: "series-0"}}},
					io: ui.Chart{ID: fmt.Sprintf("chart-pool-%d-io", n), Title: "Pool " + pm.Name + ": disk busy", Unit: "%", Max: 100, Threshold: ThresholdIOUtilPercent, From: from, To: to,
						Series: []ui.Series{{Name: "busy", Class: "series-2"}}},
				}
				byPool[pm.Name] = pc
				order = append(order, pm.Name)
			}
			if pm.SizeBytes > 0 {
				pc.space.Series[0].Points = append(pc.space.Series[0].Points, ui.ChartPoint{At: at, Value: 100 * float64(pm.UsedBytes) / float64(pm.SizeBytes)})
			}
			if pm.IOUtilPercent != nil {
				pc.io.Series[0].Points = append(pc.io.Series[0].Points, ui.ChartPoint{At: at, Value: *pm.IOUtilPercent})
			}
		}
	}
	latest(&cpu, "%.0f%%")
	latest(&mem, "%.0f%%")
	host = []ui.Chart{cpu, mem}
	for _, name := range order {
		pc := byPool[name]
		latest(&pc.space, "%.0f%%")
		latest(&pc.io, "%.0f%%")
		pools = append(pools, pc.space, pc.io)
	}
	return host, pools
}

// latest fills the chart's legend with each series' last value.
func latest(c *ui.Chart, format string) {
	c.Latest = make([]string, len(c.Series))
	for i, s := range c.Series {
		if n := len(s.Points); n > 0 {
			c.Latest[i] = fmt.Sprintf(format, s.Points[n-1].Value)
		}
	}
}

// cloneCharts are a clone's CPU and memory over the last day, from its
// agent's samples (none when there are none: the page leaves them out).
func (w *Web) cloneCharts(c *gin.Context, orgID, agentID, cloneID string) []ui.Chart {
	now := time.Now().UTC()
	points, err := w.store.AgentMetrics(c.Request.Context(), orgID, agentID, now.Add(-24*time.Hour))
	if err != nil {
		w.logger.Warn("load a clone's metrics", "agent", agentID, "clone", cloneID, "err", err)
		return nil
	}
	cpu := ui.Chart{ID: "chart-clone-cpu", Title: "CPU (100% = one CPU)", Unit: "%", From: now.Add(-24 * time.Hour), To: now,
		Series: []ui.Series{{Name: "cpu", Class: "series-0"}}}
	mem := ui.Chart{ID: "chart-clone-memory", Title: "Memory (proportional set size)", Unit: " MiB", From: cpu.From, To: now,
		Series: []ui.Series{{Name: "memory", Class: "series-1"}}}
	conns := ui.Chart{ID: "chart-clone-connections", Title: "Client connections", From: cpu.From, To: now,
		Series: []ui.Series{{Name: "connections", Class: "series-2"}}}
	for _, pt := range points {
		for _, cl := range pt.Sample.Clones {
			if cl.ID != cloneID {
				continue
			}
			cpu.Series[0].Points = append(cpu.Series[0].Points, ui.ChartPoint{At: pt.At, Value: cl.CPUPercent})
			mib := float64(cl.MemoryBytes) / (1 << 20)
			mem.Series[0].Points = append(mem.Series[0].Points, ui.ChartPoint{At: pt.At, Value: mib})
			conns.Series[0].Points = append(conns.Series[0].Points, ui.ChartPoint{At: pt.At, Value: float64(cl.Connections)})
			cpu.Max = max(cpu.Max, cl.CPUPercent)
			mem.Max = max(mem.Max, mib)
			conns.Max = max(conns.Max, float64(cl.Connections))
		}
	}
	if cpu.Empty() {
		return nil
	}
	cpu.Max = niceMax(cpu.Max, 100)
	mem.Max = niceMax(mem.Max, 64)
	conns.Max = niceMax(conns.Max, 5)
	latest(&cpu, "%.1f%%")
	latest(&mem, "%.0f MiB")
	latest(&conns, "%.0f")
	return []ui.Chart{cpu, mem, conns}
}

// niceMax is a round scale top at least floor that holds v.
func niceMax(v, floor float64) float64 {
	m := floor
	for m < v {
		m *= 2
	}
	return m
}
