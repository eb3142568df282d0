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
// does. It runs in phases: inventory (what exists), adopt (which recorded
// clones are kept and what each needs), reap orphans (datasets and
// postmasters of no clone), resume (restart, rebuild, finish deletes).
func (m *Manager) restore(ctx context.Context) error {
	recs, err := loadState(m.cfg.StateDir)
	if err != nil {
		return err
	}
	inv, err := m.inventory(ctx)
	if err != nil {
		return err
	}
	plan, err := m.adopt(recs, inv)
	if err != nil {
		return err
	}
	m.reapOrphans(ctx, inv)
	if err := m.resume(ctx, plan); err != nil {
		return err
	}
	m.mu.Lock()
	for _, r := range recs {
		r.password = ""
	}
	m.changedLocked()
	n := len(m.clones)
	m.mu.Unlock()
	if err := m.save(); err != nil {
		return err
	}
	m.log.Info("clones restored", "clones", n, "restarted", len(plan.restart), "resumed", len(plan.rebuild)+len(plan.finishDelete))
	return nil
}

// inventory is what exists at start, whatever the state file says.
type inventory struct {
	datasets map[string]map[string]storage.Clone // pool -> name -> clone
	// cloneParents are the directories clone datasets are mounted in: a
	// postmaster there that no clone owns is an orphan.
	cloneParents map[string]bool
	procs        []runtime.Process
	running      map[string]runtime.Process // data dir -> postmaster
}

// inventory lists the clone datasets of every pool and the running
// postmasters.
func (m *Manager) inventory(ctx context.Context) (*inventory, error) {
	inv := &inventory{
		datasets:     map[string]map[string]storage.Clone{},
		cloneParents: map[string]bool{},
		running:      map[string]runtime.Process{},
	}
	for _, pc := range m.cfg.Pools {
		if pc.ClonesDir != "" {
			inv.cloneParents[filepath.Clean(pc.ClonesDir)] = true
		}
	}
	for _, p := range m.pools {
		list, err := p.Clones(ctx)
		if err != nil {
			return nil, fmt.Errorf("list clones of pool %s: %w", p.Name(), err)
		}
		inv.datasets[p.Name()] = map[string]storage.Clone{}
		for _, c := range list {
			inv.datasets[p.Name()][c.Name] = c
			inv.cloneParents[filepath.Dir(filepath.Clean(c.Mountpoint))] = true
		}
	}
	procs, err := runtime.Postmasters()
	if err != nil {
		m.log.Warn("cannot list postgres processes; orphan processes will not be cleaned up", "err", err)
	}
	inv.procs = procs
	for _, p := range procs {
		inv.running[p.DataDir] = p
	}
	return inv, nil
}

// restorePlan is what adopt decided the recorded clones need.
type restorePlan struct {
	// restart: OK clones whose postgres is not running (as their own user).
	restart []*record
	// rebuild: creates and resets the agent died in the middle of.
	rebuild []*record
	// finishDelete: deletes the agent died in the middle of.
	finishDelete []*record
	// migrate: records read with a plaintext password.
	migrate []*record
	// hibernated: clones asleep, listened on again.
	hibernated []*record
}

