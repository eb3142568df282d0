package clone

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rs/xid"

	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/agent/runtime"
	"github.com/thinlab/thinlab/agent/storage"
)

// Warm clones: cloning.warm.count clones of the newest snapshot kept
// started and idle, each with its own port, uid and dataset, and no user
// of its own (every login role of the snapshot has a random password, as
// in any clone). A create that fits (that snapshot, default database and
// settings) takes one: it only creates the user's role and renames the
// record, so it is ready in the time of a role change. The pool is
// refilled in the background, recycled when a newer snapshot arrives, and
// its memory (PSS of its processes) is bounded by cloning.warm.maxMemoryMiB.

// WarmPrefix starts the ids (and dataset names) of warm clones.
const WarmPrefix = "thinlab-warm-"

// WarmStats describe the warm pool (for status and metrics).
type WarmStats struct {
	// Target is cloning.warm.count.
	Target int
	// Ready are started and waiting to be taken; Starting are being built.
	Ready, Starting int
	// SnapshotID is the snapshot warm clones are made of ("" when none).
	SnapshotID string
	// PSSBytes is the proportional set size of the warm clones' processes
	// at the last refill pass; MaxBytes the configured bound (0: none).
	PSSBytes, MaxBytes uint64
	// Taken counts creates served by a warm clone since the agent started.
	Taken uint64
}

// Warm returns the warm pool's state.
func (m *Manager) Warm() WarmStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	w := m.cfg.Cloning.Warm
	st := WarmStats{Target: w.Count, MaxBytes: uint64(w.MaxMemoryMiB) << 20, PSSBytes: m.warmPSS, Taken: m.warmTaken, SnapshotID: m.warmSnapshot}
	for _, r := range m.clones {
		if !r.Warm {
			continue
		}
		switch r.Status {
		case StatusOK:
			st.Ready++
		case StatusCreating:
			st.Starting++
		}
	}
	return st
}

// kickWarm asks the warm loop for a refill pass soon.
func (m *Manager) kickWarm() {
	select {
	case m.warmKick <- struct{}{}:
	default:
	}
}

func (m *Manager) warmLoop(ctx context.Context, interval time.Duration) {
	defer m.loops.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		m.FillWarm(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-m.warmKick:
		}
	}
}

// FillWarm runs one pass of the warm pool: recycles warm clones of an
// older snapshot and failed ones, keeps their memory under the bound, and
// builds at most one new warm clone (one at a time, so a refill never
// crowds out users' creates). The loop calls it; tests call it directly.
func (m *Manager) FillWarm(ctx context.Context) {
	want := m.cfg.Cloning.Warm.Count
	var snapID string
	if want > 0 {
		snap, err := m.resolveSnapshot(ctx, "")
		if err != nil {
			if !errors.Is(err, ErrNoSnapshots) {
				m.log.Warn("warm clones: cannot find the newest snapshot", "err", err)
			}
			want = 0
		} else {
			snapID = snap.ID
		}
	}
	type warmRec struct {
		id     string
		status StatusCode
		uid    uint32
		stale  bool
		busy   bool
		ts     time.Time
	}
	var warm []warmRec
	m.mu.Lock()
	m.warmSnapshot = snapID
	for _, r := range m.clones {
		if r.Warm {
			warm = append(warm, warmRec{id: r.ID, status: r.Status, uid: r.UID, stale: r.SnapshotID != snapID, busy: r.busy, ts: r.CreatedAt})
		}
	}
	m.mu.Unlock()
	slices.SortFunc(warm, func(a, b warmRec) int { return a.ts.Compare(b.ts) })

	var pss uint64
	ready, live := 0, 0
	var newest string
	for _, w := range warm {
		switch {
		case w.status == StatusFatal || (w.status == StatusOK && (w.stale || want == 0)):
			if !w.busy {
				m.log.Info("recycling a warm clone", "warm", w.id, "status", w.status, "stale", w.stale)
				if err := m.Destroy(ctx, w.id); err != nil {
					m.log.Warn("warm clone not recycled", "warm", w.id, "err", err)
				}
			}
		case w.status == StatusOK:
			pss += runtime.PSSOfUID(w.uid)
			ready++
			live++
			newest = w.id
		case w.status == StatusCreating:
			live++
		}
	}
	m.mu.Lock()
	m.warmPSS = pss
	m.mu.Unlock()
	if want == 0 {
		return
	}
	limit := uint64(m.cfg.Cloning.Warm.MaxMemoryMiB) << 20
	if limit > 0 && pss > limit && newest != "" {
		m.log.Info("warm clones use more memory than cloning.warm.maxMemoryMiB; removing one", "pss_bytes", pss, "max_bytes", limit)
		if err := m.Destroy(ctx, newest); err != nil {
			m.log.Warn("warm clone not removed", "warm", newest, "err", err)
		}
		return
	}
	if live >= want {
		return
	}
	if limit > 0 && ready > 0 && pss+pss/uint64(ready) > limit {
		return // one more would cross the bound
	}
	if err := m.buildWarm(ctx, snapID); err != nil {
		m.log.Warn("warm clone not built", "err", err)
	}
	m.measureWarm()
}

