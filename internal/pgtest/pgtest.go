// Package pgtest starts throwaway PostgreSQL servers for tests: a real
// initdb'd cluster run as the postgres OS user, stopped and removed by
// t.Cleanup even when the test fails.
package pgtest

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/internal/pgcluster"
	"github.com/thinlab/thinlab/internal/testenv"
)

// Server is a running throwaway cluster listening on 127.0.0.1:Port with a
// superuser "postgres" whose password is Password (TCP needs it; the
// socket in DataDir trusts local connections).
type Server struct {
	Cluster  *pgcluster.Cluster
	Port     int
	Password string
}

// Password of the "postgres" superuser of every Server.
const Password = "pgtest-Secret-123"

// FreePort asks the kernel for a free TCP port on loopback.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }() // only its port was wanted
	return l.Addr().(*net.TCPAddr).Port
}

// OSUser returns the postgres OS user or fails the test.
func OSUser(t testing.TB) pgcluster.OSUser {
	t.Helper()
	testenv.NeedsSystem(t, "root and PostgreSQL (run as the postgres OS user)")
	u, err := pgcluster.LookupUser("postgres")
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// InitDataDir runs initdb into a fresh directory (removed at cleanup) and
// returns the data directory, not started.
func InitDataDir(t testing.TB) string {
	t.Helper()
	u := OSUser(t)
	dir, err := pgcluster.MkdirTemp("pgtest-*", u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	c := &pgcluster.Cluster{DataDir: filepath.Join(dir, "data"), User: u, DieWithParent: true}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := c.Init(ctx, pgcluster.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	return c.DataDir
}

// Start initdb's and starts a server on a free port with a password for
// "postgres", stopped at cleanup.
func Start(t testing.TB) *Server {
	t.Helper()
	c := &pgcluster.Cluster{DieWithParent: true, DataDir: InitDataDir(t), User: OSUser(t)}
	port := FreePort(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := c.Start(ctx, port, "127.0.0.1", pgcluster.FastSettings); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Kill)
	s := &Server{Cluster: c, Port: port, Password: Password}
	conn := s.Connect(t, "postgres")
	defer func() { _ = conn.Close(context.Background()) }() // a session's end: nothing to lose
	if _, err := conn.Exec(ctx, "ALTER ROLE postgres PASSWORD '"+Password+"'"); err != nil {
		t.Fatal(err)
	}
	return s
}

// Connect opens a superuser connection over the socket to db.
func (s *Server) Connect(t testing.TB, db string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.Cluster.SocketConnString(s.Port, "postgres", db))
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

// Exec runs SQL statements (simple protocol, several per string allowed)
// in db, failing the test on error.
func (s *Server) Exec(t testing.TB, db string, sql ...string) {
	t.Helper()
	conn := s.Connect(t, db)
	defer func() { _ = conn.Close(context.Background()) }() // a session's end: nothing to lose
	for _, q := range sql {
		if _, err := conn.Exec(context.Background(), q, pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}
