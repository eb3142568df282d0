// Package platformtest runs a real platform server for tests: one shared
// throwaway PostgreSQL cluster per test binary (real initdb, run as the
// postgres OS user), a migrated template database, and per test a fresh
// database cloned from it (CREATE DATABASE ... TEMPLATE ... STRATEGY =
// FILE_COPY) behind an httptest server.
//
// A test binary that uses it must call Main from TestMain, which stops the
// shared cluster when the tests are done:
//
//	func TestMain(m *testing.M) { platformtest.Main(m) }
package platformtest

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/internal/pgcluster"
	"github.com/thinlab/thinlab/internal/testenv"
	"github.com/thinlab/thinlab/migrations"
	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/api"
	"github.com/thinlab/thinlab/platform/principal"
	"github.com/thinlab/thinlab/platform/server"
	"github.com/thinlab/thinlab/platform/store"
)

// templateDB is the migrated database every test database is cloned from.
const templateDB = "tmpl"

var (
	mainCalled atomic.Bool
	sharedOnce sync.Once
	shared     *cluster
	sharedErr  error
	dbCounter  atomic.Int64
)

type cluster struct {
	c    *pgcluster.Cluster
	dir  string
	port int
}

// Main runs the tests of a binary and then stops the shared cluster.
func Main(m *testing.M) {
	mainCalled.Store(true)
	code := m.Run()
	Stop()
	os.Exit(code)
}

// Stop stops and removes the shared cluster (Main calls it).
func Stop() {
	if shared != nil {
		shared.c.Kill()
		_ = os.RemoveAll(shared.dir) // best effort after the tests: a leftover temporary directory fails nothing
		shared = nil
	}
}

func startShared() (*cluster, error) {
	u, err := pgcluster.LookupUser("postgres")
	if err != nil {
		return nil, err
	}
	dir, err := pgcluster.MkdirTemp("platformtest-*", u)
	if err != nil {
		return nil, err
	}
	cl := &cluster{dir: dir, c: &pgcluster.Cluster{DieWithParent: true, DataDir: filepath.Join(dir, "data"), SocketDir: dir, User: u}}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	fail := func(err error) (*cluster, error) {
		cl.c.Kill()
		_ = os.RemoveAll(dir) // best effort: the start already failed, and that error is returned
		return nil, err
	}
	if err := cl.c.Init(ctx, pgcluster.InitOptions{}); err != nil {
		return fail(err)
	}
	if cl.port, err = freePort(); err != nil {
		return fail(err)
	}
	settings := map[string]string{"max_connections": "300"}
	maps.Copy(settings, pgcluster.FastSettings)
	if err := cl.c.Start(ctx, cl.port, "", settings); err != nil {
		return fail(err)
	}
	if err := cl.exec(ctx, "postgres", "CREATE DATABASE "+templateDB); err != nil {
		return fail(err)
	}
	st, err := store.Open(cl.dsn(templateDB))
	if err != nil {
		return fail(err)
	}
	_, err = migrations.Up(ctx, st.SQL())
	if cerr := st.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fail(err)
	}
	return cl, nil
}

func (cl *cluster) dsn(db string) string { return cl.c.SocketConnString(cl.port, "postgres", db) }

func (cl *cluster) exec(ctx context.Context, db, sql string) error {
	conn, err := pgx.Connect(ctx, cl.dsn(db))
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close(context.Background()) }()
	_, err = conn.Exec(ctx, sql)
	return err
}

// Database creates a fresh migrated database for t and returns its DSN
// (superuser over the Unix socket). It is dropped at cleanup.
func Database(t testing.TB) string {
	t.Helper()
	testenv.NeedsSystem(t, "PostgreSQL (the shared test cluster)")
	if !mainCalled.Load() {
		t.Fatal("platformtest: call platformtest.Main(m) from TestMain so the shared PostgreSQL cluster is stopped")
	}
	sharedOnce.Do(func() { shared, sharedErr = startShared() })
	if sharedErr != nil {
		t.Fatalf("platformtest: start the shared PostgreSQL cluster: %v", sharedErr)
	}
	cl := shared
	name := fmt.Sprintf("t%d_%d", os.Getpid(), dbCounter.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := cl.exec(ctx, "postgres", "CREATE DATABASE "+name+" TEMPLATE "+templateDB+" STRATEGY = FILE_COPY"); err != nil {
		t.Fatalf("platformtest: create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := cl.exec(ctx, "postgres", "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Logf("platformtest: drop database %s: %v", name, err)
		}
	})
	return cl.dsn(name)
}

// Env is a running platform server with its own database.
type Env struct {
	T      testing.TB
	Server *server.Server
	Store  *store.Store
	HTTP   *httptest.Server
	URL    string // base URL, such as http://127.0.0.1:PORT
	DSN    string // superuser DSN of the test database
}

// Option adjusts New.
type Option func(*server.Options, *server.Config)

// WithAuthenticator adds an authenticator, tried after the API token and
// the session cookie (such as one that turns a test header into a user).
func WithAuthenticator(fn func(*store.Store) principal.Authenticator) Option {
	return func(o *server.Options, _ *server.Config) { o.Authenticators = append(o.Authenticators, fn) }
}

// WithOptions changes the server options before the start (the agent
// disconnector of a test hub, say).
func WithOptions(fn func(*server.Options)) Option {
	return func(o *server.Options, _ *server.Config) { fn(o) }
}

// CookieSecret signs the login cookies of test servers.
const CookieSecret = "platformtest-cookie-secret-0123456789abcdef"

// WithConfig changes the server configuration before the start (rate
// limits, public URL).
func WithConfig(fn func(*server.Config)) Option {
	return func(_ *server.Options, c *server.Config) { fn(c) }
}

// New starts a platform server on a fresh database, stopped at cleanup.
func New(t testing.TB, opts ...Option) *Env {
	t.Helper()
	dsn := Database(t)
	// Listen first, so that the server knows its public URL.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := server.DefaultConfig()
	cfg.Database.URL = dsn
	cfg.Listen = ln.Addr().String()
	cfg.PublicURL = "http://" + cfg.Listen
	cfg.Auth.CookieSecret = CookieSecret
	o := server.Options{Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	for _, opt := range opts {
		opt(&o, &cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := server.New(ctx, cfg, o)
	if err != nil {
		_ = ln.Close() // the start failed; that error is reported
		t.Fatalf("platformtest: start server: %v", err)
	}
	hs := httptest.NewUnstartedServer(srv.Handler())
	_ = hs.Listener.Close() // httptest's own listener, replaced by ours before it served anything
	hs.Listener = ln
	hs.Start()
	t.Cleanup(func() {
		hs.Close()
		if err := srv.Close(); err != nil {
			t.Errorf("platformtest: close the server: %v", err)
		}
	})
	return &Env{T: t, Server: srv, Store: srv.Store(), HTTP: hs, URL: hs.URL, DSN: dsn}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// APIRoutes is the part of the server's route table a program calls: the
// JSON API under /api/v1 and /healthz (not the web UI's pages), for tests
// that walk every API route.
func (e *Env) APIRoutes() []access.Route {
	var out []access.Route
	for _, rt := range e.Server.Routes() {
		if strings.HasPrefix(rt.Path, api.Prefix+"/") || rt.Path == "/healthz" {
			out = append(out, rt)
		}
	}
	return out
}
