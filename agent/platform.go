package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/agent/monitor"
	agenttunnel "github.com/thinlab/thinlab/agent/tunnel"
	"github.com/thinlab/thinlab/agent/usage"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

// DLEAPIVersion is the Database Lab Engine API version the agent's API
// follows (sent to the platform in the agent's facts).
const DLEAPIVersion = "v3"

// newPlatformTunnel builds the tunnel to the platform when platform.url
// is set (nil otherwise). Without a credential in the state directory it
// needs platform.enrollToken.
func (a *Agent) newPlatformTunnel(version, instanceID string, startedAt time.Time) (*agenttunnel.Client, error) {
	pc := a.cfg.Platform
	if pc.URL == "" {
		return nil, nil //nolint:nilnil // no platform configured is not an error: the agent runs on its own
	}
	_, err := agenttunnel.LoadCredential(a.cfg.StateDir)
	if err != nil && !errors.Is(err, agenttunnel.ErrNoCredential) {
		return nil, err
	}
	if err != nil && pc.EnrollToken == "" {
		return nil, errors.New("platform.enrollToken is empty and this agent has no platform credential yet: set platform.enrollToken (or --enroll-token) to the enrollment token created on the platform")
	}
	client, err := agenttunnel.New(agenttunnel.Options{
		URL:         pc.URL,
		CAFile:      pc.CAFile,
		Insecure:    pc.Insecure,
		EnrollToken: pc.EnrollToken,
		StateDir:    a.cfg.StateDir,
		API:         a.api.Handler(),
		APIToken:    a.cfg.Server.VerificationToken,
		CloneTarget: liveClonePort(a.clones),
		Facts:       func() tunnel.AgentFacts { return a.facts(version, instanceID, startedAt) },
		Events:      a.events,
		Logger:      a.log,
	})
	if err != nil {
		return nil, fmt.Errorf("platform: %w", err)
	}
	if pc.Insecure {
		a.log.Warn("INSECURE: platform.insecure is set: the tunnel to the platform may run without TLS; for development only")
	}
	return client, nil
}

// liveClonePort allows TCP streams only to ports of clones that are
// ready (status OK): never the API, never a clone being created, reset or
// deleted, never another process on the host.
func liveClonePort(m *clone.Manager) agenttunnel.CloneTarget {
	return func(port int) bool {
		return slices.ContainsFunc(m.List(), func(c clone.Clone) bool {
			return c.Port == port && c.Status == clone.StatusOK
		})
	}
}

// facts describe the agent to the platform.
func (a *Agent) facts(version, instanceID string, startedAt time.Time) tunnel.AgentFacts {
	name := a.cfg.Platform.Name
	if name == "" {
		name, _ = os.Hostname() // an empty name is shown as the agent id by the platform
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	clones := a.clones.List()
	f := tunnel.AgentFacts{
		Name:             name,
		Version:          version,
		InstanceID:       instanceID,
		DLEAPIVersion:    DLEAPIVersion,
		PostgresVersions: postgresVersions(a.cfg),
		StartedAt:        startedAt,
		// Capacity: a clone needs a port of the port pool and a uid of
		// the clone uid range.
		MaxClones:          int(a.cfg.Provision.PortPool.To) - int(a.cfg.Provision.PortPool.From) + 1,
		CloneUIDsAvailable: max(0, int(a.cfg.Provision.CloneUIDs.To)-int(a.cfg.Provision.CloneUIDs.From)+1-len(clones)),
	}
	backends := map[string]string{}
	for _, p := range a.pools {
		backends[p.Name()] = p.Mode()
	}
	// The same accounting as the usage samples.
	for _, up := range a.usagePools(ctx) {
		pf := tunnel.PoolFact{Name: up.Name, Backend: backends[up.Name], Mode: "active",
			TotalBytes: up.SizeBytes, FreeBytes: up.FreeBytes, UsedBytes: up.UsedBytes, Snapshots: up.Snapshots, Clones: up.Clones}
		if up.Snapshots == 0 {
			pf.Mode = "empty"
		}
		f.Pools = append(f.Pools, pf)
	}
	return f
}

// postgresVersions lists the major versions installed under
// provision.pgBinRoot (directories with a bin/postgres).
func postgresVersions(cfg *config.Config) []string {
	entries, err := os.ReadDir(cfg.Provision.PgBinRoot)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if _, err := os.Stat(filepath.Join(cfg.Provision.PgBinRoot, e.Name(), "bin", "postgres")); err == nil {
			out = append(out, e.Name())
		}
	}
	return out
}

