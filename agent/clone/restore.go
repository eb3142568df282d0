package clone

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/thinlab/thinlab/agent/runtime"
	"github.com/thinlab/thinlab/agent/storage"
)

// restore rebuilds the picture after a start (clean or after kill -9):
// the state file says what should exist, the pools and /proc say what
// does.
func (m *Manager) restore(ctx context.Context) error {
	recs, err := loadState(m.cfg.StateDir)
	if err != nil {
		return err
	}
	datasets := map[string]map[string]storage.Clone{} // pool -> name -> clone
	cloneParents := map[string]bool{}
	for _, pc := range m.cfg.Pools {
		if pc.ClonesDir != "" {
			cloneParents[filepath.Clean(pc.ClonesDir)] = true
		}
	}
	for _, p := range m.pools {
		list, err := p.Clones(ctx)
		if err != nil {
			return fmt.Errorf("list clones of pool %s: %w", p.Name(), err)
		}
		datasets[p.Name()] = map[string]storage.Clone{}
		for _, c := range list {
			datasets[p.Name()][c.Name] = c
			cloneParents[filepath.Dir(filepath.Clean(c.Mountpoint))] = true
		}
	}
	procs, err := runtime.Postmasters()
	if err != nil {
		m.log.Warn("cannot list postgres processes; orphan processes will not be cleaned up", "err", err)
	}
	running := map[string]runtime.Process{} // data dir -> postmaster
	for _, p := range procs {
		running[p.DataDir] = p
	}

	// State files written before verifiers hold the plaintext password:
	// keep it in memory for this restore (readiness checks log in with it)
	// and store only a verifier from now on.
	var migrate []*record
	for _, r := range recs {
		if r.Password != "" {
			r.password, r.Password = r.Password, ""
			migrate = append(migrate, r)
		}
	}

	var restart, rebuild, finishDelete []*record
	usedPorts := map[int]string{}
	usedUIDs := map[uint32]string{}
	for _, r := range recs {
		if r.Mountpoint != "" {
			cloneParents[filepath.Dir(filepath.Clean(r.Mountpoint))] = true
		}
		if _, ok := m.poolByName[r.Pool]; !ok {
			m.log.Warn("dropping clone of a pool that is no longer configured (its dataset, if any, is left alone)", "clone", r.ID, "pool", r.Pool)
			continue
		}
		ds, has := datasets[r.Pool][r.ID]
		if has {
			r.Mountpoint = ds.Mountpoint
			r.diffSize = ds.UsedBytes
		}
		if ids := m.cfg.Provision.CloneUIDs; r.UID != 0 && (r.UID < ids.From || r.UID > ids.To) {
			m.log.Warn("clone's OS uid is outside provision.cloneUIDs; giving it a new one", "clone", r.ID, "uid", r.UID)
			r.UID = 0
		}
		if r.UID != 0 {
			if other, dup := usedUIDs[r.UID]; dup {
				m.log.Error("two clones in the state share an OS uid; giving the second a new one", "uid", r.UID, "clone", r.ID, "other", other)
				r.UID = 0
			} else {
				usedUIDs[r.UID] = r.ID
			}
		}
		if r.Port > 0 {
			if other, dup := usedPorts[r.Port]; dup {
				m.log.Error("two clones in the state share a port; giving the second a new one", "port", r.Port, "clone", r.ID, "other", other)
				r.Port = 0
			} else {
				usedPorts[r.Port] = r.ID
			}
		}
		switch r.Status {
		case StatusCreating, StatusResetting:
			// The agent died mid-operation: clear what was half made and
			// build it again (the record has everything, including the
			// password verifier).
			rebuild = append(rebuild, r)
		case StatusDeleting:
			finishDelete = append(finishDelete, r)
		case StatusOK:
			if !has {
				m.log.Warn("dropping clone: its dataset is gone", "clone", r.ID, "pool", r.Pool)
				continue
			}
			dataDir := filepath.Join(ds.Mountpoint, storage.DataSubdir)
			p, ok := running[filepath.Clean(dataDir)]
			switch {
			case !ok:
				restart = append(restart, r)
			case r.UID == 0 || p.UID != r.UID:
				// Started by an agent without per-clone users (or as
				// another user): restart it as the clone's own user.
				m.log.Warn("clone's postgres runs as a shared OS user; restarting it as the clone's own", "clone", r.ID, "uid", p.UID)
				m.rt.KillPID(p)
				restart = append(restart, r)
			}
		case StatusFatal:
			// A failed create or reset left nothing behind but the record
			// (a failed restart may have left its dataset for inspection).
		default:
			m.log.Warn("dropping clone with an unknown status", "clone", r.ID, "status", r.Status)
			continue
		}
		m.clones[r.ID] = r
	}
	// Clones recorded before per-clone OS users get theirs now.
	for _, r := range m.clones {
		if r.UID == 0 {
			uid, err := m.allocUIDLocked()
			if err != nil {
				return err
			}
			r.UID = uid
		}
	}

	// Datasets that belong to no clone (names with ':' are the agent's own
	// internal datasets, never clones).
	owned := map[string]bool{}
	for _, r := range m.clones {
		if r.Mountpoint != "" {
			owned[filepath.Join(filepath.Clean(r.Mountpoint), storage.DataSubdir)] = true
		}
	}
	for _, p := range m.pools {
		for name, c := range datasets[p.Name()] {
			if _, ok := m.clones[name]; ok || strings.Contains(name, ":") {
				continue
			}
			m.log.Warn("destroying a clone dataset that belongs to no clone", "pool", p.Name(), "dataset", name)
			if pr, ok := running[filepath.Join(filepath.Clean(c.Mountpoint), storage.DataSubdir)]; ok {
				m.rt.KillPID(pr)
			}
			if err := m.rt.Release(runtime.Instance{Name: name, Mount: c.Mountpoint}); err != nil {
				m.log.Error("could not unmount an orphan dataset's idmapped mount", "pool", p.Name(), "dataset", name, "err", err)
			}
			if err := p.DestroyClone(ctx, name); err != nil {
				m.log.Error("could not destroy orphan dataset", "pool", p.Name(), "dataset", name, "err", err)
			}
		}
	}
	// Postmasters running in a clone location that no clone owns (for
	// example, a dataset destroyed under a running server).
	for _, p := range procs {
		if owned[p.DataDir] || filepath.Base(p.DataDir) != storage.DataSubdir {
			continue
		}
		if !cloneParents[filepath.Dir(filepath.Dir(p.DataDir))] {
			continue
		}
		if _, isClone := m.clones[filepath.Base(filepath.Dir(p.DataDir))]; isClone {
			continue
		}
		m.log.Warn("stopping a postgres that belongs to no clone", "pid", p.PID, "datadir", p.DataDir)
		m.rt.KillPID(p)
	}

	// Restart dead clones on their own ports, a few at a time.
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for _, r := range restart {
		wg.Add(1)
		sem <- struct{}{}
		go func(r *record) {
			defer wg.Done()
			defer func() { <-sem }()
			m.restartClone(ctx, r)
		}(r)
	}
	wg.Wait()
	for _, r := range migrate {
		if err := m.migratePassword(ctx, r); err != nil {
			return err
		}
	}

	for _, r := range rebuild {
		m.log.Info("finishing a clone operation interrupted by an agent restart", "clone", r.ID, "status", r.Status)
		if err := m.teardown(ctx, r.Pool, r.ID, r.Mountpoint, r.UID); err != nil {
			m.log.Error("could not clear a half-made clone", "clone", r.ID, "err", err)
		}
		r.Mountpoint = ""
		r.opStart = time.Now()
		if r.Port == 0 {
			port, err := m.allocPortLocked()
			if err != nil {
				r.Status, r.StatusMessage = StatusFatal, err.Error()
				continue
			}
			r.Port = port
		}
		spec := *r
		m.ops.Add(1)
		go func() {
			defer m.ops.Done()
			m.runBuild(spec, "")
		}()
	}
	for _, r := range finishDelete {
		spec := *r
		m.ops.Add(1)
		go func() {
			defer m.ops.Done()
			m.runDestroy(spec)
		}()
	}
	m.mu.Lock()
	for _, r := range recs {
		r.password = ""
	}
	m.changedLocked()
	m.mu.Unlock()
	if err := m.save(); err != nil {
		return err
	}
	m.log.Info("clones restored", "clones", len(m.clones), "restarted", len(restart), "resumed", len(rebuild)+len(finishDelete))
	return nil
}

