package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/thinlab/thinlab/sdk/tunnel"
)

// Metric resolutions: samples as agents sent them, and hourly aggregates.
const (
	MetricsRaw  = "raw"
	MetricsHour = "hour"
)

// AgentMetric is one stored resource sample of an agent, or the hourly
// aggregate of several (Samples of them).
type AgentMetric struct {
	AgentID    string `gorm:"primaryKey"`
	OrgID      string
	Resolution string    `gorm:"primaryKey"`
	At         time.Time `gorm:"primaryKey"`
	Samples    int
	Data       string `gorm:"type:jsonb"`
}

// TableName is the table of AgentMetric.
func (AgentMetric) TableName() string { return "agent_metrics" }

// MetricPoint is one point of an agent's charts.
type MetricPoint struct {
	At         time.Time
	Resolution string
	Samples    int
	Sample     tunnel.MetricsSample
}

// InsertAgentMetrics stores samples of agentID; a sample it holds already
// (same agent and time: a redelivered batch) is skipped.
func (s *Store) InsertAgentMetrics(ctx context.Context, agentID string, samples []tunnel.MetricsSample) (int64, error) {
	if len(samples) == 0 {
		return 0, nil
	}
	var a Agent
	if err := s.conn(ctx).Select("id", "org_id").Where("id = ?", agentID).Take(&a).Error; err != nil {
		return 0, notFound(err)
	}
	rows := make([]AgentMetric, 0, len(samples))
	for _, smp := range samples {
		if smp.Time.IsZero() {
			return 0, fmt.Errorf("a metrics sample of agent %s has no time", agentID)
		}
		raw, err := json.Marshal(smp)
		if err != nil {
			return 0, err
		}
		rows = append(rows, AgentMetric{AgentID: a.ID, OrgID: a.OrgID, Resolution: MetricsRaw, At: smp.Time.UTC(), Samples: 1, Data: string(raw)})
	}
	res := s.conn(ctx).Clauses(clause.OnConflict{DoNothing: true}).Create(&rows)
	return res.RowsAffected, res.Error
}