// measureWarm records the PSS of the ready warm clones' processes.
func (m *Manager) measureWarm() {
	m.mu.Lock()
	var uids []uint32
	for _, r := range m.clones {
		if r.Warm && r.Status == StatusOK {
			uids = append(uids, r.UID)
		}
	}
	m.mu.Unlock()
	var pss uint64
	for _, uid := range uids {
		pss += runtime.PSSOfUID(uid)
	}
	m.mu.Lock()
	m.warmPSS = pss
	m.mu.Unlock()
}

// buildWarm makes one warm clone of snapID and waits for it.
func (m *Manager) buildWarm(ctx context.Context, snapID string) error {
	snap, err := m.resolveSnapshot(ctx, snapID)
	if err != nil {
		return err
	}
	id := WarmPrefix + xid.New().String()
	now := m.now()
	rec := &record{
		ID:            id,
		Pool:          snap.Pool,
		SnapshotID:    snap.ID,
		Status:        StatusCreating,
		StatusMessage: MessageCreating,
		DBName:        m.cfg.Provision.CloneDefaults.DBName,
		CreatedAt:     now,
		LastActivity:  now,
		LogicalSize:   snap.LogicalSize,
		Warm:          true,
		opStart:       time.Now(),
	}
	if rec.Pool == "" {
		if p, _, err := storage.ParseSnapshotID(snap.ID); err == nil {
			rec.Pool = p
		}
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return errors.New("clone manager is shutting down")
	}
	if rec.Port, err = m.allocPortLocked(); err != nil {
		m.mu.Unlock()
		return err
	}
	if rec.UID, err = m.allocUIDLocked(); err != nil {
		m.mu.Unlock()
		return err
	}
	m.clones[id] = rec
	m.changedLocked()
	spec := *rec
	m.ops.Add(1)
	m.mu.Unlock()
	defer m.ops.Done()
	if err := m.save(); err != nil {
		m.remove(id)
		return err
	}
	m.runBuild(spec, "")
	m.mu.Lock()
	defer m.mu.Unlock()
	if r, ok := m.clones[id]; ok && r.Status != StatusOK {
		return fmt.Errorf("warm clone %s: %s", id, r.StatusMessage)
	}
	return nil
}

// warmFits reports whether a create can be served by a warm clone: the
// default database, no extra settings (a warm clone runs with the
// defaults).
func (m *Manager) warmFits(dbName string, extraConf map[string]string) bool {
	return m.cfg.Cloning.Warm.Count > 0 && len(extraConf) == 0 && dbName == m.cfg.Provision.CloneDefaults.DBName
}

