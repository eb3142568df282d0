package clone_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/storage"
)

func (e *env) warmManager() *clone.Manager {
	e.t.Helper()
	m, err := clone.NewManager(e.ctx, clone.Options{Config: e.cfg, Pools: []storage.Pool{e.pool}, Logger: e.log.Logger(), Now: e.clock.Now, CheckInterval: -1, WarmInterval: -1, Events: e.bus})
	if err != nil {
		e.t.Fatal(err)
	}
	return m
}

// waitWarm runs refill passes until n warm clones of snapshot snapID are
// ready.
func (e *env) waitWarm(m *clone.Manager, n int, snapID string) clone.WarmStats {
	e.t.Helper()
	var st clone.WarmStats
	for range 20 {
		m.FillWarm(e.ctx)
		if st = m.Warm(); st.Ready == n && st.Starting == 0 && st.SnapshotID == snapID {
			return st
		}
		time.Sleep(50 * time.Millisecond) // a recycled clone is destroyed in the background
	}
	e.t.Fatalf("warm pool: %+v, want %d ready of %s", st, n, snapID)
	return st
}

// TestWarmClones: with cloning.warm.count 1 the agent keeps one started
// clone of the newest snapshot that no login opens and no listing shows;
// a create with default settings takes it (ready at once, with the new
// user and password only, the warm identity gone), the pool refills, a
// create with extra settings is built as usual, and a new snapshot
// recycles the warm clone.
func TestWarmClones(t *testing.T) {
	e := newEnv(t, 5)
	e.cfg.Cloning.Warm.Count = 1
	e.cfg.Cloning.Warm.MaxMemoryMiB = 512
	m := e.warmManager()
	t.Cleanup(func() { closeManager(t, m) })

	st := e.waitWarm(m, 1, e.snaps[0].ID)
	if st.PSSBytes == 0 || st.PSSBytes > st.MaxBytes {
		t.Errorf("warm memory %d bytes, want above 0 and at most %d", st.PSSBytes, st.MaxBytes)
	}
	if n := len(m.List()); n != 0 {
		t.Fatalf("%d clones listed, want the warm one hidden", n)
	}
	ds, err := e.pool.Clones(e.ctx)
	if err != nil || len(ds) != 1 || !strings.HasPrefix(ds[0].Name, clone.WarmPrefix) {
		t.Fatalf("pool clones %v (%v), want one warm dataset", ds, err)
	}
	warmName := ds[0].Name
	if _, err := m.Get(warmName); !errors.Is(err, clone.ErrNotFound) {
		t.Fatalf("Get of the warm clone: %v, want not found", err)
	}
	if _, err := m.Create(e.ctx, e.req(warmName)); err == nil || !strings.Contains(err.Error(), clone.WarmPrefix) {
		t.Fatalf("create with a warm clone's name: %v, want refused", err)
	}

	c, err := m.Create(e.ctx, e.req("taken"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Status != clone.StatusOK {
		t.Fatalf("create served by a warm clone returned %s (%s), want OK at once", c.Status, c.StatusMessage)
	}
	if got := e.query(c, "SELECT current_user"); got != "alice" {
		t.Fatalf("current_user %q, want alice", got)
	}
	if got := e.query(c, "SELECT v FROM t WHERE id = 1"); got != "one" {
		t.Fatalf("data %q, want the snapshot's", got)
	}
	if conn, err := e.connect(c, "app", prodPassword, "postgres"); err == nil {
		_ = conn.Close(e.ctx) // the failure is the point
		t.Fatal("the snapshot's app role logs into a clone made from a warm clone with its production password")
	}
	if _, err := m.Get(warmName); !errors.Is(err, clone.ErrNotFound) {
		t.Fatalf("the warm identity is still there: %v", err)
	}
	if st := m.Warm(); st.Ready != 0 || st.Taken != 1 {
		t.Fatalf("after the take: %+v, want 0 ready, 1 taken", st)
	}
	if k := e.eventKinds("taken"); len(k) != 2 {
		t.Errorf("events of the taken clone %v, want creating and ready", k)
	}

	// Refilled; a create with extra settings does not fit and is built.
	e.waitWarm(m, 1, e.snaps[0].ID)
	r := e.req("tuned")
	r.ExtraConf = map[string]string{"work_mem": "8MB"}
	tuned := e.create(m, r)
	if got := e.query(tuned, "SHOW work_mem"); got != "8MB" {
		t.Fatalf("work_mem %q, want 8MB", got)
	}
	if st := m.Warm(); st.Ready != 1 || st.Taken != 1 {
		t.Fatalf("after a create that does not fit: %+v, want the warm clone left", st)
	}

	// The taken clone survives an agent restart under its own id.
	closeManager(t, m)
	m = e.warmManager()
	if got := e.query(c, "SELECT current_user"); got != "alice" {
		t.Fatalf("after a restart: current_user %q", got)
	}

	// A new snapshot: the warm clone is recycled and the next one is of
	// the new data.
	s2 := e.addSnapshot("UPDATE t SET v = 'two' WHERE id = 1")
	e.waitWarm(m, 1, s2.ID)
	c2, err := m.Create(e.ctx, e.req("fresh"))
	if err != nil || c2.Status != clone.StatusOK || c2.SnapshotID != s2.ID {
		t.Fatalf("create after the new snapshot: %+v %v, want OK at once on %s", c2, err, s2.ID)
	}
	if got := e.query(c2, "SELECT v FROM t WHERE id = 1"); got != "two" {
		t.Fatalf("data %q, want the new snapshot's", got)
	}
	for _, id := range []string{"taken", "tuned", "fresh"} {
		e.destroy(m, id)
	}
	e.cfg.Cloning.Warm.Count = 0
	e.waitWarm(m, 0, "")
	for range 50 {
		if ds, _ := e.pool.Clones(e.ctx); len(ds) == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.assertNoLeaks(m)
}
