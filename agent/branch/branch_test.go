package branch

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/storage"
)

// The branch graph over an in-memory pool and clone engine: the rules of
// the graph need no root, postgres or pool; the real workflow on every
// backend is agent/api TestBranches.

type memPool struct {
	storage.Pool
	mu    sync.Mutex
	snaps []storage.Snapshot
}

func (p *memPool) Name() string { return "p" }

func (p *memPool) Snapshots(context.Context) ([]storage.Snapshot, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := append([]storage.Snapshot(nil), p.snaps...)
	storage.SortSnapshots(out)
	return out, nil
}

func (p *memPool) DestroySnapshot(_ context.Context, id string, _ bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, s := range p.snaps {
		if s.ID == id {
			p.snaps = append(p.snaps[:i], p.snaps[i+1:]...)
			return nil
		}
	}
	return storage.ErrNotFound
}

func (p *memPool) add(s storage.Snapshot) storage.Snapshot {
	p.mu.Lock()
	defer p.mu.Unlock()
	s.Pool = "p"
	p.snaps = append(p.snaps, s)
	return s
}

type memClones struct {
	pool   *memPool
	clones []clone.Clone
	// exists makes the next SnapshotClone calls fail with ErrExists.
	exists int
	now    func() time.Time
}

func (c *memClones) List() []clone.Clone { return c.clones }

func (c *memClones) Get(id string) (clone.Clone, error) {
	for _, cl := range c.clones {
		if cl.ID == id {
			return cl, nil
		}
	}
	return clone.Clone{}, clone.ErrNotFound
}

func (c *memClones) SnapshotClone(_ context.Context, id string, opt storage.SnapshotOptions) (storage.Snapshot, error) {
	if c.exists > 0 {
		c.exists--
		return storage.Snapshot{}, fmt.Errorf("%w: same second", storage.ErrExists)
	}
	opt.Source = id
	opt = opt.WithSourceLabel()
	at := opt.DataStateAt.UTC().Truncate(time.Second)
	return c.pool.add(storage.Snapshot{ID: storage.SnapshotID("p", at), DataStateAt: at, CreatedAt: c.now(), Message: opt.Message, Labels: opt.Labels}), nil
}

type harness struct {
	t      *testing.T
	dir    string
	pool   *memPool
	clones *memClones
	svc    *Service
	now    time.Time
}

func newHarness(t *testing.T) *harness {
	h := &harness{t: t, dir: t.TempDir(), pool: &memPool{}, now: time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)}
	h.clones = &memClones{pool: h.pool, now: h.clock}
	h.refresh()
	h.reload()
	return h
}

func (h *harness) clock() time.Time { h.now = h.now.Add(time.Minute); return h.now }

func (h *harness) reload() {
	svc, err := New(Options{StateDir: h.dir, Pools: []storage.Pool{h.pool}, Clones: h.clones, Now: h.clock})
	if err != nil {
		h.t.Fatal(err)
	}
	h.svc = svc
}

// refresh adds a data refresh snapshot.
func (h *harness) refresh() storage.Snapshot {
	at := h.clock()
	return h.pool.add(storage.Snapshot{ID: storage.SnapshotID("p", at), DataStateAt: at, CreatedAt: at})
}

func (h *harness) cloneOn(id, branch, snap string) {
	h.clones.clones = append(h.clones.clones, clone.Clone{ID: id, Branch: branch, SnapshotID: snap, Status: clone.StatusOK, Username: "u_" + id})
}

func (h *harness) head(name string) string {
	h.t.Helper()
	head, err := h.svc.Head(context.Background(), name)
	if err != nil {
		h.t.Fatal(err)
	}
	return head
}

func wantRefused(t *testing.T, err error, part string) {
	t.Helper()
	var be *Error
	if !errors.As(err, &be) || !strings.Contains(be.Message, part) {
		t.Fatalf("got %v, want a refusal saying %q", err, part)
	}
}

