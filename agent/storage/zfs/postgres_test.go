package zfs_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/zfs/zfstest"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

// TestPostgresOnZFS: a real PostgreSQL runs in the main dataset, a
// snapshot is taken while it runs (crash-consistent, as in physical
// mode), and a clone of it starts as its own server that sees the data and
// whose writes stay its own.
func TestPostgresOnZFS(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	p := zfstest.NewPool(t, 512<<20)
	u, err := pgcluster.LookupUser("postgres")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p.MainDir(), int(u.UID), int(u.GID)); err != nil {
		t.Fatal(err)
	}
	main := &pgcluster.Cluster{DataDir: filepath.Join(p.MainDir(), storage.DataSubdir), User: u}
	if err := main.Init(ctx, pgcluster.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	// Sockets only, in each data directory. The clone gets its own port, as
	// clones do: the snapshot also carries the primary's socket lock file.
	const port, clonePort = 5432, 5433
	if err := main.Start(ctx, port, "", pgcluster.FastSettings); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(main.Kill)
	execSQL(t, ctx, main, port, "CREATE TABLE t (v int)", "INSERT INTO t SELECT generate_series(1, 1000)", "CHECKPOINT")

	s, err := p.Snapshot(ctx, storage.SnapshotOptions{Message: "running primary"})
	if err != nil {
		t.Fatal(err)
	}
	execSQL(t, ctx, main, port, "INSERT INTO t VALUES (-1)")

	c, err := p.Clone(ctx, s.ID, "pgclone")
	if err != nil {
		t.Fatal(err)
	}
	clone := &pgcluster.Cluster{DataDir: filepath.Join(c.Mountpoint, storage.DataSubdir), User: u}
	// The snapshot carries the running primary's pid file, naming a live
	// process; the clone engine removes it the same way.
	if err := os.Remove(filepath.Join(clone.DataDir, "postmaster.pid")); err != nil {
		t.Fatal(err)
	}
	if err := clone.Start(ctx, clonePort, "", pgcluster.FastSettings); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(clone.Kill)
	if n := count(t, ctx, clone, clonePort); n != 1000 {
		t.Fatalf("clone has %d rows, want the snapshot's 1000", n)
	}
	execSQL(t, ctx, clone, clonePort, "DELETE FROM t")
	if n := count(t, ctx, main, port); n != 1001 {
		t.Fatalf("main has %d rows after the clone deleted its own, want 1001", n)
	}
	if err := clone.Stop(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
	if err := p.DestroyClone(ctx, "pgclone"); err != nil {
		t.Fatal(err)
	}
	if err := main.Stop(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
}

func connect(t *testing.T, ctx context.Context, c *pgcluster.Cluster, port int) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, c.SocketConnString(port, "postgres", "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) }) // the server may be stopped first; nothing to lose after the test. Background: t.Context() is cancelled before cleanups
	return conn
}

func execSQL(t *testing.T, ctx context.Context, c *pgcluster.Cluster, port int, sql ...string) {
	t.Helper()
	conn := connect(t, ctx, c, port)
	for _, q := range sql {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := conn.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

func count(t *testing.T, ctx context.Context, c *pgcluster.Cluster, port int) int {
	t.Helper()
	conn := connect(t, ctx, c, port)
	defer func() { _ = conn.Close(ctx) }() // after a read: nothing to lose
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
