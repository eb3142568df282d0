package physical

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/pgcluster"
	"github.com/thinlab/thinlab/internal/pgtest"
)

// cloneArchive is what the agent wires (agent.PhysicalArchive); the
// agent package imports this one, so the test has its own.
type cloneArchive struct{ r *Retriever }

func (a cloneArchive) Base(ctx context.Context, t clone.PointInTime) (string, error) {
	b, err := a.r.ArchiveWindow(ctx).CheckTarget(Target{Time: t.Time, LSN: t.LSN})
	return b.SnapshotID, err
}

func (a cloneArchive) Recover(ctx context.Context, dataDir string, t clone.PointInTime) error {
	return a.r.RecoverTo(ctx, dataDir, Target{Time: t.Time, LSN: t.LSN})
}

const pitPassword = "Point-In-Time-Recovery-Pass-93"

// pitrEnv is a physical pool whose source archives into a plain archive
// directory, with a clone manager using that archive.
type pitrEnv struct {
	*harness
	archive string
	m       *clone.Manager
}

func newPITREnv(t testing.TB) *pitrEnv {
	t.Helper()
	e := &pitrEnv{}
	e.harness = newHarness(t, config.ToolBasebackup, func(h *harness) {
		e.archive = filepath.Join(toolDir(t), "archive")
		u := pgtest.OSUser(t)
		if err := os.Mkdir(e.archive, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(e.archive, int(u.UID), int(u.GID)); err != nil {
			t.Fatal(err)
		}
		h.cfg.Retrieval.Physical.ArchiveDir = e.archive
		h.restartSource(map[string]string{"archive_mode": "on", "archive_command": fmt.Sprintf("cp %%p %s/%%f", e.archive)})
	})
	if err := e.r.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	e.startManager()
	return e
}

// startManager gives the environment a clone manager using the pool's
// archive.
func (e *pitrEnv) startManager() {
	t := e.t
	cfg := clonetest.Config(t, e.pool, 4)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	m, err := clone.NewManager(t.Context(), clone.Options{Config: cfg, Pools: []storage.Pool{e.pool}, CheckInterval: -1,
		Archive: func(pool string) clone.Archive {
			if pool != e.pool.Name() {
				return nil
			}
			return cloneArchive{e.r}
		}})
	if err != nil {
		t.Fatal(err)
	}
	e.m = m
	// Registered after the pool: runs before its unmount.
	t.Cleanup(func() {
		_ = m.Close()
		clonetest.KillClones(e.pool)
	})
}

func (e *pitrEnv) create(r clone.CreateRequest) clone.Clone {
	e.t.Helper()
	r.Username, r.Password = "alice", pitPassword
	if _, err := e.m.Create(e.t.Context(), r); err != nil {
		e.t.Fatalf("create %s: %v", r.ID, err)
	}
	return e.waitOK(r.ID)
}

func (e *pitrEnv) waitOK(id string) clone.Clone {
	e.t.Helper()
	c, err := e.m.Wait(e.t.Context(), id)
	if err != nil || c.Status != clone.StatusOK {
		e.t.Fatalf("clone %s: %v %s %s, want OK", id, err, c.Status, c.StatusMessage)
	}
	return c
}

func (e *pitrEnv) conn(c clone.Clone) *pgx.Conn {
	e.t.Helper()
	cc, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d user=alice dbname=postgres sslmode=disable", c.Host, c.Port))
	if err != nil {
		e.t.Fatal(err)
	}
	cc.Password = pitPassword
	conn, err := pgx.ConnectConfig(e.t.Context(), cc)
	if err != nil {
		e.t.Fatalf("log in to clone %s on port %d with its password: %v", c.ID, c.Port, err)
	}
	e.t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func (e *pitrEnv) scan(conn *pgx.Conn, sql string) string {
	e.t.Helper()
	var s string
	if err := conn.QueryRow(e.t.Context(), sql).Scan(&s); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
	return s
}

// waitArchived waits until the archive window reaches at.
func (e *pitrEnv) waitArchived(at time.Time) ArchiveWindow {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		w := e.r.ArchiveWindow(e.t.Context())
		if w.Available && !w.To.Before(at) {
			return w
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("the archive window did not reach %s within 30 s: %+v", at, w)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestPointInTimeClone: rows committed after a snapshot and deleted later
// are in a clone made at a time between; a target outside the archive
// window is refused naming the window; a reset to a later point in time
// (and to an LSN) keeps the port and the password; the clone reads
// neither the archive nor any restore_command.
func TestPointInTimeClone(t *testing.T) {
	e := newPITREnv(t)
	ctx := t.Context()
	e.insert("base")
	e.waitReplayed("base")
	pre, err := e.r.PreSnapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e.src.Exec(t, "postgres", "INSERT INTO t (note) VALUES ('doomed-1'), ('doomed-2')")
	time.Sleep(100 * time.Millisecond)
	beforeDelete := time.Now()
	time.Sleep(100 * time.Millisecond)
	e.src.Exec(t, "postgres", "DELETE FROM t WHERE note LIKE 'doomed-%'")
	time.Sleep(100 * time.Millisecond)
	afterDelete := time.Now()
	time.Sleep(100 * time.Millisecond)
	// Replay stops at the first commit after a target: the window ends
	// (excluded) at the newest archived commit.
	e.src.Exec(t, "postgres", "INSERT INTO t (note) VALUES ('later')")
	later := time.Now()
	e.switchWAL()
	w := e.waitArchived(later.Add(-50 * time.Millisecond))
	if !w.From.Equal(mustTime(t, pre.Labels[LabelReplayedAt])) || w.FromLSN != pre.Labels[LabelLSN] {
		t.Errorf("window starts %s %s, want the pre snapshot's %s %s", w.From, w.FromLSN, pre.Labels[LabelReplayedAt], pre.Labels[LabelLSN])
	}

	c := e.create(clone.CreateRequest{ID: "pit", PointInTime: &clone.PointInTime{Time: beforeDelete}})
	if c.SnapshotID != pre.ID || c.PointInTime == nil || !c.PointInTime.Time.Equal(beforeDelete) {
		t.Errorf("clone from %s at %+v, want the pre snapshot %s at %s", c.SnapshotID, c.PointInTime, pre.ID, beforeDelete)
	}
	conn := e.conn(c)
	if got := e.scan(conn, "SELECT string_agg(note, ',' ORDER BY id) FROM public.t"); got != "initial,base,doomed-1,doomed-2" {
		t.Errorf("rows at %s: %s, want the deleted rows back (initial,base,doomed-1,doomed-2)", beforeDelete, got)
	}
	if got := e.scan(conn, "SELECT pg_is_in_recovery()::text || '|' || current_setting('restore_command') || '|' || current_setting('archive_mode')"); got != "false||off" {
		t.Errorf("in recovery|restore_command|archive_mode = %q, want a promoted clone with no restore_command and no archiving", got)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO public.t (note) VALUES ('written')"); err != nil {
		t.Errorf("a point-in-time clone refused a write: %v", err)
	}
	// A superuser of the clone runs programs as the clone's uid: the
	// archive is out of its reach.
	if _, err := conn.Exec(ctx, fmt.Sprintf("COPY (SELECT 1) TO PROGRAM 'ls %s'", e.archive)); err == nil {
		t.Errorf("the clone's user listed the archive %s, want permission denied", e.archive)
	}

	for _, bad := range []struct {
		name string
		at   clone.PointInTime
	}{
		{"before the oldest snapshot", clone.PointInTime{Time: w.From.Add(-time.Hour)}},
		{"after the archive", clone.PointInTime{Time: time.Now().Add(time.Hour)}},
		{"at the newest archived commit", clone.PointInTime{Time: w.To}},
		{"LSN after the archive", clone.PointInTime{LSN: "FF/0"}},
	} {
		_, err := e.m.Create(ctx, clone.CreateRequest{ID: "outside", Username: "alice", Password: pitPassword, PointInTime: &bad.at})
		var ve *clone.ValidationError
		if !errors.As(err, &ve) || !strings.Contains(err.Error(), "outside the archive window") {
			t.Errorf("%s: %v, want a validation error naming the archive window", bad.name, err)
			continue
		}
		want := w.From.UTC().Format(time.RFC3339Nano)
		if bad.at.LSN != "" {
			want = w.FromLSN
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %q does not name the window's start %s", bad.name, err, want)
		}
	}
	if _, err := e.m.Get("outside"); !errors.Is(err, clone.ErrNotFound) {
		t.Errorf("a refused clone was registered: %v", err)
	}

	// Reset to after the delete: same port, same password, rows gone.
	if _, err := e.m.Reset(ctx, "pit", clone.ResetRequest{PointInTime: &clone.PointInTime{Time: afterDelete}}); err != nil {
		t.Fatal(err)
	}
	r := e.waitOK("pit")
	if r.Port != c.Port {
		t.Errorf("port after reset %d, want %d", r.Port, c.Port)
	}
	if got := e.scan(e.conn(r), "SELECT string_agg(note, ',' ORDER BY id) FROM public.t"); got != "initial,base" {
		t.Errorf("rows after a reset to %s (after the delete): %s, want initial,base", afterDelete, got)
	}
	// And to the pre snapshot's own LSN.
	if _, err := e.m.Reset(ctx, "pit", clone.ResetRequest{PointInTime: &clone.PointInTime{LSN: w.FromLSN}}); err != nil {
		t.Fatal(err)
	}
	r = e.waitOK("pit")
	if got := e.scan(e.conn(r), "SELECT string_agg(note, ',' ORDER BY id) FROM public.t"); r.Port != c.Port || got != "initial,base" {
		t.Errorf("after a reset to LSN %s: port %d rows %s, want port %d and initial,base", w.FromLSN, r.Port, got, c.Port)
	}
	if err := e.m.Destroy(ctx, "pit"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Wait(ctx, "pit"); !errors.Is(err, clone.ErrNotFound) {
		t.Fatalf("after destroy: %v", err)
	}
	e.checkNoLeftovers()
}

// TestReadOnlyCloneOfPreSnapshot: a clone of an unpromoted ("pre")
// snapshot is writable by default (promoted by the clone's own postgres)
// and a read-only hot standby on request, with the standby's data.
func TestReadOnlyCloneOfPreSnapshot(t *testing.T) {
	e := newPITREnv(t)
	ctx := t.Context()
	if w := e.r.ArchiveWindow(ctx); w.Available || !strings.Contains(w.Reason, `no "pre" snapshot`) {
		t.Errorf("window without a pre snapshot: %+v, want unavailable saying so", w)
	}
	if _, err := e.m.Create(ctx, clone.CreateRequest{ID: "early", Username: "alice", Password: pitPassword, PointInTime: &clone.PointInTime{Time: time.Now()}}); err == nil || !strings.Contains(err.Error(), `no "pre" snapshot`) {
		t.Errorf("a point-in-time clone without a pre snapshot: %v, want refused naming the reason", err)
	}
	e.insert("pre-row")
	e.waitReplayed("pre-row")
	pre, err := e.r.PreSnapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ro := e.create(clone.CreateRequest{ID: "ro", SnapshotID: pre.ID, ReadOnly: true})
	conn := e.conn(ro)
	if got := e.scan(conn, "SELECT pg_is_in_recovery()::text || '|' || current_setting('primary_conninfo') || '|' || string_agg(note, ',' ORDER BY id) FROM public.t"); got != "true||initial,pre-row" {
		t.Errorf("read-only clone: %q, want in recovery, no primary_conninfo, rows initial,pre-row", got)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO public.t (note) VALUES ('no')"); err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Errorf("write on a read-only clone: %v, want refused (read-only transaction)", err)
	}
	rw := e.create(clone.CreateRequest{ID: "rw", SnapshotID: pre.ID})
	if got := e.scan(e.conn(rw), "SELECT pg_is_in_recovery()::text"); got != "false" {
		t.Errorf("a default clone of a pre snapshot is in recovery (%s), want promoted", got)
	}
	if !slices.Contains(e.standbyNotes(), "pre-row") {
		t.Error("the standby lost its rows")
	}
	for _, id := range []string{"ro", "rw"} {
		if err := e.m.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
		if _, err := e.m.Wait(ctx, id); !errors.Is(err, clone.ErrNotFound) {
			t.Fatalf("after destroy of %s: %v", id, err)
		}
	}
}

func mustTime(t testing.TB, s string) time.Time {
	t.Helper()
	at, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatalf("time %q: %v", s, err)
	}
	return at
}

var _ = pgcluster.TailFile

// TestPointInTimePgBackRest: with a backup tool's archive (pgBackRest,
// archive-get aimed at the clone's data directory) the window ends at the
// standby's last replayed transaction and a point-in-time clone brings
// deleted rows back.
func TestPointInTimePgBackRest(t *testing.T) {
	e := &pitrEnv{harness: pgBackRestHarness(t)}
	ctx := t.Context()
	if err := e.r.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	e.startManager()
	e.insert("base")
	e.switchWAL()
	e.waitReplayed("base")
	if _, err := e.r.PreSnapshot(ctx); err != nil {
		t.Fatal(err)
	}
	e.src.Exec(t, "postgres", "INSERT INTO t (note) VALUES ('doomed')")
	time.Sleep(100 * time.Millisecond)
	target := time.Now()
	time.Sleep(100 * time.Millisecond)
	e.src.Exec(t, "postgres", "DELETE FROM t WHERE note = 'doomed'", "INSERT INTO t (note) VALUES ('later')")
	e.switchWAL()
	e.waitReplayed("later")
	w := e.waitArchived(target)
	if w.Source != "standby" {
		t.Errorf("window end from %q, want the standby's replay (a backup tool's archive)", w.Source)
	}
	c := e.create(clone.CreateRequest{ID: "pit", PointInTime: &clone.PointInTime{Time: target}})
	conn := e.conn(c)
	if got := e.scan(conn, "SELECT string_agg(note, ',' ORDER BY id) || '|' || current_setting('restore_command') FROM public.t"); got != "initial,base,doomed|" {
		t.Errorf("clone at %s: %q, want initial,base,doomed and no restore_command", target, got)
	}
	if notes := e.standbyNotes(); !slices.Contains(notes, "later") {
		t.Errorf("the standby has %v after the recovery, want it unharmed (with later)", notes)
	}
}
