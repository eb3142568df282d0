package clone

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/agent/storage"
)

// SnapshotClone takes a snapshot of the clone's current state (a branch
// commit): opt describes it, Source is set to the clone. The clone must be
// OK; it is marked busy meanwhile, so it is neither reset nor destroyed
// under the snapshot.
//
// Consistency: a CHECKPOINT first writes every committed change to the
// data files and flushes the WAL up to it, so recovery from the snapshot
// replays little. On backends whose snapshot is one instant (ZFS, btrfs,
// LVM thin: storage.SnapshotsAreAtomic) the clone keeps running; the
// snapshot is then crash-consistent, the state of a server that lost
// power, which postgres recovers from by WAL replay when a clone of it
// starts (every transaction committed before the snapshot is there). On
// a reflink pool, which copies file by file, the clone's postgres is
// stopped cleanly for the copy and started again on the same port.
func (m *Manager) SnapshotClone(ctx context.Context, id string, opt storage.SnapshotOptions) (storage.Snapshot, error) {
	if err := m.Awake(ctx, id); err != nil {
		return storage.Snapshot{}, fmt.Errorf("wake clone %s for the snapshot: %w", id, err)
	}
	m.mu.Lock()
	rec, ok := m.clones[id]
	if !ok {
		m.mu.Unlock()
		return storage.Snapshot{}, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	if rec.Status != StatusOK || rec.busy || m.closed {
		m.mu.Unlock()
		return storage.Snapshot{}, fmt.Errorf("%w: clone %q is %s; a snapshot needs a clone that is OK", ErrNotReady, id, rec.Status)
	}
	pool, ok := m.poolByName[rec.Pool]
	if !ok {
		m.mu.Unlock()
		return storage.Snapshot{}, fmt.Errorf("pool %q of clone %s is not configured", rec.Pool, id)
	}
	rec.busy = true
	spec := *rec
	m.ops.Add(1)
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		if r, ok := m.clones[id]; ok {
			r.busy = false
		}
		m.changedLocked()
		m.mu.Unlock()
		m.ops.Done()
	}()

	dataDir := filepath.Join(spec.Mountpoint, storage.DataSubdir)
	if err := m.checkpoint(ctx, dataDir, spec.Port, spec.DBName); err != nil {
		return storage.Snapshot{}, fmt.Errorf("snapshot of clone %s: %w", id, err)
	}
	opt.Source = spec.dataset()
	if storage.SnapshotsAreAtomic(pool) {
		return pool.Snapshot(ctx, opt)
	}
	inst := m.instance(spec, dataDir)
	if err := m.rt.Stop(ctx, inst, "fast"); err != nil {
		return storage.Snapshot{}, fmt.Errorf("snapshot of clone %s: stop its postgres for the copy: %w", id, err)
	}
	// The copy must read the dataset as it is on disk (owned by the
	// pool's user), not through the idmapped mount that shows it as the
	// clone's uid; Start mounts it again.
	var snap storage.Snapshot
	serr := m.rt.Release(inst)
	if serr == nil {
		snap, serr = pool.Snapshot(ctx, opt)
	}
	// Started again even if the snapshot failed: the clone stays usable.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	if err := m.rt.Start(sctx, inst); err != nil {
		m.log.Error("clone's postgres did not start again after a snapshot", "clone", id, "err", err)
		m.update(id, func(r *record) {
			r.Status = StatusFatal
			r.StatusMessage = "restart after snapshot failed: " + err.Error()
		})
		return snap, errors.Join(serr, fmt.Errorf("clone %s did not start again after the snapshot: %w", id, err))
	}
	return snap, serr
}

// checkpoint runs CHECKPOINT in the clone as the agent's bootstrap
// superuser over the socket. CHECKPOINT runs no user code (no event
// trigger fires for it), so a hostile clone cannot make it do more.
// Any database will do: the clone's users may have dropped "postgres".
func (m *Manager) checkpoint(ctx context.Context, dataDir string, port int, dbName string) error {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	var conn *pgx.Conn
	var err error
	for _, db := range []string{"postgres", dbName, "template1"} {
		if conn, err = m.socketConnect(dataDir, port)(cctx, db); err == nil {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("connect for CHECKPOINT: %w", err)
	}
	defer func() { _ = conn.Close(context.Background()) }() // a failed goodbye loses nothing
	if _, err := conn.Exec(cctx, "CHECKPOINT"); err != nil {
		return fmt.Errorf("CHECKPOINT: %w", err)
	}
	return nil
}