// adopt takes the recorded clones that can still be served into the
// manager (fixing duplicate ports and uids, giving each its own OS uid)
// and sorts them by what they need to run again.
func (m *Manager) adopt(recs []*record, inv *inventory) (restorePlan, error) {
	var plan restorePlan
	// State files written before verifiers hold the plaintext password:
	// keep it in memory for this restore (readiness checks log in with it)
	// and store only a verifier from now on.
	for _, r := range recs {
		if r.Password != "" {
			r.password, r.Password = r.Password, ""
			plan.migrate = append(plan.migrate, r)
		}
	}

	var kept []*record
	usedPorts := map[int]string{}
	usedUIDs := map[uint32]string{}
	for _, r := range recs {
		if r.Mountpoint != "" {
			inv.cloneParents[filepath.Dir(filepath.Clean(r.Mountpoint))] = true
		}
		if _, ok := m.poolByName[r.Pool]; !ok {
			m.log.Warn("dropping clone of a pool that is no longer configured (its dataset, if any, is left alone)", "clone", r.ID, "pool", r.Pool)
			continue
		}
		ds, has := inv.datasets[r.Pool][r.dataset()]
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
		if r.Warm && r.Status != StatusDeleting {
			// Warm clones are not carried over a restart: one may have
			// been half taken (a user's role made in it) when the agent
			// died. They are deleted and the warm pool is refilled.
			r.Status = StatusDeleting
		}
		switch r.Status {
		case StatusCreating, StatusResetting:
			// The agent died mid-operation: clear what was half made and
			// build it again (the record has everything, including the
			// password verifier).
			plan.rebuild = append(plan.rebuild, r)
		case StatusDeleting:
			plan.finishDelete = append(plan.finishDelete, r)
		case StatusOK:
			if !has {
				m.log.Warn("dropping clone: its dataset is gone", "clone", r.ID, "pool", r.Pool)
				continue
			}
			dataDir := filepath.Join(ds.Mountpoint, storage.DataSubdir)
			p, ok := inv.running[filepath.Clean(dataDir)]
			switch {
			case !ok && r.Hibernated:
				plan.hibernated = append(plan.hibernated, r)
			case !ok:
				plan.restart = append(plan.restart, r)
			case r.UID == 0 || p.UID != r.UID:
				// Started by an agent without per-clone users (or as
				// another user): restart it as the clone's own user.
				m.log.Warn("clone's postgres runs as a shared OS user; restarting it as the clone's own", "clone", r.ID, "uid", p.UID)
				m.rt.KillPID(p)
				plan.restart = append(plan.restart, r)
			default:
				// Woken (by a connection or the agent) just before the
				// agent died, before the record said so.
				r.Hibernated = false
			}
		case StatusFatal:
			// A failed create or reset left nothing behind but the record
			// (a failed restart may have left its dataset for inspection).
		default:
			m.log.Warn("dropping clone with an unknown status", "clone", r.ID, "status", r.Status)
			continue
		}
		kept = append(kept, r)
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range kept {
		m.clones[r.ID] = r
	}
	// Clones recorded before per-clone OS users get theirs now.
	for _, r := range kept {
		if r.UID == 0 {
			uid, err := m.allocUIDLocked()
			if err != nil {
				return plan, err
			}
			r.UID = uid
		}
	}
	return plan, nil
}

// reapOrphans destroys the clone datasets that belong to no clone (names
// with ':' are the agent's own internal datasets, never clones) and stops
// the postmasters running in a clone location that no clone owns (for
// example, a dataset destroyed under a running server).
func (m *Manager) reapOrphans(ctx context.Context, inv *inventory) {
	m.mu.Lock()
	ids := map[string]bool{}
	owned := map[string]bool{}
	for _, r := range m.clones {
		ids[r.dataset()] = true
		if r.Mountpoint != "" {
			owned[filepath.Join(filepath.Clean(r.Mountpoint), storage.DataSubdir)] = true
		}
	}
	m.mu.Unlock()

	for _, p := range m.pools {
		for name, c := range inv.datasets[p.Name()] {
			if ids[name] || strings.Contains(name, ":") {
				continue
			}
			m.log.Warn("destroying a clone dataset that belongs to no clone", "pool", p.Name(), "dataset", name)
			if pr, ok := inv.running[filepath.Join(filepath.Clean(c.Mountpoint), storage.DataSubdir)]; ok {
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
	for _, p := range inv.procs {
		if owned[p.DataDir] || filepath.Base(p.DataDir) != storage.DataSubdir {
			continue
		}
		if !inv.cloneParents[filepath.Dir(filepath.Dir(p.DataDir))] {
			continue
		}
		if ids[filepath.Base(filepath.Dir(p.DataDir))] {
			continue
		}
		m.log.Warn("stopping a postgres that belongs to no clone", "pid", p.PID, "datadir", p.DataDir)
		m.rt.KillPID(p)
	}
}

// resume restarts dead clones (and waits for them), migrates plaintext
// passwords, clears what interrupted creates and resets made, then starts
// in the background the rebuilds and deletes the agent died in the middle
// of.
func (m *Manager) resume(ctx context.Context, plan restorePlan) error {
	m.restartDead(ctx, plan.restart)
	// No build runs yet: the records may be changed without the lock.
	for _, r := range plan.migrate {
		if err := m.migratePassword(ctx, r); err != nil {
			return err
		}
	}
	// Every half-made clone is cleared before the first build starts: a
	// teardown lists the pool's clones, and measuring a clone while a build
	// mounts it can fail the listing (and leave the half-made dataset in
	// the way of its rebuild).
	for _, r := range plan.rebuild {
		m.clearHalfMade(ctx, r)
	}
	for _, r := range plan.finishDelete {
		m.mu.Lock()
		spec := *r
		m.ops.Add(1)
		m.mu.Unlock()
		go func() {
			defer m.ops.Done()
			m.runDestroy(spec)
		}()
	}
	for _, r := range plan.rebuild {
		m.resumeBuild(r)
	}
	for _, r := range plan.hibernated {
		m.mu.Lock()
		id, port := r.ID, r.Port
		m.mu.Unlock()
		if err := m.listenFor(id, port); err != nil {
			m.log.Error("cannot listen on a hibernated clone's port; the idle loop tries again", "clone", id, "port", port, "err", err)
		}
	}
	return nil
}

// restartDead restarts dead clones on their own ports, a few at a time.
func (m *Manager) restartDead(ctx context.Context, restart []*record) {
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
}

// clearHalfMade removes what an interrupted create or reset made.
func (m *Manager) clearHalfMade(ctx context.Context, r *record) {
	m.mu.Lock()
	pool, id, mount, uid, status := r.Pool, r.dataset(), r.Mountpoint, r.UID, r.Status
	m.mu.Unlock()
	m.log.Info("finishing a clone operation interrupted by an agent restart", "clone", id, "status", status)
	if err := m.teardown(ctx, pool, id, mount, uid); err != nil {
		m.log.Error("could not clear a half-made clone", "clone", id, "err", err)
	}
}

// resumeBuild builds a cleared clone again in the background. The builds
// started before it read and write the records (their saves copy every
// record, a port move allocates), so the record and the port allocation
// are changed under the lock.
func (m *Manager) resumeBuild(r *record) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r.Mountpoint = ""
	r.opStart = time.Now()
	if r.Port == 0 {
		port, err := m.allocPortLocked()
		if err != nil {
			r.Status, r.StatusMessage = StatusFatal, err.Error()
			m.changedLocked()
			return
		}
		r.Port = port
	}
	spec := *r
	m.ops.Go(func() {
		m.runBuild(spec, "")
	})
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
	var err error
	if spec.ReplicaOf != "" {
		// The passfile lives under /run: gone after a reboot.
		err = m.prepareReplica(spec, dataDir, false)
	}
	if err == nil {
		err = m.rt.Start(sctx, m.instance(spec, dataDir))
	}
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
				_ = conn.Close(context.Background()) // a failed goodbye loses nothing
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
