package notify

import (
	"context"
	"fmt"
	"time"

	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

// Saturation thresholds: where an agent's host, a pool or its disk
// counts as saturated. The agent and clone pages draw them on their
// charts.
const (
	CPUSaturatedPercent    = 90.0
	MemorySaturatedPercent = 90.0
	PoolSpaceLowPercent    = 85.0
	DiskBusyPercent        = 90.0
	// OutOfSpaceHorizon: a pool whose space, at the growth of the last
	// hour, runs out within this long is at risk.
	OutOfSpaceHorizon = 24 * time.Hour
	// saturationWindow: one event per target and window at most (repeats
	// within a longer episode fold into the event by its count).
	saturationWindow = 15 * time.Minute
)

// Samples records the saturation events an agent's resource samples
// show: host CPU, a pool's space and disk, and a pool projected to run
// out of space from its growth since earlier samples (history: the
// agent's stored samples of the last hour or so, oldest first).
func (n *Notifier) Samples(ctx context.Context, st *store.Store, orgID, agentID string, samples, history []tunnel.MetricsSample) error {
	for _, s := range samples {
		window := s.Time.UTC().Truncate(saturationWindow).Format(time.RFC3339)
		record := func(name, target, msg string) error {
			_, err := n.Record(ctx, st, Event{
				OrgID: orgID, Name: name, AgentID: agentID, Target: target, Message: msg, At: s.Time,
				SourceKey: "metrics:" + agentID + ":" + name + ":" + target + ":" + window,
			})
			return err
		}
		if s.CPUPercent >= CPUSaturatedPercent {
			if err := record(HostCPUSaturated, "", fmt.Sprintf("CPU %.0f%% busy over %d CPUs (alert at %.0f%%)", s.CPUPercent, s.CPUs, CPUSaturatedPercent)); err != nil {
				return err
			}
		}
		for _, p := range s.Pools {
			if p.SizeBytes > 0 {
				if used := 100 * float64(p.UsedBytes) / float64(p.SizeBytes); used >= PoolSpaceLowPercent {
					if err := record(PoolSpaceLow, p.Name, fmt.Sprintf("pool %s is %.0f%% full (%s free; alert at %.0f%%)", p.Name, used, gib(p.FreeBytes), PoolSpaceLowPercent)); err != nil {
						return err
					}
				}
			}
			if p.IOUtilPercent != nil && *p.IOUtilPercent >= DiskBusyPercent {
				if err := record(PoolDiskSaturated, p.Name, fmt.Sprintf("the disk of pool %s (%s) is busy %.0f%% of the time (alert at %.0f%%)", p.Name, p.Device, *p.IOUtilPercent, DiskBusyPercent)); err != nil {
					return err
				}
			}
			if eta, ok := timeToFull(p, s.Time, history); ok && eta <= OutOfSpaceHorizon {
				if err := record(PoolOutOfSpaceRisk, p.Name, fmt.Sprintf("pool %s grows so that its %s free run out in about %s", p.Name, gib(p.FreeBytes), eta.Round(time.Minute))); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// timeToFull projects when pool p runs out of space at its growth since
// the oldest earlier sample at least ten minutes before now.
func timeToFull(p tunnel.PoolMetrics, now time.Time, history []tunnel.MetricsSample) (time.Duration, bool) {
	for _, h := range history {
		if now.Sub(h.Time) < 10*time.Minute {
			break
		}
		for _, old := range h.Pools {
			if old.Name != p.Name || p.UsedBytes <= old.UsedBytes {
				continue
			}
			rate := float64(p.UsedBytes-old.UsedBytes) / now.Sub(h.Time).Seconds() // bytes per second
			return time.Duration(float64(p.FreeBytes) / rate * float64(time.Second)), true
		}
		return 0, false
	}
	return 0, false
}

func gib(b uint64) string { return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30)) }