// reportToPlatform sends usage samples and a health summary every minute
// while the agent runs with a platform (through the event bus, so both
// are journaled when the platform is unreachable).
func (a *Agent) reportToPlatform(ctx context.Context) {
	sampler, err := usage.New(usage.Options{
		StateDir:   a.cfg.StateDir,
		InstanceID: a.instanceID,
		Events:     a.events,
		Logger:     a.log,
		Clones:     a.usageClones,
		Pools:      a.usagePools,
		Interval:   a.reportInterval,
	})
	if err != nil {
		a.log.Error("usage sampling is off", "err", err)
		return
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := sampler.Run(ctx); err != nil {
			a.log.Error("usage sampling stopped", "err", err)
		}
	})
	if mon, err := monitor.New(monitor.Options{
		Interval: min(a.reportInterval, monitor.DefaultInterval),
		Events:   a.events, Logger: a.log, Clones: a.monitorClones, Pools: a.monitorPools,
	}); err != nil {
		a.log.Error("host monitoring is off", "err", err)
	} else {
		wg.Go(func() {
			if err := mon.Run(ctx); err != nil && ctx.Err() == nil {
				a.log.Error("host monitoring stopped", "err", err)
			}
		})
	}
	wg.Go(func() {
		t := time.NewTicker(a.reportInterval)
		defer t.Stop()
		for {
			a.events.Emit(a.health(ctx))
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
	wg.Wait()
}

// monitorClones are the clones whose processes the monitor measures, by
// their OS uids.
func (a *Agent) monitorClones() []monitor.Clone {
	var out []monitor.Clone
	for _, c := range a.clones.List() {
		out = append(out, monitor.Clone{ID: c.ID, Pool: c.Pool, UID: c.UID})
	}
	return out
}

// monitorPools are the pools with the same space accounting as usage.
func (a *Agent) monitorPools(ctx context.Context) []monitor.Pool {
	var out []monitor.Pool
	for i, up := range a.usagePools(ctx) {
		out = append(out, monitor.Pool{Name: up.Name, Path: a.pools[i].MainDir(), SizeBytes: up.SizeBytes, UsedBytes: up.UsedBytes, FreeBytes: up.FreeBytes})
	}
	return out
}

// usageClones are the clones for usage: every clone that holds a dataset
// (a failed one does not).
func (a *Agent) usageClones() []usage.Clone {
	var out []usage.Clone
	for _, c := range a.clones.List() {
		out = append(out, usage.Clone{
			ID: c.ID, Pool: c.Pool, CreatedAt: c.CreatedAt, DiffBytes: c.DiffSize,
			LogicalBytes: c.LogicalSize, CloningTime: c.CloningTime,
			Running: c.Status != clone.StatusFatal,
		})
	}
	return out
}

func (a *Agent) usagePools(ctx context.Context) []usage.Pool {
	clones := a.clones.List()
	var out []usage.Pool
	for _, p := range a.pools {
		up := usage.Pool{Name: p.Name()}
		if u, err := p.Usage(ctx); err == nil {
			up.SizeBytes, up.UsedBytes, up.FreeBytes = u.Size, u.Used, u.Free
		}
		if snaps, err := p.Snapshots(ctx); err == nil {
			up.Snapshots = len(snaps)
		}
		for _, c := range clones {
			if c.Pool == p.Name() {
				up.Clones++
			}
		}
		out = append(out, up)
	}
	return out
}

// Health is the payload of an events.Health event.
type Health struct {
	Status string         `json:"status"` // ok, or degraded with Problems
	Clones map[string]int `json:"clones"` // by status
	Pools  []usage.Pool   `json:"pools"`
	// Problems say what is wrong, one line each.
	Problems []string `json:"problems,omitempty"`
}

// health summarises the agent for the platform's Agents page.
func (a *Agent) health(ctx context.Context) events.Event {
	h := Health{Status: "ok", Clones: map[string]int{}, Pools: a.usagePools(ctx)}
	for _, c := range a.clones.List() {
		h.Clones[string(c.Status)]++
		if c.Status == clone.StatusFatal {
			h.Problems = append(h.Problems, "clone "+c.ID+" failed: "+c.StatusMessage)
		}
	}
	for _, p := range h.Pools {
		if p.SizeBytes > 0 && p.FreeBytes < p.SizeBytes/20 {
			h.Problems = append(h.Problems, fmt.Sprintf("pool %s is nearly full (%d of %d bytes free)", p.Name, p.FreeBytes, p.SizeBytes))
		}
	}
	sev := events.Info
	if len(h.Problems) > 0 {
		h.Status, sev = "degraded", events.Warning
	}
	return events.Event{Kind: events.Health, Severity: sev, Message: h.Status}.WithData(h)
}
