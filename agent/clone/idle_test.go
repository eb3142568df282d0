package clone_test

import (
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/events"
)

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }() // a listener the test only holds
	return l.Addr().(*net.TCPAddr).Port
}

// TestIdleCleanup drives the idle loop with a fake clock: an idle
// unprotected clone is deleted after maxIdleMinutes (10 here), a protected
// one survives until its protection expires, and a clone with a client
// connection is never idle.
func TestIdleCleanup(t *testing.T) {
	e := newEnv(t, 5)
	m := e.manager()
	defer closeManager(t, m)
	idle := e.create(m, e.req("idle1"))
	pr := e.req("prot2")
	pr.Protected = true
	pr.ProtectionDurationMinutes = new(uint(30))
	e.create(m, pr)
	busy := e.create(m, e.req("busy3"))
	conn, err := e.connect(busy, "alice", goodPassword, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(e.ctx) }() // a failed goodbye loses nothing

	e.clock.Advance(9 * time.Minute)
	if got := m.CheckIdle(e.ctx); len(got) != 0 {
		t.Fatalf("deleted %v before maxIdleMinutes", got)
	}
	if c, _ := m.Get("idle1"); !c.DeleteAt.Equal(idle.DeleteAt) {
		t.Fatalf("deleteAt moved: %v -> %v", idle.DeleteAt, c.DeleteAt)
	}
	e.clock.Advance(2 * time.Minute)
	got := m.CheckIdle(e.ctx)
	if len(got) != 1 || got[0] != "idle1" {
		t.Fatalf("deleted %v, want [idle1]", got)
	}
	if _, err := m.Wait(e.ctx, "idle1"); !errors.Is(err, clone.ErrNotFound) {
		t.Fatalf("idle1: %v", err)
	}
	if c, _ := m.Get("busy3"); c.DeleteAt.Before(e.clock.Now()) {
		t.Fatalf("busy clone's deleteAt %v is not in the future", c.DeleteAt)
	}

	// Protection expires at +30m; the clone is then idle from that moment.
	e.clock.Advance(20 * time.Minute) // now +31m
	if got := m.CheckIdle(e.ctx); len(got) != 0 {
		t.Fatalf("deleted %v right when protection expired", got)
	}
	if c, _ := m.Get("prot2"); c.Protected {
		t.Fatal("protection did not expire")
	}
	e.clock.Advance(11 * time.Minute) // +42m: busy3 still has its connection
	got = m.CheckIdle(e.ctx)
	if len(got) != 1 || got[0] != "prot2" {
		t.Fatalf("deleted %v, want [prot2]", got)
	}
	if _, err := m.Wait(e.ctx, "prot2"); !errors.Is(err, clone.ErrNotFound) {
		t.Fatalf("prot2: %v", err)
	}
	_ = conn.Close(e.ctx) // a failed goodbye loses nothing
	e.waitNoClients(busy)
	e.clock.Advance(9 * time.Minute)
	if got := m.CheckIdle(e.ctx); len(got) != 0 {
		t.Fatalf("deleted %v 9 minutes after the last connection closed", got)
	}
	e.clock.Advance(2 * time.Minute)
	if got := m.CheckIdle(e.ctx); len(got) != 1 || got[0] != "busy3" {
		t.Fatalf("deleted %v, want [busy3]", got)
	}
	if _, err := m.Wait(e.ctx, "busy3"); !errors.Is(err, clone.ErrNotFound) {
		t.Fatalf("busy3 after idle cleanup: %v, want ErrNotFound", err)
	}
	e.assertNoLeaks(m)
}

