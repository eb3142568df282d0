package clone_test

import (
	"encoding/json"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/runtime"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

func postmasterOf(t *testing.T, mount string) int {
	t.Helper()
	procs, err := runtime.Postmasters()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range procs {
		if p.DataDir == filepath.Join(mount, storage.DataSubdir) {
			return p.PID
		}
	}
	return 0
}

func mountOf(t *testing.T, e *env, id string) string {
	t.Helper()
	clones, err := e.pool.Clones(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range clones {
		if c.Name == id {
			return c.Mountpoint
		}
	}
	return ""
}

// TestRestoreAfterAbandonedManager is the in-process form of "kill -9 the
// agent": the first Manager is dropped without Close, one clone's postgres
// is killed with SIGKILL, one clone's dataset disappears, an orphan
// dataset with a running postgres appears, and the state file holds a
// clone stuck in CREATING and one stuck in DELETING. A new Manager on the
// same state dir and pool must sort all of it out.
func TestRestoreAfterAbandonedManager(t *testing.T) {
	e := newEnv(t, 10)
	m1 := e.manager()
	keep := e.create(m1, e.req("keep1"))
	r := e.req("dead2")
	r.ExtraConf = map[string]string{"statement_timeout": "777"}
	dead := e.create(m1, r)
	pr := e.req("prot3")
	pr.Protected = true
	prot := e.create(m1, pr)
	gone := e.create(m1, e.req("gone4"))
	del := e.create(m1, e.req("del5"))
	delPID := postmasterOf(t, mountOf(t, e, "del5"))
	if delPID == 0 {
		t.Fatal("no postmaster for del5")
	}
	// m1 is abandoned from here on: no Close, as after kill -9.

	// postgres of dead2 dies hard.
	pid := postmasterOf(t, mountOf(t, e, "dead2"))
	if pid == 0 {
		t.Fatal("no postmaster for dead2")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill postgres %d: %v", pid, err)
	}
	for i := 0; i < 200 && syscall.Kill(pid, 0) == nil; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	// gone4's dataset disappears (its postgres first, as an admin would).
	uids := e.cfg.Provision.CloneUIDs
	rt, err := runtime.New(runtime.Options{User: mustUser(t), RunDir: runtime.RunDirFor(e.cfg.StateDir), CloneUIDFrom: uids.From, CloneUIDTo: uids.To})
	if err != nil {
		t.Fatal(err)
	}
	goneMount := mountOf(t, e, "gone4")
	procs, _ := runtime.Postmasters()
	for _, p := range procs {
		if p.DataDir == filepath.Join(goneMount, storage.DataSubdir) {
			rt.KillPID(p)
		}
	}
	if err := runtime.Unmount(goneMount); err != nil {
		t.Fatal(err)
	}
	if err := e.pool.DestroyClone(e.ctx, "gone4"); err != nil {
		t.Fatal(err)
	}
	// An orphan: a dataset no clone owns, with postgres running in it.
	orphan, err := e.pool.Clone(e.ctx, e.snaps[0].ID, "orphan6")
	if err != nil {
		t.Fatal(err)
	}
	orphanDir := filepath.Join(orphan.Mountpoint, storage.DataSubdir)
	if err := rt.Start(e.ctx, runtime.Instance{Name: "orphan6", DataDir: orphanDir, Port: freePort(t), Settings: runtime.DefaultSettings}); err != nil {
		t.Fatal(err)
	}
	orphanPID, _ := rt.Running(orphanDir)

	// The state file: resume7 is stuck in CREATING (its record exists, its
	// dataset was half made), del5 stuck in DELETING.
	statePath := filepath.Join(e.cfg.StateDir, clone.StateFile)
	st, err := os.Stat(statePath)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("state file mode %v, want 0600 (it holds passwords)", st.Mode().Perm())
	}
	raw, _ := os.ReadFile(statePath)
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	recs := doc["clones"].([]any)
	for _, x := range recs {
		rec := x.(map[string]any)
		if rec["id"] == "del5" {
			rec["status"] = "DELETING"
		}
	}
	resume := map[string]any{}
	for _, x := range recs {
		if x.(map[string]any)["id"] == "keep1" {
			maps.Copy(resume, x.(map[string]any))
		}
	}
	resume["id"] = "resume7"
	resume["status"] = "CREATING"
	resume["port"] = del.Port + 1000 // a port outside the range is kept as recorded
	resume["mountpoint"] = ""
	doc["clones"] = append(recs, resume)
	if _, err := e.pool.Clone(e.ctx, e.snaps[0].ID, "resume7"); err != nil { // the half-made dataset
		t.Fatal(err)
	}
	raw, _ = json.Marshal(doc)
	if err := os.WriteFile(statePath, raw, 0o600); err != nil {
		t.Fatal(err)
	}

	m2 := e.manager()
	defer closeManager(t, m2)

	// keep1 untouched, same port and password.
	c := e.wait(m2, "keep1", clone.StatusOK)
	if c.Port != keep.Port || e.query(c, "SELECT v FROM t") != "one" {
		t.Fatalf("keep1 after restart: %+v", c)
	}
	// dead2 restarted on its port with its settings.
	c = e.wait(m2, "dead2", clone.StatusOK)
	if c.Port != dead.Port || e.query(c, "SHOW statement_timeout") != "777ms" {
		t.Fatalf("dead2 after restart: %+v", c)
	}
	// prot3 still protected.
	c = e.wait(m2, "prot3", clone.StatusOK)
	if !c.Protected || c.Port != prot.Port {
		t.Fatalf("prot3 after restart: %+v", c)
	}
	// gone4 dropped, with a log line.
	if _, err := m2.Get("gone4"); !errors.Is(err, clone.ErrNotFound) {
		t.Fatalf("gone4: %v", err)
	}
	if !strings.Contains(e.log.String(), "dataset is gone") {
		t.Fatal("no log line for the dropped clone")
	}
	_ = gone
	// del5's deletion finished.
	if _, err := m2.Wait(e.ctx, "del5"); !errors.Is(err, clone.ErrNotFound) {
		t.Fatalf("del5: %v", err)
	}
	if m := mountOf(t, e, "del5"); m != "" {
		t.Fatalf("del5's dataset is still mounted at %s after its deletion finished", m)
	}
	// Its postmaster was started by m1 (this process reaps it shortly
	// after it exits).
	for i := 0; i < 200 && syscall.Kill(delPID, 0) == nil; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if syscall.Kill(delPID, 0) == nil {
		t.Fatalf("del5's postgres (pid %d) still runs after its deletion finished", delPID)
	}
	// resume7's creation was redone from scratch.
	c = e.wait(m2, "resume7", clone.StatusOK)
	if e.query(c, "SELECT current_user") != "alice" {
		t.Fatalf("resume7: %+v", c)
	}
	// The orphan is gone, dataset and process.
	if mountOf(t, e, "orphan6") != "" {
		t.Fatal("orphan dataset left")
	}
	if syscall.Kill(orphanPID, 0) == nil {
		t.Fatalf("orphan postgres %d still runs", orphanPID)
	}

	// A third Manager after a clean Close finds the same clones running.
	closeManager(t, m2)
	m3 := e.manager()
	defer closeManager(t, m3)
	ids := []string{}
	for _, c := range m3.List() {
		ids = append(ids, c.ID)
	}
	sort.Strings(ids)
	if strings.Join(ids, ",") != "dead2,keep1,prot3,resume7" {
		t.Fatalf("clones after second restart: %v", ids)
	}
	// Exactly one restart over m2 and m3: dead2, whose postgres was killed.
	var restarts []string
	for line := range strings.SplitSeq(e.log.String(), "\n") {
		if strings.Contains(line, "restarting it") {
			restarts = append(restarts, line)
		}
	}
	if len(restarts) != 1 || !strings.Contains(restarts[0], "clone=dead2") {
		t.Fatalf("restarts logged: %q; want one, for dead2 (a running clone must not be restarted)", restarts)
	}
	if _, err := m3.UpdateProtection("prot3", false, nil); err != nil {
		t.Fatalf("unprotect prot3: %v", err)
	}
	for _, id := range ids {
		e.destroy(m3, id)
	}
	e.assertNoLeaks(m3)
}

func mustUser(t *testing.T) pgcluster.OSUser {
	u, err := pgcluster.LookupUser("postgres")
	if err != nil {
		t.Fatal(err)
	}
	return u
}