// restartClone starts the postgres of a clone whose process died, on the
// same port; the users and passwords are in its data directory already.
func (m *Manager) restartClone(ctx context.Context, r *record) {
	m.mu.Lock()
	spec := *r
	m.mu.Unlock()
	dataDir := filepath.Join(spec.Mountpoint, storage.DataSubdir)
	m.log.Warn("clone's postgres is not running; restarting it", "clone", spec.ID, "port", spec.Port)
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	err := m.rt.Start(sctx, m.instance(spec, dataDir))
	if err == nil {
		err = m.checkLogin(sctx, spec, dataDir)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		m.log.Error("restarting clone failed", "clone", spec.ID, "err", err)
		r.Status = StatusFatal
		r.StatusMessage = "restart failed: " + err.Error()
	} else {
		r.LastActivity = m.now()
	}
	m.changedLocked()
}

// migratePassword gives a record read with a plaintext password its
// verifier: the one the clone's role already has when it matches the
// password (so that readiness probes of the running clone match its salt),
// otherwise a new one (a reset or rebuild applies it).
func (m *Manager) migratePassword(ctx context.Context, r *record) error {
	if r.Status == StatusOK && r.Mountpoint != "" {
		dataDir := filepath.Join(r.Mountpoint, storage.DataSubdir)
		if _, alive := m.rt.Running(dataDir); alive {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			conn, err := m.socketConnect(dataDir, r.Port)(cctx, "postgres")
			if err != nil {
				conn, err = m.socketConnect(dataDir, r.Port)(cctx, "template1")
			}
			if err == nil {
				var v string
				if conn.QueryRow(cctx, `SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname OPERATOR(pg_catalog.=) $1`, r.Username).Scan(&v) == nil && verifierMatches(v, r.password) {
					r.Verifier = v
				}
				conn.Close(context.Background())
			}
			cancel()
		}
	}
	if r.Verifier == "" || !verifierMatches(r.Verifier, r.password) {
		v, err := scramVerifier(r.password)
		if err != nil {
			return err
		}
		r.Verifier = v
	}
	m.log.Info("clone state migrated: the plaintext password is replaced by its SCRAM verifier", "clone", r.ID)
	return nil
}