func TestMainFollowsRefreshesAndCommits(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	r1 := h.pool.snaps[0]
	if h.head(Default) != r1.ID {
		t.Fatalf("main head %s, want the refresh %s", h.head(Default), r1.ID)
	}
	r2 := h.refresh()
	if h.head(Default) != r2.ID {
		t.Fatal("a newer refresh does not move main")
	}
	h.cloneOn("m", "", r2.ID) // made before branches: counts as main
	h.clones.exists = 1       // the first try falls in a taken second
	res, err := h.svc.Commit(ctx, "m", "work", "")
	if err != nil {
		t.Fatal(err)
	}
	if res.Branch != Default || h.head(Default) != res.Snapshot.ID {
		t.Fatalf("commit on main: %+v, head %s", res, h.head(Default))
	}
	log, err := h.svc.Log(ctx, Default)
	if err != nil || len(log) != 3 || log[0].Author != "u_m" || log[0].Parent != r2.ID || log[1].Parent != r1.ID || log[2].Parent != "-" {
		t.Fatalf("main log %+v %v", log, err)
	}
	r3 := h.refresh()
	if h.head(Default) != r3.ID {
		t.Fatal("a refresh after a commit does not move main")
	}
	// The state survives a restart.
	h.reload()
	if d, err := h.svc.Snapshot(ctx, res.Snapshot.ID); err != nil || d.Message != "work" || d.Dataset != "p/branch/main" {
		t.Fatalf("commit after reload: %+v %v", d, err)
	}
}

func TestDeleteRules(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	base := h.pool.snaps[0].ID
	if err := h.svc.Create(ctx, "feature", Default, ""); err != nil {
		t.Fatal(err)
	}
	h.cloneOn("f", "feature", base)
	c1, err := h.svc.Commit(ctx, "f", "one", "")
	if err != nil {
		t.Fatal(err)
	}
	// hotfix forks at feature's commit.
	if err := h.svc.Create(ctx, "hotfix", "", c1.Snapshot.ID); err != nil {
		t.Fatal(err)
	}
	h.clones.clones = nil
	wantRefused(t, h.svc.Delete(ctx, "feature"), "fork point of branch hotfix")
	wantRefused(t, h.svc.Delete(ctx, Default), "cannot delete default branch")
	wantRefused(t, h.svc.Delete(ctx, "nope"), "failed to found dataset of the branch: nope")
	wantRefused(t, h.svc.CheckSnapshotDelete(c1.Snapshot.ID), "head of branch")
	if _, err := h.svc.Protect(ctx, "hotfix", true, time.Time{}); err != nil {
		t.Fatal(err)
	}
	wantRefused(t, h.svc.Delete(ctx, "hotfix"), "protected")
	// Expired protection no longer blocks.
	if _, err := h.svc.Protect(ctx, "hotfix", true, h.now.Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	h.now = h.now.Add(time.Hour)
	if err := h.svc.Delete(ctx, "hotfix"); err != nil {
		t.Fatalf("delete hotfix after its protection expired: %v", err)
	}
	if err := h.svc.Delete(ctx, "feature"); err != nil {
		t.Fatal(err)
	}
	if snaps, _ := h.pool.Snapshots(ctx); len(snaps) != 1 || snaps[0].ID != base {
		t.Fatalf("snapshots after deleting the branches: %+v, want the refresh only", snaps)
	}
	list, err := h.svc.List(ctx)
	if err != nil || len(list) != 1 || list[0].Name != Default {
		t.Fatalf("branches %+v %v", list, err)
	}
}

func TestNames(t *testing.T) {
	for _, ok := range []string{"main", "feature-1", "fix_2", "ветка", "分支", strings.Repeat("x", MaxNameLen)} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "../x", "a/b", "..", "a b", "a.b", "x\x00", "\xff", "tab\t", strings.Repeat("x", MaxNameLen+1), "-- ; DROP"} {
		if err := ValidateName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestCorruptStateIsAnError(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, StateFile), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := New(Options{StateDir: dir})
	if err == nil || !strings.Contains(err.Error(), StateFile) || !strings.Contains(err.Error(), "move it away") {
		t.Fatalf("corrupt state: %v, want an error naming the file and the fix", err)
	}
}
