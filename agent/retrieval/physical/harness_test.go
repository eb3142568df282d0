package physical

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/storagetest"
	"github.com/thinlab/thinlab/internal/pgcluster"
	"github.com/thinlab/thinlab/internal/pgtest"
)

// harness is one physical retrieval under test: a real source on
// loopback, a pool on a loop file (btrfs unless newHarnessOn says), and
// the Retriever.
type harness struct {
	t    testing.TB
	src  *pgtest.Server
	pool storage.Pool
	cfg  *config.Config
	r    *Retriever
	priv string
	// afterSwitch, when set, runs after each WAL switch on the source
	// (Barman: move the archived WAL from incoming into its archive).
	afterSwitch func()
	// keep is the retention's number of snapshots (10 when 0).
	keep int
}

// keepN is a Retention keeping the newest n snapshots through
// storage.Retain (what the agent's snapshot Policy does, minus protection).
type keepN int

func (k keepN) Retain(ctx context.Context, p storage.Pool) ([]string, error) {
	return storage.Retain(ctx, p, int(k), nil)
}

// harnessPoolSize is the loop pool's size (benchmarks with much WAL make
// it larger).
var harnessPoolSize int64 = 1 << 30

// newHarness makes a source with table t, a pool and a config for tool;
// setup adjusts the config before the Retriever is built.
func newHarness(t testing.TB, tool string, setup func(h *harness)) *harness {
	t.Helper()
	return newHarnessOn(t, storage.ModeBtrfs, tool, setup)
}

// newHarnessOn is newHarness on a pool of mode (storage.ModeZFS: a
// zfs-fuse pool, which holds the host's zfs-fuse daemon, and its
// cross-process lock, until the test ends).
func newHarnessOn(t testing.TB, mode, tool string, setup func(h *harness)) *harness {
	t.Helper()
	return newHarnessSized(t, mode, harnessPoolSize, tool, setup)
}

// newHarnessSized is newHarnessOn with a pool image of size bytes
// (sparse: benchmarks with more data).
func newHarnessSized(t testing.TB, mode string, size int64, tool string, setup func(h *harness)) *harness {
	t.Helper()
	h := &harness{t: t}
	h.src = pgtest.Start(t)
	h.src.Exec(t, "postgres", "CREATE TABLE t (id serial PRIMARY KEY, note text NOT NULL)", "INSERT INTO t (note) VALUES ('initial')")
	h.pool = storagetest.NewLoopPoolSize(t, mode, size)
	dir, err := os.MkdirTemp("", "physical-state-*")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil { // the postgres user reaches the private directory below
		t.Fatal(err)
	}
	h.priv = filepath.Join(dir, "private")
	cfg := config.Default()
	cfg.StateDir = dir
	cfg.Provision.OSUser = "postgres"
	cfg.Retrieval.Mode = Mode
	cfg.Retrieval.Pool = h.pool.Name()
	cfg.Retrieval.Source = config.Source{Host: "127.0.0.1", Port: h.src.Port, Username: "postgres", Password: pgtest.Password, SSLMode: "disable"}
	cfg.Retrieval.Physical = config.Physical{Tool: tool, Settings: map[string]string{"fsync": "off", "shared_buffers": "16MB"}}
	h.cfg = cfg
	if setup != nil {
		setup(h)
	}
	h.r = h.newRetriever()
	return h
}

func (h *harness) newRetriever() *Retriever {
	t := h.t
	t.Helper()
	r, err := New(Options{Retrieval: h.cfg.Retrieval, User: pgtest.OSUser(t), Pool: h.pool, PrivateDir: h.priv, StartTimeout: 2 * time.Minute,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})), Retention: keepN(cmp.Or(h.keep, 10))})
	if err != nil {
		t.Fatal(err)
	}
	r.dieWithParent = true
	t.Cleanup(func() {
		_ = r.Close()
		r.standby().Kill()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := r.recoverLeftovers(ctx); err != nil {
			t.Errorf("cleanup of the cycle's leftovers: %v", err)
		}
	})
	return r
}

