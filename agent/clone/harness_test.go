package clone_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/agent/runtime"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/logtest"
)

// Passwords used by the tests; the log must never contain them.
const (
	goodPassword = "Correct-Horse-Battery-Staple-42"
	prodPassword = "prod-App-Password-77!"
)

// fakeClock is a settable clock for idle and protection tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type env struct {
	t     *testing.T
	ctx   context.Context
	pool  storage.Pool
	cfg   *config.Config
	log   *logtest.Buffer
	clock *fakeClock
	snaps []storage.Snapshot
	// bus receives the managers' events; kinds records them per clone.
	bus   *events.Bus
	evMu  sync.Mutex
	kinds map[string][]events.Kind
	// ready is the data of each clone's last clone.ready event.
	ready map[string]string
}

// eventKinds is the kinds of events emitted for clone id, in order.
func (e *env) eventKinds(id string) []events.Kind {
	e.evMu.Lock()
	defer e.evMu.Unlock()
	return append([]events.Kind(nil), e.kinds[id]...)
}

// sourceSQL is the "production" data of the first snapshot: a table, an
// application role with a known password, and objects owned by both the
// bootstrap superuser and the app role.
var sourceSQL = []string{
	"CREATE ROLE app LOGIN PASSWORD '" + prodPassword + "'",
	"CREATE TABLE t (id serial PRIMARY KEY, v text)",
	"INSERT INTO t (v) VALUES ('one')",
	"CREATE SCHEMA app AUTHORIZATION app",
	"CREATE TABLE app.orders (id bigserial PRIMARY KEY, total numeric)",
	"ALTER TABLE app.orders OWNER TO app",
	"CREATE VIEW tv AS SELECT v FROM t",
	"CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
	"CREATE TYPE mood AS ENUM ('ok', 'sad')",
	"CREATE DATABASE other",
}

// newEnv makes a btrfs pool with one snapshot (sourceSQL) and a config
// with a private port range of size ports.
func newEnv(t *testing.T, ports int) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	t.Cleanup(cancel)
	p := clonetest.NewPool(t)
	e := &env{t: t, ctx: ctx, pool: p, log: &logtest.Buffer{}, clock: &fakeClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}, bus: events.NewBus(), kinds: map[string][]events.Kind{}, ready: map[string]string{}}
	e.bus.Subscribe(func(ev events.Event) {
		e.evMu.Lock()
		defer e.evMu.Unlock()
		e.kinds[ev.Clone] = append(e.kinds[ev.Clone], ev.Kind)
		if ev.Kind == events.CloneReady {
			e.ready[ev.Clone] = string(ev.Data)
		}
	})
	e.snaps = append(e.snaps, clonetest.Fill(t, p, sourceSQL...))
	cfg := clonetest.Config(t, p, ports)
	cfg.Cloning.MaxIdleMinutes = 10
	cfg.Cloning.ProtectionLeaseDurationMinutes = 60
	cfg.Cloning.ProtectionMaxDurationMinutes = 120
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	e.cfg = cfg
	// Registered after the pool: runs before the pool's unmount.
	t.Cleanup(func() {
		clonetest.KillClones(e.pool)
		if strings.Contains(e.log.String(), goodPassword) || strings.Contains(e.log.String(), prodPassword) {
			t.Errorf("a password appears in the log")
		}
	})
	return e
}

// addSnapshot fills the pool again and snapshots it.
func (e *env) addSnapshot(sql ...string) storage.Snapshot {
	s := clonetest.Fill(e.t, e.pool, sql...)
	e.snaps = append(e.snaps, s)
	return s
}

func (e *env) manager() *clone.Manager {
	e.t.Helper()
	logger := e.log.Logger()
	m, err := clone.NewManager(e.ctx, clone.Options{Config: e.cfg, Pools: []storage.Pool{e.pool}, Logger: logger, Now: e.clock.Now, CheckInterval: -1, Events: e.bus})
	if err != nil {
		e.t.Fatal(err)
	}
	return m
}

