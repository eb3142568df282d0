package clone

import (
	"context"
	"path/filepath"
	"time"

	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/agent/storage"
)

func (m *Manager) loop(ctx context.Context, interval time.Duration) {
	defer m.loops.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.CheckIdle(ctx)
		}
	}
}

// CheckIdle runs one pass of the background loop: ends expired
// protections, restarts clones whose postgres died, records activity
// (client connections) and starts deleting clones idle for longer than
// their maxIdleMinutes unless protected. It returns the IDs it started
// deleting. The loop calls it every CheckInterval; tests call it directly.
func (m *Manager) CheckIdle(ctx context.Context) []string {
	now := m.now()
	type item struct {
		spec      record
		protected bool
	}
	var items []item
	var notices []events.Event
	warnBefore := m.cfg.Cloning.ExpiryWarning()
	m.mu.Lock()
	for _, r := range m.clones {
		switch {
		case r.Protected && !r.ProtectedTill.IsZero() && !now.Before(r.ProtectedTill):
			m.log.Info("clone protection expired", "clone", r.ID)
			notices = append(notices, cloneEvent(events.CloneProtectionExpired, *r, events.Warning,
				"protection of clone "+r.ID+" ended; it can now be deleted when idle").WithData(protectionData{Till: r.ProtectedTill}))
			r.Protected = false
			r.ProtectedTill = time.Time{}
			r.ExpiryWarned = false
			r.LastActivity = now
			m.changedLocked()
		case r.Protected && !r.ProtectedTill.IsZero() && !r.ExpiryWarned && !now.Before(r.ProtectedTill.Add(-warnBefore)):
			m.log.Info("clone protection ends soon", "clone", r.ID, "till", r.ProtectedTill)
			notices = append(notices, cloneEvent(events.CloneProtectionExpiring, *r, events.Warning,
				"protection of clone "+r.ID+" ends at "+r.ProtectedTill.UTC().Format(time.RFC3339)+": extend it (PATCH /clone/"+r.ID+") to keep the clone").
				WithData(protectionData{Protected: true, Till: r.ProtectedTill}))
			r.ExpiryWarned = true
			m.changedLocked()
		}
		if r.Warm {
			continue // kept by the warm pool, not by idleness
		}
		if r.Status == StatusOK || r.Status == StatusFatal {
			items = append(items, item{spec: *r, protected: m.protectedNow(r, now)})
		}
	}
	m.mu.Unlock()
	if len(notices) > 0 {
		_ = m.save() // save logs a failure; the warning is sent again after a restart at worst
		for _, e := range notices {
			m.bus().Emit(e)
		}
	}

	m.refreshSizes(ctx)

	var deleted []string
	for _, it := range items {
		s := it.spec
		if s.Status == StatusOK && s.Hibernated {
			// No postgres to ask: idle since it went to sleep (a wake-up
			// moves LastActivity). Listen again if that failed before.
			if err := m.listenFor(s.ID, s.Port); err != nil {
				m.log.Warn("still cannot listen on a hibernated clone's port", "clone", s.ID, "port", s.Port, "err", err)
			}
		} else if s.Status == StatusOK && s.Mountpoint != "" {
			dataDir := filepath.Join(s.Mountpoint, storage.DataSubdir)
			if _, alive := m.rt.Running(dataDir); !alive {
				m.mu.Lock()
				r, ok := m.clones[s.ID]
				ok = ok && r.Status == StatusOK && !r.busy
				if ok {
					r.busy = true
				}
				m.mu.Unlock()
				if ok {
					m.restartClone(ctx, r)
					m.mu.Lock()
					r.busy = false
					m.mu.Unlock()
					_ = m.save() // save logs a failure, and the next change writes the state again
				}
				continue
			}
			n, err := m.clientConnections(ctx, dataDir, s.Port)
			if err != nil {
				m.log.Warn("cannot check clone activity", "clone", s.ID, "err", err)
				continue
			}
			if n > 0 {
				m.update(s.ID, func(r *record) { r.LastActivity = now })
				continue
			}
		}
		if it.protected || s.MaxIdle == 0 || now.Sub(s.LastActivity) < inMinutes(s.MaxIdle) {
			if s.Status == StatusOK {
				m.hibernateIdle(ctx, s, now)
			}
			continue
		}
		m.log.Info("deleting idle clone", "clone", s.ID, "idle_since", s.LastActivity, "max_idle_minutes", s.MaxIdle)
		if err := m.Destroy(ctx, s.ID); err != nil {
			m.log.Info("idle clone not deleted", "clone", s.ID, "err", err)
			continue
		}
		deleted = append(deleted, s.ID)
	}
	_ = m.save() // save logs a failure, and the next change writes the state again
	return deleted
}

// clientConnections counts client backends other than this check's own.
func (m *Manager) clientConnections(ctx context.Context, dataDir string, port int) (int, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := m.socketConnect(dataDir, port)(cctx, "postgres")
	if err != nil {
		var err2 error
		if conn, err2 = m.socketConnect(dataDir, port)(cctx, "template1"); err2 != nil {
			return 0, err
		}
	}
	defer func() { _ = conn.Close(context.Background()) }() // a failed goodbye loses nothing
	var n int
	err = conn.QueryRow(cctx, `SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity
	  WHERE backend_type OPERATOR(pg_catalog.=) 'client backend' AND pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid()`).Scan(&n)
	return n, err
}

// refreshSizes updates the clones' written bytes from the pools.
func (m *Manager) refreshSizes(ctx context.Context) {
	for _, p := range m.pools {
		list, err := p.Clones(ctx)
		if err != nil {
			continue
		}
		m.mu.Lock()
		byDataset := make(map[string]*record, len(m.clones))
		for _, r := range m.clones {
			byDataset[r.dataset()] = r
		}
		for _, c := range list {
			if r, ok := byDataset[c.Name]; ok && r.Pool == p.Name() {
				r.diffSize = c.UsedBytes
			}
		}
		m.mu.Unlock()
	}
}