// insert commits a row on the source and returns when it committed.
func (h *harness) insert(note string) time.Time {
	h.t.Helper()
	// Snapshot IDs and the cycle's "anything new?" check have second
	// precision: commit in a later second than the newest snapshot's
	// data, or the next cycle rightly finds nothing new.
	for latest := h.r.latestSnapshot(h.t.Context()); !time.Now().UTC().Truncate(time.Second).After(latest); {
		time.Sleep(20 * time.Millisecond)
	}
	h.src.Exec(h.t, "postgres", fmt.Sprintf("INSERT INTO t (note) VALUES ('%s')", note))
	return time.Now()
}

// switchWAL ends the source's WAL segment so that archive-fed standbys
// see it.
func (h *harness) switchWAL() {
	h.t.Helper()
	h.src.Exec(h.t, "postgres", "SELECT pg_switch_wal()")
	if h.afterSwitch != nil {
		h.afterSwitch()
	}
}

// waitReplayed waits until the standby has replayed a row with note.
func (h *harness) waitReplayed(note string) {
	h.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if slices.Contains(h.standbyNotes(), note) {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("the standby did not replay %q within 2 minutes; it has %v; log: %s", note, h.standbyNotes(), pgcluster.TailFile(h.r.standby().LogFile(), 15))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (h *harness) standbyConn() *pgx.Conn {
	h.t.Helper()
	conn, err := pgcluster.Connect(h.t.Context(), h.r.standby().SocketConnString(standbyPort, "postgres", "postgres"))
	if err != nil {
		h.t.Fatalf("connect to the standby: %v", err)
	}
	h.t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func (h *harness) standbyNotes() []string {
	h.t.Helper()
	conn, err := pgcluster.Connect(h.t.Context(), h.r.standby().SocketConnString(standbyPort, "postgres", "postgres"))
	if err != nil {
		return nil
	}
	defer func() { _ = conn.Close(context.Background()) }()
	return queryNotes(h.t, conn)
}

func (h *harness) replayLSN() string {
	h.t.Helper()
	var lsn string
	if err := h.standbyConn().QueryRow(h.t.Context(), "SELECT pg_last_wal_replay_lsn()::text").Scan(&lsn); err != nil {
		h.t.Fatal(err)
	}
	return lsn
}

func queryNotes(t testing.TB, conn *pgx.Conn) []string {
	t.Helper()
	rows, err := conn.Query(t.Context(), "SELECT note FROM public.t ORDER BY id")
	if err != nil {
		return nil
	}
	notes, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return notes
}

// cloneNotes clones snapshot id, starts a postgres there (as a clone
// would) and returns t's notes and whether it is in recovery.
func (h *harness) cloneNotes(id string) (notes []string, inRecovery bool) {
	t := h.t
	t.Helper()
	ctx := t.Context()
	name := fmt.Sprintf("check-%d", time.Now().UnixNano())
	cl, err := h.pool.Clone(ctx, id, name)
	if err != nil {
		t.Fatalf("clone %s: %v", id, err)
	}
	c := &pgcluster.Cluster{DataDir: filepath.Join(cl.Mountpoint, storage.DataSubdir), User: pgtest.OSUser(t), DieWithParent: true}
	defer func() {
		c.Kill()
		if err := h.pool.DestroyClone(context.Background(), name); err != nil {
			t.Errorf("destroy clone %s: %v", name, err)
		}
	}()
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := c.Start(sctx, 5499, "", map[string]string{"fsync": "off", "archive_mode": "off", "restore_command": "", "primary_conninfo": "", "hot_standby": "on"}); err != nil {
		t.Fatalf("start postgres on a clone of %s: %v", id, err)
	}
	conn, err := pgcluster.Connect(ctx, c.SocketConnString(5499, "postgres", "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(context.Background()) }()
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
		t.Fatal(err)
	}
	return queryNotes(t, conn), inRecovery
}

// cycle runs a snapshot cycle that must make a snapshot.
func (h *harness) cycle() storage.Snapshot {
	h.t.Helper()
	snap, err := h.r.SnapshotCycle(h.t.Context())
	if err != nil {
		h.t.Fatalf("snapshot cycle: %v; standby log: %s", err, pgcluster.TailFile(h.r.standby().LogFile(), 15))
	}
	return snap
}

// checkCycleShowsNewRows is the test every tool passes: a row committed
// on the source after the previous snapshot appears in a clone of the
// next cycle's snapshot, which is promoted (read-write), and dataStateAt
// is the time of the last replayed transaction.
func (h *harness) checkCycleShowsNewRows(archive bool) {
	t := h.t
	t.Helper()
	for i := 1; i <= 2; i++ {
		note := fmt.Sprintf("row-%d", i)
		before := time.Now().UTC().Truncate(time.Second)
		h.insert(note)
		committed := time.Now().UTC()
		if archive {
			h.switchWAL()
		}
		h.waitReplayed(note)
		snap := h.cycle()
		if snap.Labels[LabelKind] != kindPromo || snap.Message != MessagePromoted {
			t.Errorf("cycle %d: snapshot %s labels %v message %q, want a promoted snapshot", i, snap.ID, snap.Labels, snap.Message)
		}
		if snap.DataStateAt.Before(before) || snap.DataStateAt.After(committed) {
			t.Errorf("cycle %d: dataStateAt %s, want the commit time of %q, between %s and %s", i, snap.DataStateAt, note, before, committed)
		}
		notes, inRecovery := h.cloneNotes(snap.ID)
		if !slices.Contains(notes, note) {
			t.Errorf("cycle %d: a clone of %s has rows %v, want %q in it", i, snap.ID, notes, note)
		}
		if inRecovery {
			t.Errorf("cycle %d: a clone of %s is in recovery; the snapshot must hold the promoted state", i, snap.ID)
		}
	}
	h.checkNoLeftovers()
}

// checkNoLeftovers fails unless no temporary clone or snapshot exists.
func (h *harness) checkNoLeftovers() {
	t := h.t
	t.Helper()
	clones, err := h.pool.Clones(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range clones {
		if c.Name == tempClone {
			t.Errorf("temporary clone %s left behind", c.Name)
		}
	}
	snaps, err := h.pool.Snapshots(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range snaps {
		if s.Labels[LabelKind] == kindTemp {
			t.Errorf("temporary snapshot %s left behind", s.ID)
		}
	}
}

func containsSecret(raw []byte) bool {
	return strings.Contains(string(raw), pgtest.Password)
}

// restartSource restarts the source with extra settings (archiving).
func (h *harness) restartSource(settings map[string]string) {
	t := h.t
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	c := h.src.Cluster
	if err := c.Stop(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
	all := maps.Clone(pgcluster.FastSettings)
	maps.Copy(all, settings)
	if err := c.Start(ctx, h.src.Port, "127.0.0.1", all); err != nil {
		t.Fatal(err)
	}
}

// toolDir is a directory the postgres OS user owns, for a tool's
// repository and configuration; removed at cleanup.
func toolDir(t testing.TB) string {
	t.Helper()
	dir, err := pgcluster.MkdirTemp("physical-tool-*", pgtest.OSUser(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// writeAs writes a file owned by the postgres OS user.
func writeAs(t testing.TB, path, content string) {
	t.Helper()
	u := pgtest.OSUser(t)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, int(u.UID), int(u.GID)); err != nil {
		t.Fatal(err)
	}
}

// runAs runs a program as the postgres OS user and fails on error.
func runAs(t testing.TB, env []string, name string, args ...string) string {
	t.Helper()
	u := pgtest.OSUser(t)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = "/"
	cmd.Env = append([]string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/var/lib/postgresql"}, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: u.Credential()}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// lookTool finds a backup tool or fails with how to install it.
func lookTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed: run make deps (%v)", name, err)
	}
	return p
}

func itoa(n int) string { return fmt.Sprint(n) }

// replayPaused reports whether the standby's WAL replay is paused.
func (h *harness) replayPaused() bool {
	h.t.Helper()
	var state string
	if err := h.standbyConn().QueryRow(h.t.Context(), "SELECT pg_get_wal_replay_pause_state()").Scan(&state); err != nil {
		h.t.Fatal(err)
	}
	return state != "not paused"
}