// assertNoLeaks checks that the pool has no clones, no postgres runs in a
// clone location and every port of the range is free.
func (e *env) assertNoLeaks(m *clone.Manager) {
	e.t.Helper()
	if n := len(m.List()); n != 0 {
		e.t.Errorf("%d clones still listed", n)
	}
	clones, err := e.pool.Clones(e.ctx)
	if err != nil || len(clones) != 0 {
		e.t.Errorf("pool still has clones: %v %v", clones, err)
	}
	procs, _ := runtime.Postmasters()
	for _, p := range procs {
		if strings.HasPrefix(p.DataDir, filepath.Dir(e.pool.MainDir())) {
			e.t.Errorf("postgres %d still runs in %s", p.PID, p.DataDir)
		}
	}
	for port := e.cfg.Provision.PortPool.From; port <= e.cfg.Provision.PortPool.To; port++ {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			e.t.Errorf("port %d still in use: %v", port, err)
			continue
		}
		_ = l.Close() // only probing that the port is free
	}
}

func (e *env) req(id string) clone.CreateRequest {
	return clone.CreateRequest{ID: id, Username: "alice", Password: goodPassword}
}

// create creates a clone and waits until it is OK.
func (e *env) create(m *clone.Manager, r clone.CreateRequest) clone.Clone {
	e.t.Helper()
	c, err := m.Create(e.ctx, r)
	if err != nil {
		e.t.Fatalf("create %s: %v", r.ID, err)
	}
	if c.Status != clone.StatusCreating {
		e.t.Fatalf("create returned status %s, want CREATING", c.Status)
	}
	return e.wait(m, c.ID, clone.StatusOK)
}

func (e *env) wait(m *clone.Manager, id string, want clone.StatusCode) clone.Clone {
	e.t.Helper()
	c, err := m.Wait(e.ctx, id)
	if err != nil {
		e.t.Fatalf("wait %s: %v", id, err)
	}
	if c.Status != want {
		e.t.Fatalf("clone %s is %s (%s), want %s", id, c.Status, c.StatusMessage, want)
	}
	return c
}

func (e *env) destroy(m *clone.Manager, id string) {
	e.t.Helper()
	if err := m.Destroy(e.ctx, id); err != nil {
		e.t.Fatalf("destroy %s: %v", id, err)
	}
	if _, err := m.Wait(e.ctx, id); !errors.Is(err, clone.ErrNotFound) {
		e.t.Fatalf("after destroy, wait %s: %v", id, err)
	}
}

// connect logs in over TCP as the clone's user.
func (e *env) connect(c clone.Clone, user, password, db string) (*pgx.Conn, error) {
	cc, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable", c.Host, c.Port, user, db))
	if err != nil {
		return nil, err
	}
	cc.Password = password
	return pgx.ConnectConfig(e.ctx, cc)
}

func (e *env) query(c clone.Clone, sql string) string {
	e.t.Helper()
	conn, err := e.connect(c, c.Username, goodPassword, c.DBName)
	if err != nil {
		e.t.Fatalf("connect to clone %s: %v", c.ID, err)
	}
	defer func() { _ = conn.Close(e.ctx) }() // a failed goodbye loses nothing
	var s string
	if err := conn.QueryRow(e.ctx, sql).Scan(&s); err != nil {
		e.t.Fatalf("clone %s: %s: %v", c.ID, sql, err)
	}
	return s
}

func (e *env) exec(c clone.Clone, sql string) {
	e.t.Helper()
	conn, err := e.connect(c, c.Username, goodPassword, c.DBName)
	if err != nil {
		e.t.Fatalf("connect to clone %s: %v", c.ID, err)
	}
	defer func() { _ = conn.Close(e.ctx) }() // a failed goodbye loses nothing
	if _, err := conn.Exec(e.ctx, sql); err != nil {
		e.t.Fatalf("clone %s: %s: %v", c.ID, sql, err)
	}
}

//go:fix inline

var _ = os.Getpid

// closeManager closes m and fails the test if its last state write fails.
func closeManager(t testing.TB, m *clone.Manager) {
	t.Helper()
	if err := m.Close(); err != nil {
		t.Errorf("close manager: %v", err)
	}
}
