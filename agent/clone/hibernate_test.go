package clone_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/runtime"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/btrfs"
)

// postgresRunning reports whether a postmaster of one of the pool's
// clones holds clone c's port.
func (e *env) postgresRunning(c clone.Clone) bool {
	e.t.Helper()
	clones, err := e.pool.Clones(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	procs, _ := runtime.Postmasters()
	for _, pc := range clones {
		for _, p := range procs {
			if p.DataDir == filepath.Join(pc.Mountpoint, storage.DataSubdir) && runtime.CheckPortOwner(p.PID, c.Port) == nil {
				return true
			}
		}
	}
	return false
}

// TestHibernateAndWake: a clone idle for cloning.hibernateAfterMinutes has
// its postgres stopped while it stays OK (hibernated) on its port; the
// first connections (a burst of them, one asking for SSL first) wake it
// once and are passed through to it; an agent restart keeps it hibernated
// and listened on; idle deletion still removes a hibernated clone.
func TestHibernateAndWake(t *testing.T) {
	e := newEnv(t, 4)
	e.cfg.Cloning.HibernateAfterMinutes = 0.5
	m := e.manager()
	c := e.create(m, e.req("sleepy"))
	first := m
	awake := e.create(m, e.req("busy"))
	conn, err := e.connect(awake, "alice", goodPassword, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(e.ctx) }() // a failed goodbye loses nothing

	e.clock.Advance(20 * time.Second)
	m.CheckIdle(e.ctx)
	if got, _ := m.Get("sleepy"); got.Hibernated {
		t.Fatal("clone hibernated before hibernateAfterMinutes")
	}
	e.clock.Advance(20 * time.Second)
	m.CheckIdle(e.ctx)
	got, err := m.Get("sleepy")
	if err != nil || !got.Hibernated || got.Status != clone.StatusOK || got.Port != c.Port {
		t.Fatalf("after 40 s idle: %+v %v, want hibernated, OK, port %d", got, err, c.Port)
	}
	if b, _ := m.Get("busy"); b.Hibernated {
		t.Fatal("a clone with a client connection hibernated")
	}
	if e.postgresRunning(c) {
		t.Fatal("hibernated clone's postgres still runs")
	}

	// A burst of connections, in the agent's listener before it gives the
	// port to postgres: one wake-up, every one passed through.
	addr := net.JoinHostPort(c.Host, strconv.Itoa(c.Port))
	raw := make([]net.Conn, 6)
	for i := range raw {
		if raw[i], err = net.Dial("tcp", addr); err != nil {
			t.Fatalf("dial the hibernated clone: %v", err)
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, len(raw))
	for i := range raw {
		wg.Go(func() { errs[i] = e.queryOver(c, raw[i], "SELECT v FROM t WHERE id = 1", "one") })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("connection %d to the hibernated clone: %v", i, err)
		}
	}
	if n := strings.Count(e.log.String(), "hibernated clone woken"); n != 1 {
		t.Errorf("clone woken %d times, want once:\n%s", n, e.log.String())
	}
	if got, _ := m.Get("sleepy"); got.Hibernated || got.Status != clone.StatusOK {
		t.Fatalf("after the wake-up: hibernated=%v status %s", got.Hibernated, got.Status)
	}
	if !e.postgresRunning(c) {
		t.Fatal("woken clone's postgres does not hold its port")
	}

	// Asleep again, then the agent restarts: still hibernated, listened
	// on, and a connection wakes it.
	e.clock.Advance(time.Minute)
	m.CheckIdle(e.ctx)
	if got, _ := m.Get("sleepy"); !got.Hibernated {
		t.Fatal("clone did not hibernate a second time")
	}
	closeManager(t, first)
	m = e.manager()
	t.Cleanup(func() { closeManager(t, m) })
	if got, err := m.Get("sleepy"); err != nil || !got.Hibernated || got.Status != clone.StatusOK {
		t.Fatalf("after an agent restart: %+v %v, want hibernated and OK", got, err)
	}
	if e.postgresRunning(c) {
		t.Fatal("the restarted agent started a hibernated clone")
	}
	// psql with sslmode=prefer sends an SSLRequest first; the clone has no
	// TLS and answers N, and libpq goes on in plain text on the same
	// connection: the agent passed both ways through untouched.
	psql := exec.CommandContext(e.ctx, "/usr/lib/postgresql/15/bin/psql", "-XAtc", "SELECT current_user",
		fmt.Sprintf("host=%s port=%d user=alice dbname=postgres sslmode=prefer connect_timeout=60", c.Host, c.Port))
	psql.Env = append(os.Environ(), "PGPASSWORD="+goodPassword)
	out, err := psql.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "alice" {
		t.Fatalf("psql (sslmode=prefer) to a hibernated clone after an agent restart: %v: %s", err, out)
	}

	// Idle deletion applies to hibernated clones: hibernate, then pass
	// maxIdleMinutes (10).
	e.clock.Advance(time.Minute)
	m.CheckIdle(e.ctx)
	if got, _ := m.Get("sleepy"); !got.Hibernated {
		t.Fatal("clone did not hibernate after the restart")
	}
	e.clock.Advance(10 * time.Minute)
	_ = conn.Close(e.ctx) // "busy" may be deleted too now
	deleted := m.CheckIdle(e.ctx)
	if !slices.Contains(deleted, "sleepy") {
		t.Fatalf("idle cleanup deleted %v, want the hibernated clone among them", deleted)
	}
	for _, id := range deleted {
		if _, err := m.Wait(e.ctx, id); !errors.Is(err, clone.ErrNotFound) {
			t.Fatalf("%s after idle deletion: %v", id, err)
		}
	}
	if _, err := m.Get("busy"); err == nil {
		e.destroy(m, "busy")
	}
	e.assertNoLeaks(m)
}

// queryOver logs in as the clone's user over an established connection
// and checks that sql answers want.
func (e *env) queryOver(c clone.Clone, raw net.Conn, sql, want string) error {
	cc, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable connect_timeout=60", c.Host, c.Port, c.Username, c.DBName))
	if err != nil {
		return err
	}
	cc.Password = goodPassword
	cc.DialFunc = func(context.Context, string, string) (net.Conn, error) { return raw, nil }
	conn, err := pgx.ConnectConfig(e.ctx, cc)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close(e.ctx) }() // a failed goodbye loses nothing
	var got string
	if err := conn.QueryRow(e.ctx, sql).Scan(&got); err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("%s answered %q, want %q", sql, got, want)
	}
	return nil
}