// waitNoClients waits (in real time) until the server has no client
// backend but the one asking: a closed connection's backend exits
// asynchronously.
func (e *env) waitNoClients(c clone.Clone) {
	e.t.Helper()
	for range 500 {
		if e.query(c, "SELECT count(*)::text FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()") == "0" {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.t.Fatal("client connections did not go away")
}

// TestIdleKeepsProtectedForever: a clone protected without expiry (max 0)
// is never idle-deleted.
func TestIdleKeepsProtectedForever(t *testing.T) {
	e := newEnv(t, 2)
	e.cfg.Cloning.ProtectionMaxDurationMinutes = 0
	e.cfg.Cloning.ProtectionLeaseDurationMinutes = 0
	m := e.manager()
	defer closeManager(t, m)
	r := e.req("forever1")
	r.Protected = true
	c := e.create(m, r)
	if !c.ProtectedTill.IsZero() {
		t.Fatalf("protectedTill = %v, want none", c.ProtectedTill)
	}
	e.clock.Advance(1000 * time.Hour)
	if got := m.CheckIdle(e.ctx); len(got) != 0 {
		t.Fatalf("deleted %v", got)
	}
	if err := m.Destroy(e.ctx, "forever1"); !errors.Is(err, clone.ErrProtected) {
		t.Fatalf("destroy: %v", err)
	}
	if _, err := m.UpdateProtection("forever1", false, nil); err != nil {
		t.Fatalf("unprotect forever1: %v", err)
	}
	e.destroy(m, "forever1")
	e.assertNoLeaks(m)
}

// TestLoopRestartsDeadPostgres: when a clone's postgres dies while the
// agent runs, the next pass of the loop starts it again on its port.
func TestLoopRestartsDeadPostgres(t *testing.T) {
	e := newEnv(t, 2)
	m := e.manager()
	defer closeManager(t, m)
	c := e.create(m, e.req("crash1"))
	pid := postmasterOf(t, mountOf(t, e, "crash1"))
	if pid == 0 {
		t.Fatal("no postmaster")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill postgres %d: %v", pid, err)
	}
	for i := 0; i < 500 && syscall.Kill(pid, 0) == nil; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if got := m.CheckIdle(e.ctx); len(got) != 0 {
		t.Fatalf("deleted %v", got)
	}
	after, _ := m.Get("crash1")
	if after.Status != clone.StatusOK || after.Port != c.Port || e.query(after, "SELECT v FROM t") != "one" {
		t.Fatalf("after restart: %+v", after)
	}
	if postmasterOf(t, mountOf(t, e, "crash1")) == pid {
		t.Fatal("same postmaster pid: not restarted")
	}
	e.destroy(m, "crash1")
	e.assertNoLeaks(m)
}

// TestProtectionExpiryWarning: a clone protected for 30 minutes with a
// 10-minute warning gets clone.protection_expiring once, 20 minutes in
// (not before, not again, not after a restart of the agent), and
// clone.protection_expired when it ends; a new protection warns anew.
func TestProtectionExpiryWarning(t *testing.T) {
	e := newEnv(t, 2)
	e.cfg.Cloning.ProtectionExpiryWarningMinutes = 10
	m := e.manager()
	r := e.req("warned1")
	r.Protected = true
	r.ProtectionDurationMinutes = new(uint(30))
	e.create(m, r)
	count := func(k events.Kind) int {
		n := 0
		for _, got := range e.eventKinds("warned1") {
			if got == k {
				n++
			}
		}
		return n
	}
	e.clock.Advance(19 * time.Minute)
	m.CheckIdle(e.ctx)
	if n := count(events.CloneProtectionExpiring); n != 0 {
		t.Fatalf("%d warnings 11 minutes before the end, want none yet", n)
	}
	e.clock.Advance(2 * time.Minute) // 9 minutes left
	m.CheckIdle(e.ctx)
	m.CheckIdle(e.ctx)
	if n := count(events.CloneProtectionExpiring); n != 1 {
		t.Fatalf("%d warnings within the warning time, want exactly 1", n)
	}
	// A restarted agent remembers it warned.
	closeManager(t, m)
	m = e.manager()
	defer closeManager(t, m)
	m.CheckIdle(e.ctx)
	if n := count(events.CloneProtectionExpiring); n != 1 {
		t.Fatalf("%d warnings after a restart, want still 1", n)
	}
	e.clock.Advance(10 * time.Minute) // past the end
	m.CheckIdle(e.ctx)
	if n := count(events.CloneProtectionExpired); n != 1 {
		t.Fatalf("%d expired events, want 1", n)
	}
	if c, _ := m.Get("warned1"); c.Protected {
		t.Fatal("protection did not end")
	}
	// Protected again, for 5 minutes: inside the warning time at once.
	if _, err := m.UpdateProtection("warned1", true, new(uint(5))); err != nil {
		t.Fatal(err)
	}
	m.CheckIdle(e.ctx)
	if n := count(events.CloneProtectionExpiring); n != 2 {
		t.Fatalf("%d warnings after a new protection, want 2", n)
	}
}