// AgentMetrics returns orgID's agentID's points since since, oldest first:
// hourly aggregates where the samples were downsampled, samples after.
func (s *Store) AgentMetrics(ctx context.Context, orgID, agentID string, since time.Time) ([]MetricPoint, error) {
	var rows []AgentMetric
	err := s.conn(ctx).Where("org_id = ? AND agent_id = ? AND at >= ?", orgID, agentID, since.UTC()).
		Order("at, resolution").Find(&rows).Error
	if err != nil {
		return nil, err
	}
	out := make([]MetricPoint, 0, len(rows))
	for _, r := range rows {
		p := MetricPoint{At: r.At, Resolution: r.Resolution, Samples: r.Samples}
		if err := json.Unmarshal([]byte(r.Data), &p.Sample); err != nil {
			return nil, fmt.Errorf("stored metrics of agent %s at %s: %w", agentID, r.At, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// metricsLock is the advisory lock one replica holds while downsampling.
const metricsLock = 0x7468696e6d657472 // "thinmetr"

// DownsampleAgentMetrics folds samples older than rawKeep (whole hours)
// into hourly aggregates and deletes them, and deletes aggregates older
// than hourKeep. One replica does it at a time (the others skip); a late
// sample of an hour already aggregated is folded into that hour. It
// returns the samples folded.
func (s *Store) DownsampleAgentMetrics(ctx context.Context, now time.Time, rawKeep, hourKeep time.Duration) (int, error) {
	cutoff := now.UTC().Add(-rawKeep).Truncate(time.Hour)
	folded := 0
	err := s.conn(ctx).Transaction(func(tx *gorm.DB) error {
		var got bool
		if err := tx.Raw("SELECT pg_try_advisory_xact_lock(?)", int64(metricsLock)).Scan(&got).Error; err != nil {
			return err
		}
		if !got {
			return nil
		}
		var raw []AgentMetric
		if err := tx.Where("resolution = ? AND at < ?", MetricsRaw, cutoff).Order("agent_id, at").Limit(50000).Find(&raw).Error; err != nil {
			return err
		}
		type bucket struct {
			agent, org string
			hour       time.Time
		}
		groups := map[bucket][]weighted{}
		var order []bucket
		for _, r := range raw {
			var smp tunnel.MetricsSample
			if err := json.Unmarshal([]byte(r.Data), &smp); err != nil {
				return fmt.Errorf("stored metrics of agent %s at %s: %w", r.AgentID, r.At, err)
			}
			b := bucket{r.AgentID, r.OrgID, r.At.Truncate(time.Hour)}
			if _, ok := groups[b]; !ok {
				order = append(order, b)
			}
			groups[b] = append(groups[b], weighted{smp, 1})
		}
		for _, b := range order {
			ws := groups[b]
			var old AgentMetric
			err := tx.Where("agent_id = ? AND resolution = ? AND at = ?", b.agent, MetricsHour, b.hour).Take(&old).Error
			switch {
			case err == nil:
				var smp tunnel.MetricsSample
				if err := json.Unmarshal([]byte(old.Data), &smp); err != nil {
					return err
				}
				ws = append(ws, weighted{smp, old.Samples})
			case !errors.Is(err, gorm.ErrRecordNotFound):
				return err
			}
			agg, n := aggregateMetrics(ws)
			agg.Time = b.hour
			data, err := json.Marshal(agg)
			if err != nil {
				return err
			}
			row := AgentMetric{AgentID: b.agent, OrgID: b.org, Resolution: MetricsHour, At: b.hour, Samples: n, Data: string(data)}
			if err := tx.Clauses(clause.OnConflict{UpdateAll: true}).Create(&row).Error; err != nil {
				return err
			}
			folded += len(groups[b])
		}
		for _, r := range raw {
			if err := tx.Where("agent_id = ? AND resolution = ? AND at = ?", r.AgentID, MetricsRaw, r.At).Delete(&AgentMetric{}).Error; err != nil {
				return err
			}
		}
		return tx.Where("resolution = ? AND at < ?", MetricsHour, now.UTC().Add(-hourKeep)).Delete(&AgentMetric{}).Error
	})
	return folded, err
}

// weighted is a sample standing for n samples.
type weighted struct {
	s tunnel.MetricsSample
	n int
}

// aggregateMetrics averages the samples, weighted by how many each
// stands for: figures of the host, of each pool by name and of each
// clone by ID (a clone absent from some samples averages over those it
// is in).
func aggregateMetrics(ws []weighted) (tunnel.MetricsSample, int) {
	var out tunnel.MetricsSample
	total := 0.0
	// Sums of value x weight, per pool and per clone.
	type poolAcc struct {
		n, size, used, free, read, write, util, utilN float64
		name, device                                  string
	}
	type cloneAcc struct {
		n, cpu, mem, conns float64
		id, pool           string
	}
	pools, clones := map[string]*poolAcc{}, map[string]*cloneAcc{}
	var poolOrder []string
	var cloneOrder []string
	var mt, ma float64
	for _, w := range ws {
		s, f := w.s, float64(w.n)
		total += f
		out.Seconds += s.Seconds
		out.CPUs = max(out.CPUs, s.CPUs)
		out.CPUPercent += s.CPUPercent * f
		out.IOWaitPercent += s.IOWaitPercent * f
		out.Load1 += s.Load1 * f
		mt += float64(s.MemTotalBytes) * f
		ma += float64(s.MemAvailableBytes) * f
		for _, p := range s.Pools {
			a := pools[p.Name]
			if a == nil {
				a = &poolAcc{name: p.Name, device: p.Device}
				pools[p.Name] = a
				poolOrder = append(poolOrder, p.Name)
			}
			a.n += f
			a.size += float64(p.SizeBytes) * f
			a.used += float64(p.UsedBytes) * f
			a.free += float64(p.FreeBytes) * f
			a.read += p.ReadBytesPerS * f
			a.write += p.WriteBytesPerS * f
			if p.IOUtilPercent != nil {
				a.util += *p.IOUtilPercent * f
				a.utilN += f
			}
		}
		for _, c := range s.Clones {
			a := clones[c.ID]
			if a == nil {
				a = &cloneAcc{id: c.ID, pool: c.Pool}
				clones[c.ID] = a
				cloneOrder = append(cloneOrder, c.ID)
			}
			a.n += f
			a.cpu += c.CPUPercent * f
			a.mem += float64(c.MemoryBytes) * f
			a.conns += float64(c.Connections) * f
		}
	}
	if total == 0 {
		return out, 0
	}
	out.CPUPercent /= total
	out.IOWaitPercent /= total
	out.Load1 /= total
	out.MemTotalBytes, out.MemAvailableBytes = uint64(mt/total), uint64(ma/total)
	for _, name := range poolOrder {
		a := pools[name]
		p := tunnel.PoolMetrics{
			Name: a.name, Device: a.device, SizeBytes: uint64(a.size / a.n), UsedBytes: uint64(a.used / a.n), FreeBytes: uint64(a.free / a.n),
			ReadBytesPerS: a.read / a.n, WriteBytesPerS: a.write / a.n,
		}
		if a.utilN > 0 {
			u := a.util / a.utilN
			p.IOUtilPercent = &u
		}
		out.Pools = append(out.Pools, p)
	}
	for _, id := range cloneOrder {
		a := clones[id]
		out.Clones = append(out.Clones, tunnel.CloneMetrics{
			ID: a.id, Pool: a.pool, CPUPercent: a.cpu / a.n, MemoryBytes: uint64(a.mem / a.n), Connections: int(math.Round(a.conns / a.n)),
		})
	}
	slices.SortFunc(out.Clones, func(a, b tunnel.CloneMetrics) int { return strings.Compare(a.ID, b.ID) })
	return out, int(total)
}