// queryWith logs in as the clone's user with sslmode and checks that sql
// answers want.
func (e *env) queryWith(c clone.Clone, sslmode, sql, want string) error {
	cc, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=%s connect_timeout=60", c.Host, c.Port, c.Username, c.DBName, sslmode))
	if err != nil {
		return err
	}
	cc.Password = goodPassword
	conn, err := pgx.ConnectConfig(e.ctx, cc)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close(e.ctx) }() // a failed goodbye loses nothing
	var got string
	if err := conn.QueryRow(e.ctx, sql).Scan(&got); err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("%s answered %q, want %q", sql, got, want)
	}
	return nil
}

// TestHibernatedPortHeldByAnotherProgram: when a program took a hibernated
// clone's port while the agent did not hold it, the wake-up refuses to
// hand connections to it (the clone ends FATAL) rather than pass a
// client's login to that program.
func TestHibernatedPortHeldByAnotherProgram(t *testing.T) {
	e := newEnv(t, 3)
	e.cfg.Cloning.HibernateAfterMinutes = 1
	m := e.manager()
	c := e.create(m, e.req("victim"))
	e.clock.Advance(2 * time.Minute)
	m.CheckIdle(e.ctx)
	if got, _ := m.Get("victim"); !got.Hibernated {
		t.Fatal("clone did not hibernate")
	}
	closeManager(t, m)
	// The port is free while no agent runs: another program binds it on
	// another loopback address (postgres still binds 127.0.0.1).
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.2:%d", c.Port))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }() // the squatter
	m = e.manager()
	t.Cleanup(func() { closeManager(t, m) })
	err = m.Awake(e.ctx, "victim")
	if err == nil || !strings.Contains(err.Error(), "other than the postmaster") {
		t.Fatalf("waking with the port also held by another program: %v, want a refusal naming it", err)
	}
	if got, _ := m.Get("victim"); got.Status != clone.StatusFatal {
		t.Fatalf("clone is %s, want FATAL", got.Status)
	}
}

// TestHibernatedSurvivesKill9: an agent that hibernated a clone is killed
// with SIGKILL (its listener dies with it); the next agent finds the
// clone hibernated, listens on its port again, and a connection wakes it.
func TestHibernatedSurvivesKill9(t *testing.T) {
	e := newEnv(t, 3)
	m := e.manager()
	c := e.create(m, e.req("k9"))
	closeManager(t, m)

	bp, ok := e.pool.(*btrfs.Pool)
	if !ok {
		t.Fatalf("clonetest pool is %T, want a btrfs pool", e.pool)
	}
	spec, err := json.Marshal(hibernateChild{Config: e.cfg, Path: bp.Path(), Clones: bp.ClonesDir(), PoolName: bp.Name(), Clone: "k9"})
	if err != nil {
		t.Fatal(err)
	}
	child := exec.CommandContext(e.ctx, os.Args[0], "-test.run=^$") //nolint:gosec // G702: this test binary itself, re-run as the child agent
	child.Env = append(os.Environ(), hibernateChildEnv+"="+string(spec))
	var stderr strings.Builder
	child.Stderr = &stderr
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = child.Process.Kill() }) // already dead unless the test failed first
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "hibernated\n" {
		_ = child.Process.Kill() // the test failed
		_ = child.Wait()
		t.Fatalf("child agent said %q (%v):\n%s", line, err, stderr.String())
	}
	// Not dialled: a connection would wake the clone.
	if err := runtime.CheckPortOwner(child.Process.Pid, c.Port); err != nil {
		t.Fatalf("the child agent does not listen on the hibernated clone's port: %v", err)
	}
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait() // killed
	if conn, err := net.Dial("tcp", net.JoinHostPort(c.Host, strconv.Itoa(c.Port))); err == nil {
		_ = conn.Close() // the failure is the point
		t.Fatal("something still listens on the port after the agent was killed")
	}

	m = e.manager()
	t.Cleanup(func() { closeManager(t, m) })
	got, err := m.Get("k9")
	if err != nil || !got.Hibernated || got.Status != clone.StatusOK {
		t.Fatalf("after kill -9 and restart: %+v %v, want hibernated and OK", got, err)
	}
	if err := e.queryWith(c, "prefer", "SELECT v FROM t WHERE id = 1", "one"); err != nil {
		t.Fatalf("connection after kill -9 and restart: %v", err)
	}
	e.destroy(m, "k9")
	e.assertNoLeaks(m)
}
