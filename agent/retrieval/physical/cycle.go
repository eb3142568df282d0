package physical

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

// ErrNoNewData is returned by a cycle that found no transaction replayed
// since the newest snapshot: a snapshot would repeat it (and its ID).
var ErrNoNewData = errors.New("no transaction replayed since the newest snapshot")

// errSimulatedKill ends a cycle the way a killed agent does (tests).
var errSimulatedKill = errors.New("simulated kill of the agent mid-cycle")

// cycle makes one snapshot of the standby's state; the standby keeps
// running and replaying throughout.
func (r *Retriever) cycle(ctx context.Context) (storage.Snapshot, error) {
	if err := r.recoverLeftovers(ctx); err != nil {
		return storage.Snapshot{}, err
	}
	if !r.hasCopy() {
		return storage.Snapshot{}, errors.New("the pool holds no copy yet: run a full refresh first")
	}
	if err := r.ensureStandby(ctx); err != nil {
		return storage.Snapshot{}, err
	}
	r.resumeLeftPause(ctx)
	latest := r.latestSnapshot(ctx)
	if r.cfg.PreSnapshot {
		return r.preSnapshot(ctx, latest)
	}
	return r.promotedSnapshot(ctx, latest)
}

// latestSnapshot is the dataStateAt of the newest snapshot the cycle made
// (zero if none).
func (r *Retriever) latestSnapshot(ctx context.Context) time.Time {
	snaps, err := r.pool.Snapshots(ctx)
	if err != nil {
		return time.Time{}
	}
	for _, s := range snaps {
		if k := s.Labels[LabelKind]; k == kindPromo || k == kindPre {
			return s.DataStateAt
		}
	}
	return time.Time{}
}

// PreSnapshot snapshots the unpromoted standby state now, whatever
// retrieval.physical.preSnapshot says: clones of it start as read-only hot
// standbys (standby.signal is in the snapshot).
func (r *Retriever) PreSnapshot(ctx context.Context) (storage.Snapshot, error) {
	if err := r.begin("snapshot"); err != nil {
		return storage.Snapshot{}, err
	}
	defer r.end()
	r.op.Lock()
	defer r.op.Unlock()
	if err := r.ensureStandby(ctx); err != nil {
		return storage.Snapshot{}, err
	}
	return r.preSnapshot(ctx, r.latestSnapshot(ctx))
}

func (r *Retriever) preSnapshot(ctx context.Context, latest time.Time) (storage.Snapshot, error) {
	conn, err := pgcluster.Connect(ctx, r.standby().SocketConnString(standbyPort, "postgres", "postgres"))
	if err != nil {
		return storage.Snapshot{}, fmt.Errorf("connect to the standby: %w", err)
	}
	defer func() { _ = conn.Close(context.Background()) }() // read-only session
	// A restartpoint first: a clone's start replays less.
	if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
		return storage.Snapshot{}, fmt.Errorf("restartpoint on the standby: %w", err)
	}
	// Replay pauses while the snapshot is taken, so that the snapshot
	// holds no transaction after dataStateAt: a point-in-time clone of it
	// may then aim at any moment from dataStateAt on (an earlier
	// consistency point than the target is what recovery needs).
	if err := pauseReplay(ctx, conn); err != nil {
		return storage.Snapshot{}, err
	}
	defer func() {
		if _, err := conn.Exec(context.Background(), "SELECT pg_catalog.pg_wal_replay_resume()"); err != nil {
			r.log.Error("resuming the standby's replay after a pre snapshot failed", "err", err)
		}
	}()
	at, err := replayTime(ctx, conn)
	if err != nil {
		return storage.Snapshot{}, err
	}
	var lsn string
	if err := conn.QueryRow(ctx, "SELECT pg_catalog.pg_last_wal_replay_lsn()::text").Scan(&lsn); err != nil {
		return storage.Snapshot{}, fmt.Errorf("read the standby's replay position: %w", err)
	}
	if !at.Truncate(time.Second).After(latest) {
		return storage.Snapshot{}, ErrNoNewData
	}
	if err := storage.SyncFS(r.pool.MainDir()); err != nil {
		return storage.Snapshot{}, err
	}
	return r.snapshotStandby(ctx, storage.SnapshotOptions{DataStateAt: at, Message: MessagePre, Labels: map[string]string{LabelKind: kindPre, LabelLSN: lsn, LabelReplayedAt: at.Format(time.RFC3339Nano)}})
}

