package pgcluster

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/internal/testenv"
)

// FreePort asks the kernel for a free TCP port on loopback.
func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }() // a listener the test only holds
	return l.Addr().(*net.TCPAddr).Port
}

func TestInitStartQueryStop(t *testing.T) {
	testenv.NeedsRoot(t, "root and PostgreSQL (run as the postgres OS user)")
	u, err := LookupUser("postgres")
	if err != nil {
		t.Fatal(err)
	}
	dir, err := MkdirTemp("pgcluster-*", u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
	})
	c := &Cluster{DataDir: filepath.Join(dir, "data"), User: u}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := c.Init(ctx, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	if err := c.Start(ctx, port, "127.0.0.1", FastSettings); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Kill)
	conn, err := pgx.Connect(ctx, c.SocketConnString(port, "postgres", "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	var v string
	if err := conn.QueryRow(ctx, "show fsync").Scan(&v); err != nil || v != "off" {
		t.Fatalf("fsync = %q, %v", v, err)
	}
	_ = conn.Close(ctx) // a failed goodbye loses nothing
	if err := c.Start(ctx, port, "", nil); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Fatalf("second start: %v", err)
	}
	if err := c.Stop(ctx, ""); err != nil {
		t.Fatal(err)
	}
	if c.Running() {
		t.Fatal("still running after stop")
	}
	// A caller out of time gets that said, and no server is launched.
	done, cancelDone := context.WithCancel(t.Context())
	cancelDone()
	if err := c.Start(done, port, "", nil); err == nil || !strings.Contains(err.Error(), "not started: no time left") {
		t.Fatalf("start with a finished context = %v, want a refusal saying no time was left", err)
	}
	if pid, err := c.PID(); err != nil || pid != 0 {
		t.Errorf("start with a finished context left postmaster.pid (pid %d, %v)", pid, err)
	}
}

func TestBinDirForNamesMissingVersion(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "PG_VERSION"), []byte("9\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := BinDirFor("", dir)
	if err == nil || !strings.Contains(err.Error(), "postgresql-9") {
		t.Fatalf("err = %v", err)
	}
}

// TestDieWithParentSurvivesStop is the regression test for test servers
// losing their data: Stop signals the postmaster through AsUser, whose
// goroutine ends its OS thread; when that was the thread that had started
// the DieWithParent server, the thread's death sent the server SIGKILL
// (Pdeathsig) in the middle of its clean shutdown, so rows committed with
// FastSettings (no synchronous commit) never reached the disk. Each of 25 rounds
// commits a row, stops cleanly and restarts: every row must be there.
func TestDieWithParentSurvivesStop(t *testing.T) {
	testenv.NeedsRoot(t, "root and PostgreSQL (run as the postgres OS user)")
	u, err := LookupUser("postgres")
	if err != nil {
		t.Fatal(err)
	}
	dir, err := MkdirTemp("pgcluster-*", u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
	})
	c := &Cluster{DieWithParent: true, DataDir: filepath.Join(dir, "data"), User: u}
	ctx := t.Context()
	if err := c.Init(ctx, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Kill)
	const port = 5432 // socket only, in the data directory
	for round := 1; round <= 25; round++ {
		if err := c.Start(ctx, port, "", FastSettings); err != nil {
			t.Fatal(err)
		}
		conn, err := pgx.Connect(ctx, c.SocketConnString(port, "postgres", "postgres"))
		if err != nil {
			t.Fatal(err)
		}
		var rows int
		_, err = conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS t (v int)")
		if err == nil {
			err = conn.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&rows)
		}
		if err == nil {
			_, err = conn.Exec(ctx, "INSERT INTO t VALUES (1)")
		}
		if cerr := conn.Close(ctx); err == nil {
			err = cerr
		}
		if err != nil {
			t.Fatal(err)
		}
		if rows != round-1 {
			t.Fatalf("round %d: %d rows after restart, want the %d committed before the clean stop; log:\n%s", round, rows, round-1, TailFile(c.LogFile(), 20))
		}
		if err := c.Stop(ctx, "fast"); err != nil {
			t.Fatal(err)
		}
	}
}
