package clonetest

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

var fillMu sync.Mutex
var fillSeq = map[string]int{}

// Fill initdb's the pool's main dataset the first time, runs sql in its
// "postgres" database with a socket-only postgres, stops it cleanly and
// takes a snapshot. Each call gets a distinct DataStateAt (one second
// apart) so snapshot IDs never collide.
func Fill(t testing.TB, p storage.Pool, sql ...string) storage.Snapshot {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	u, err := pgcluster.LookupUser("postgres")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p.MainDir(), int(u.UID), int(u.GID)); err != nil {
		t.Fatal(err)
	}
	c := &pgcluster.Cluster{DieWithParent: true, DataDir: filepath.Join(p.MainDir(), storage.DataSubdir), User: u}
	if _, err := os.Stat(filepath.Join(c.DataDir, "PG_VERSION")); err != nil {
		if err := c.Init(ctx, pgcluster.InitOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Start(ctx, 5432, "", pgcluster.FastSettings); err != nil {
		t.Fatal(err)
	}
	defer c.Kill()
	conn, err := pgx.Connect(ctx, c.SocketConnString(5432, "postgres", "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range sql {
		if _, err := conn.Exec(ctx, q, pgx.QueryExecModeSimpleProtocol); err != nil {
			_ = conn.Close(ctx) // a failed goodbye loses nothing
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := conn.Close(ctx); err != nil {
		t.Fatalf("close the fill session: %v", err)
	}
	if err := c.Stop(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
	fillMu.Lock()
	fillSeq[p.Name()]++
	n := fillSeq[p.Name()]
	fillMu.Unlock()
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s, err := p.Snapshot(ctx, storage.SnapshotOptions{DataStateAt: base.Add(time.Duration(n) * time.Second), Message: "clonetest"})
	if err != nil {
		t.Fatal(err)
	}
	return s
}