// resumeLeftPause resumes the standby's replay if an agent killed during
// snapshotStandby's copy left it paused (the standby outlives the agent).
func (r *Retriever) resumeLeftPause(ctx context.Context) {
	if storage.SnapshotsAreAtomic(r.pool) {
		return // never paused
	}
	conn, err := pgcluster.Connect(ctx, r.standby().SocketConnString(standbyPort, "postgres", "postgres"))
	if err != nil {
		return // the cycle reports an unreachable standby itself
	}
	defer func() { _ = conn.Close(context.Background()) }() // a session of our own
	var state string
	if err := conn.QueryRow(ctx, "SELECT pg_get_wal_replay_pause_state()").Scan(&state); err != nil || state == "not paused" {
		return
	}
	r.log.Warn("the standby's replay was left paused (an interrupted snapshot copy); resuming it")
	if _, err := conn.Exec(ctx, "SELECT pg_wal_replay_resume()"); err != nil {
		r.log.Error("resuming the standby's replay failed", "err", err)
	}
}

// snapshotStandby snapshots main while the standby runs on it. An atomic
// snapshot (ZFS, LVM thin, btrfs) is a crash image of the standby, which
// a postgres started on it recovers. A pool that copies file by file (XFS
// reflink) gets a data directory that holds still for the copy: replay
// paused and a restartpoint made first, so no data file changes during
// the copy (hint bits aside, which no recovery depends on) and no WAL
// file is recycled, while WAL keeps streaming into pg_wal; replay resumes
// right after (each file's reflink copy is itself atomic).
func (r *Retriever) snapshotStandby(ctx context.Context, opt storage.SnapshotOptions) (storage.Snapshot, error) {
	if storage.SnapshotsAreAtomic(r.pool) {
		return r.pool.Snapshot(ctx, opt)
	}
	conn, err := pgcluster.Connect(ctx, r.standby().SocketConnString(standbyPort, "postgres", "postgres"))
	if err != nil {
		return storage.Snapshot{}, fmt.Errorf("connect to the standby: %w", err)
	}
	defer func() { _ = conn.Close(context.Background()) }() // a session of our own
	// A restartpoint while replay still runs, so that the one in the
	// pause has little left to write.
	if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
		return storage.Snapshot{}, fmt.Errorf("restartpoint on the standby: %w", err)
	}
	if _, err := conn.Exec(ctx, "SELECT pg_wal_replay_pause()"); err != nil {
		return storage.Snapshot{}, fmt.Errorf("pause the standby's replay for a file-by-file snapshot: %w", err)
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if _, err := conn.Exec(rctx, "SELECT pg_wal_replay_resume()"); err != nil {
			r.log.Error("resuming the standby's replay failed; it resumes when the standby restarts", "err", err)
		}
	}()
	for {
		var state string
		if err := conn.QueryRow(ctx, "SELECT pg_get_wal_replay_pause_state()").Scan(&state); err != nil {
			return storage.Snapshot{}, fmt.Errorf("read the standby's replay pause state: %w", err)
		}
		if state == "paused" {
			break
		}
		select {
		case <-ctx.Done():
			return storage.Snapshot{}, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
		return storage.Snapshot{}, fmt.Errorf("restartpoint on the paused standby: %w", err)
	}
	return r.pool.Snapshot(ctx, opt)
}