// warmSnapshotInfo describes snapshot id from a ready warm clone of it,
// when a create of it fits one (ok false: resolve it from the pool).
func (m *Manager) warmSnapshotInfo(id, dbName string, extraConf map[string]string) (storage.Snapshot, bool) {
	if id == "" || !m.warmFits(dbName, extraConf) {
		return storage.Snapshot{}, false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range m.clones {
		if r.Warm && r.Status == StatusOK && !r.busy && r.SnapshotID == id {
			return storage.Snapshot{ID: r.SnapshotID, Pool: r.Pool, LogicalSize: r.LogicalSize}, true
		}
	}
	return storage.Snapshot{}, false
}

// takeWarm gives rec (a create request's record, not yet registered) a
// warm clone of its snapshot, if one is ready: the warm record becomes
// rec, keeping the warm clone's dataset, mountpoint, port and uid, and
// the user's role is created in it. It returns false (and changes
// nothing) when no warm clone fits.
func (m *Manager) takeWarm(ctx context.Context, rec *record, password string) (Clone, bool, error) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return Clone{}, false, nil
	}
	if _, ok := m.clones[rec.ID]; ok {
		m.mu.Unlock()
		return Clone{}, true, fmt.Errorf("%w: %q (choose another id or destroy it first)", ErrExists, rec.ID)
	}
	var w *record
	for _, r := range m.clones {
		if r.Warm && r.Status == StatusOK && !r.busy && r.SnapshotID == rec.SnapshotID && r.Pool == rec.Pool && (w == nil || r.CreatedAt.Before(w.CreatedAt)) {
			w = r
		}
	}
	if w == nil {
		m.mu.Unlock()
		return Clone{}, false, nil
	}
	delete(m.clones, w.ID)
	rec.Dataset = w.dataset()
	rec.Port = w.Port
	rec.UID = w.UID
	rec.Mountpoint = w.Mountpoint
	rec.diffSize = w.diffSize
	rec.busy = true
	m.clones[rec.ID] = rec
	m.warmTaken++
	m.changedLocked()
	spec := *rec
	spec.password = password
	m.ops.Add(1)
	m.mu.Unlock()
	defer m.ops.Done()
	defer m.kickWarm()
	// Not saved before the role is made: an agent killed from here on
	// finds the warm record and deletes it (restore never keeps warm
	// clones), so the clone with this user's role in it is never handed
	// out again.
	m.log.Info("creating clone from a warm clone", "clone", rec.ID, "warm", w.ID, "snapshot", rec.SnapshotID, "port", rec.Port, "user", rec.Username, "restricted", rec.Restricted)
	m.emit(events.CloneCreating, spec, events.Info, MessageCreating)

	dataDir := filepath.Join(spec.Mountpoint, storage.DataSubdir)
	t1 := time.Now()
	err := setupUserLocked(ctx, m.socketConnect(dataDir, spec.Port), spec.Username, spec.Verifier, spec.Restricted, true)
	t2 := time.Now()
	if err == nil {
		err = m.checkLogin(ctx, spec, dataDir)
	}
	t3 := time.Now()
	if err != nil {
		// Like a failed create: nothing left but the FATAL record.
		m.log.Error("clone from a warm clone failed", "clone", spec.ID, "err", err)
		if rerr := m.teardown(context.Background(), spec.Pool, spec.dataset(), spec.Mountpoint, spec.UID); rerr != nil {
			m.log.Error("clone rollback failed", "clone", spec.ID, "err", rerr)
		}
		m.emit(events.CloneFailed, spec, events.Error, err.Error())
		m.update(spec.ID, func(r *record) {
			r.busy = false
			r.Status = StatusFatal
			r.StatusMessage = err.Error()
			r.Mountpoint = ""
			r.Port = 0
		})
		c, _ := m.Get(spec.ID)
		return c, true, nil
	}
	took := time.Since(spec.opStart)
	m.update(spec.ID, func(r *record) {
		r.busy = false
		r.Status = StatusOK
		r.StatusMessage = MessageOK
		r.CloningTime = took
		r.LastActivity = m.now()
	})
	m.emit(events.CloneReady, spec, events.Info, MessageOK)
	m.mu.Lock()
	m.times = append(m.times, took)
	if len(m.times) > 20 {
		m.times = m.times[len(m.times)-20:]
	}
	m.mu.Unlock()
	m.log.Info("clone ready", "clone", spec.ID, "took", took, "warm", true,
		"before", t1.Sub(spec.opStart), "user", t2.Sub(t1), "login", t3.Sub(t2), "done", time.Since(t3))
	c, err := m.Get(spec.ID)
	return c, true, err
}

// lockLogins gives every login role of a warm clone a random password:
// until a create takes it, nobody may log in (not with the snapshot's
// production passwords either).
func lockLogins(ctx context.Context, connect func(ctx context.Context, db string) (*pgx.Conn, error)) error {
	other, err := randomVerifier()
	if err != nil {
		return err
	}
	conn, err := connect(ctx, "postgres")
	if err != nil {
		var err2 error
		if conn, err2 = connect(ctx, "template1"); err2 != nil {
			return fmt.Errorf("connect to the warm clone as %s: %w", bootstrapSuperuser, err)
		}
	}
	defer func() { _ = conn.Close(context.Background()) }() // a failed goodbye loses nothing
	if _, err := conn.Exec(ctx, `SET synchronous_commit = on`); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, `SELECT pg_catalog.set_config('thinlab.other', $1, false)`, other); err != nil {
		return err
	}
	_, err = conn.Exec(ctx, `
DO $do$
DECLARE
  other text := pg_catalog.current_setting('thinlab.other');
  r record;
BEGIN
  FOR r IN SELECT rolname FROM pg_catalog.pg_roles WHERE rolcanlogin LOOP
    EXECUTE pg_catalog.format('ALTER ROLE %I PASSWORD %L', r.rolname, other);
  END LOOP;
END
$do$`)
	return err
}
