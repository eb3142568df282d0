package api_test

import (
	"context"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/storage"
)

// newWarmEnv is an agent keeping count warm clones.
func newWarmEnv(t testing.TB, count, ports int, snapshots ...[]string) *env {
	t.Helper()
	return newEnvTweaked(t, storage.ModeBtrfs, ports, func(c *config.Config) {
		c.Cloning.Warm.Count = count
		c.Cloning.Warm.MaxMemoryMiB = 1024
	}, snapshots...)
}

// waitWarmFull waits until n warm clones are ready, none is being built
// and their memory is measured.
func (e *env) waitWarmFull(n int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
	defer cancel()
	for {
		st, err := e.client.Status(ctx)
		if err != nil {
			e.t.Fatalf("status: %v", err)
		}
		if w := st.Cloning.Warm; w != nil && w.Ready == n && w.Starting == 0 && w.MemoryBytes > 0 {
			return
		}
		select {
		case <-ctx.Done():
			e.t.Fatalf("warm pool not full within a minute: %+v", st.Cloning.Warm)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitWarmReady waits until the status reports n warm clones ready and
// their memory measured (after the refill pass).
func (e *env) waitWarmReady(n int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
	defer cancel()
	for {
		st, err := e.client.Status(ctx)
		if err != nil {
			e.t.Fatalf("status: %v", err)
		}
		if w := st.Cloning.Warm; w != nil && w.Ready >= n && w.MemoryBytes > 0 {
			return
		}
		select {
		case <-ctx.Done():
			e.t.Fatalf("no %d warm clones ready within a minute: %+v", n, st.Cloning.Warm)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestWarmCloneOverAPI: GET /status reports the warm pool apart from the
// clones; POST /clone with default settings answers 201 with status OK
// (a warm clone was taken) and the clone answers its user's password.
func TestWarmCloneOverAPI(t *testing.T) {
	e := newWarmEnv(t, 1, 4, []string{"CREATE TABLE t (v text)", "INSERT INTO t VALUES ('warm')"})
	e.waitWarmReady(1)
	st, err := e.client.Status(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Cloning.NumClones != 0 || len(st.Cloning.Clones) != 0 {
		t.Fatalf("status lists %d clones, want the warm one hidden", st.Cloning.NumClones)
	}
	if w := st.Cloning.Warm; w.Target != 1 || w.MemoryBytes == 0 || w.SnapshotID != e.snaps[0].ID {
		t.Fatalf("status warm %+v, want target 1, memory measured, snapshot %s", w, e.snaps[0].ID)
	}
	c, err := e.client.CreateClone(e.ctx, e.createReq("w1", ""))
	if err != nil {
		t.Fatal(err)
	}
	if c.Status.Code != "OK" || c.DB.Port == "" {
		t.Fatalf("POST /clone answered %s (port %q), want OK at once", c.Status.Code, c.DB.Port)
	}
	if got := query(e.ctx, t, c, goodPassword, "SELECT v FROM t"); got != "warm" {
		t.Fatalf("clone answered %q", got)
	}
	st, err = e.client.Status(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Cloning.NumClones != 1 || st.Cloning.Warm.Taken != 1 {
		t.Fatalf("after the take: %d clones, warm %+v; want 1 clone, 1 taken", st.Cloning.NumClones, st.Cloning.Warm)
	}
	e.destroy("w1")
}

// TestHibernatedCloneOverAPI: a hibernated clone is OK to DLE clients,
// with hibernated true and counted in GET /status; a connection wakes it.
func TestHibernatedCloneOverAPI(t *testing.T) {
	e := newEnvTweaked(t, storage.ModeBtrfs, 3, func(c *config.Config) { c.Cloning.HibernateAfterMinutes = 1 },
		[]string{"CREATE TABLE t (v text)", "INSERT INTO t VALUES ('asleep')"})
	c := e.createOK(e.createReq("h1", ""))
	if err := e.mgr.Hibernate(e.ctx, "h1"); err != nil {
		t.Fatal(err)
	}
	got, err := e.client.Clone(e.ctx, "h1")
	if err != nil {
		t.Fatal(err)
	}
	if got.Status.Code != "OK" || !got.Hibernated || got.DB.Port != c.DB.Port {
		t.Fatalf("GET /clone of a hibernated clone: status %s, hibernated %v, port %q; want OK, true, %q", got.Status.Code, got.Hibernated, got.DB.Port, c.DB.Port)
	}
	st, err := e.client.Status(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Cloning.NumHibernated != 1 || st.Cloning.NumClones != 1 {
		t.Fatalf("status: %d hibernated of %d clones, want 1 of 1", st.Cloning.NumHibernated, st.Cloning.NumClones)
	}
	if v := query(e.ctx, t, got, goodPassword, "SELECT v FROM t"); v != "asleep" {
		t.Fatalf("woken clone answered %q", v)
	}
	if got, err = e.client.Clone(e.ctx, "h1"); err != nil || got.Hibernated {
		t.Fatalf("after a connection: %+v %v, want awake", got, err)
	}
	e.destroy("h1")
}