// promotedSnapshot is the cycle proper (see the package comment).
func (r *Retriever) promotedSnapshot(ctx context.Context, latest time.Time) (storage.Snapshot, error) {
	// Cheap check first: nothing new on the standby, nothing to do.
	if at, err := r.standbyReplayTime(ctx); err == nil && !at.IsZero() && !at.Truncate(time.Second).After(latest) {
		return storage.Snapshot{}, ErrNoNewData
	}
	tmp, err := r.snapshotStandby(ctx, storage.SnapshotOptions{DataStateAt: tempStateAt, Message: messageTemp, Labels: map[string]string{LabelKind: kindTemp, storage.LabelTransient: "true"}})
	if err != nil {
		return storage.Snapshot{}, fmt.Errorf("snapshot the standby's state: %w", err)
	}
	// Whatever happens below, the temporary clone and snapshot go; on a
	// fresh context, since ctx may be what ended the cycle.
	cleanup := true
	defer func() {
		if !cleanup {
			return
		}
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := r.recoverLeftovers(cctx); err != nil {
			r.log.Error("removing the cycle's temporary clone and snapshot failed; the next cycle retries", "err", err)
		}
	}()
	clone, err := r.pool.Clone(ctx, tmp.ID, tempClone)
	if err != nil {
		return storage.Snapshot{}, fmt.Errorf("temporary clone of the standby's state: %w", err)
	}
	c := r.throwaway(clone.Mountpoint)
	settings := map[string]string{
		"hot_standby":      "on",
		"archive_mode":     "off",
		"primary_conninfo": "",
		"restore_command":  "",
	}
	maps.Copy(settings, r.cfg.Settings)
	startCtx, cancel := context.WithTimeout(ctx, r.startTO)
	err = c.Start(startCtx, promotePort, "", settings)
	cancel()
	if err != nil {
		return storage.Snapshot{}, fmt.Errorf("start postgres on the temporary clone: %w", err)
	}
	defer func() {
		if cleanup {
			c.Kill() // a no-op once it stopped cleanly
		}
	}()
	if r.simulateKill {
		cleanup = false
		return storage.Snapshot{}, errSimulatedKill
	}
	at, err := r.promote(ctx, c)
	if err != nil {
		return storage.Snapshot{}, err
	}
	if !at.Truncate(time.Second).After(latest) {
		return storage.Snapshot{}, ErrNoNewData
	}
	if err := c.Stop(ctx, "fast"); err != nil {
		return storage.Snapshot{}, fmt.Errorf("stop the promoted postgres: %w", err)
	}
	if err := storage.SyncFS(clone.Mountpoint); err != nil {
		return storage.Snapshot{}, err
	}
	snap, err := r.snapper.SnapshotClone(ctx, tempClone, storage.SnapshotOptions{DataStateAt: at, Message: MessagePromoted, Labels: map[string]string{LabelKind: kindPromo}})
	if errors.Is(err, storage.ErrExists) {
		return storage.Snapshot{}, ErrNoNewData
	}
	if err != nil {
		return storage.Snapshot{}, fmt.Errorf("snapshot the promoted state: %w", err)
	}
	return snap, nil
}

// promote reads the last replayed transaction's time, promotes, turns off
// what must not follow the data into clones (archiving into the backup
// repository, fetching WAL from it) and checkpoints.
func (r *Retriever) promote(ctx context.Context, c *pgcluster.Cluster) (time.Time, error) {
	conn, err := pgcluster.Connect(ctx, c.SocketConnString(promotePort, "postgres", "postgres"))
	if err != nil {
		return time.Time{}, fmt.Errorf("connect to the temporary clone's postgres: %w", err)
	}
	defer func() { _ = conn.Close(context.Background()) }() // the server is stopped next
	at, err := replayTime(ctx, conn)
	if err != nil {
		return time.Time{}, err
	}
	if r.beforePromote != nil {
		r.beforePromote()
	}
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT pg_promote(true, 300)").Scan(&ok); err != nil || !ok {
		return time.Time{}, fmt.Errorf("promote the temporary clone's postgres (ok=%v): %v; log: %s", ok, err, pgcluster.TailFile(c.LogFile(), 10))
	}
	// The throwaway accepts connections once consistent, which may be
	// before it replayed all the WAL its copy holds (a large standby);
	// promotion replays the rest. The last replayed transaction's time
	// stays readable after promotion: read it again.
	var last pgtype.Timestamptz
	if err := conn.QueryRow(ctx, "SELECT pg_last_xact_replay_timestamp()").Scan(&last); err != nil {
		return time.Time{}, fmt.Errorf("read the last replayed transaction's time after promotion: %w", err)
	}
	if last.Valid && last.Time.After(at) {
		at = last.Time.UTC()
	}
	for _, q := range []string{
		"ALTER SYSTEM SET archive_mode = off",
		"ALTER SYSTEM RESET restore_command",
		"ALTER SYSTEM RESET primary_conninfo",
		"ALTER SYSTEM RESET primary_slot_name",
		"CHECKPOINT",
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			return time.Time{}, fmt.Errorf("%s on the promoted postgres: %w", q, err)
		}
	}
	return at, nil
}

// replayTime is pg_last_xact_replay_timestamp(), or, before any
// transaction was replayed, the time of the copy's checkpoint.
func replayTime(ctx context.Context, conn *pgx.Conn) (time.Time, error) {
	var ts pgtype.Timestamptz
	var ckpt time.Time
	if err := conn.QueryRow(ctx, "SELECT pg_last_xact_replay_timestamp(), (SELECT checkpoint_time FROM pg_control_checkpoint())").Scan(&ts, &ckpt); err != nil {
		return time.Time{}, fmt.Errorf("read the last replayed transaction's time: %w", err)
	}
	if ts.Valid {
		return ts.Time.UTC(), nil
	}
	return ckpt.UTC(), nil
}

func (r *Retriever) standbyReplayTime(ctx context.Context) (time.Time, error) {
	conn, err := pgcluster.Connect(ctx, r.standby().SocketConnString(standbyPort, "postgres", "postgres"))
	if err != nil {
		return time.Time{}, err
	}
	defer func() { _ = conn.Close(context.Background()) }() // read-only session
	var ts pgtype.Timestamptz
	if err := conn.QueryRow(ctx, "SELECT pg_last_xact_replay_timestamp()").Scan(&ts); err != nil || !ts.Valid {
		return time.Time{}, err
	}
	return ts.Time.UTC(), nil
}

// throwaway is the postgres of the temporary clone, run as
// provision.osUser: the clone holds the pool's data, no clone user's.
func (r *Retriever) throwaway(mountpoint string) *pgcluster.Cluster {
	dataDir := filepath.Join(mountpoint, storage.DataSubdir)
	bin, _ := pgcluster.BinDirFor(r.binRoot, dataDir) // Start reports a missing one
	return &pgcluster.Cluster{DataDir: dataDir, BinDir: bin, User: r.user, Logger: r.log, DieWithParent: r.dieWithParent}
}

// recoverLeftovers removes what an interrupted cycle left: the temporary
// clone (stopping its postgres first) and the temporary snapshot. A real
// snapshot is only ever made of a cleanly stopped, promoted postgres in
// one storage call, so no half-made one needs removing.
func (r *Retriever) recoverLeftovers(ctx context.Context) error {
	clones, err := r.pool.Clones(ctx)
	if err != nil {
		return fmt.Errorf("list clones: %w", err)
	}
	for _, cl := range clones {
		if cl.Name != tempClone {
			continue
		}
		r.throwaway(cl.Mountpoint).Kill()
		if err := r.pool.DestroyClone(ctx, cl.Name); err != nil && !errors.Is(err, storage.ErrNotFound) {
			return fmt.Errorf("remove the temporary clone %s: %w", cl.Name, err)
		}
		r.log.Info("temporary clone of a snapshot cycle removed", "clone", cl.Name)
	}
	snaps, err := r.pool.Snapshots(ctx)
	if err != nil {
		return fmt.Errorf("list snapshots: %w", err)
	}
	for _, s := range snaps {
		if s.Labels[LabelKind] != kindTemp {
			continue
		}
		if err := r.pool.DestroySnapshot(ctx, s.ID, false); err != nil && !errors.Is(err, storage.ErrNotFound) {
			return fmt.Errorf("remove the temporary snapshot %s: %w", s.ID, err)
		}
		r.log.Info("temporary snapshot of a snapshot cycle removed", "snapshot", s.ID)
	}
	return nil
}

// tailBuffer keeps the last 8 KiB written to it (a tool's output).
type tailBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf.Write(p)
	if t.buf.Len() > 8192 {
		keep := append([]byte(nil), t.buf.Bytes()[t.buf.Len()-8192:]...)
		t.buf.Reset()
		t.buf.Write(keep)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(t.buf.String())
}
