package snapshot_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/snapshot"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/storagetest"
	"github.com/thinlab/thinlab/internal/logtest"
)

// clock is a test clock that only moves when told.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// poolWithSnapshots makes a real btrfs loop pool with n snapshots one hour
// apart, returned oldest first.
func poolWithSnapshots(t *testing.T, n int) (storage.Pool, []string) {
	t.Helper()
	p := storagetest.NewLoopPool(t, storage.ModeBtrfs)
	ctx := t.Context()
	base := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	var ids []string
	for i := range n {
		if err := os.WriteFile(filepath.Join(p.MainDir(), "marker"), []byte{byte('0' + i)}, 0o644); err != nil {
			t.Fatal(err)
		}
		s, err := p.Snapshot(ctx, storage.SnapshotOptions{DataStateAt: base.Add(time.Duration(i) * time.Hour), Message: "test"})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, s.ID)
	}
	return p, ids
}

// snapshotIDs lists the pool's snapshots, newest first.
func snapshotIDs(t *testing.T, p storage.Pool) []string {
	t.Helper()
	snaps, err := p.Snapshots(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range snaps {
		out = append(out, s.ID)
	}
	return out
}

func TestStorePersistsAndRefusesUnreadableState(t *testing.T) {
	dir := t.TempDir()
	cfg := &config.Config{StateDir: dir}
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	p := snapshot.New(snapshot.Options{Config: cfg, Now: func() time.Time { return now }})
	if p.Err() != nil {
		t.Fatal(p.Err())
	}
	till := now.Add(time.Hour)
	del := now.Add(48 * time.Hour)
	if err := p.Set("p@snapshot_20260101000000", snapshot.Meta{Protected: true, ProtectedTill: till}); err != nil {
		t.Fatal(err)
	}
	if err := p.Set("p@snapshot_20260102000000", snapshot.Meta{DeleteAt: del}); err != nil {
		t.Fatal(err)
	}
	// The file keeps the JSON the API has always written.
	raw, err := os.ReadFile(filepath.Join(dir, snapshot.MetaFile))
	if err != nil {
		t.Fatal(err)
	}
	var onDisk map[string]map[string]any
	if err := json.Unmarshal(raw, &onDisk); err != nil {
		t.Fatal(err)
	}
	want := map[string]map[string]any{
		"p@snapshot_20260101000000": {"protected": true, "protectedTill": till.Format(time.RFC3339Nano)},
		"p@snapshot_20260102000000": {"deleteAt": del.Format(time.RFC3339Nano)},
	}
	if !reflect.DeepEqual(onDisk, want) {
		t.Fatalf("snapshots.json = %s, want %v", raw, want)
	}
	if fi, err := os.Stat(filepath.Join(dir, snapshot.MetaFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("snapshots.json mode: %v %v", fi, err)
	}

	// A new policy (a restarted agent) reads it back.
	q := snapshot.New(snapshot.Options{Config: cfg})
	if m := q.Get("p@snapshot_20260101000000"); !m.Protected || !m.ProtectedTill.Equal(till) || !m.ProtectedAt(now) || m.ProtectedAt(till) {
		t.Fatalf("reloaded protection %+v", m)
	}
	if m := q.Get("p@snapshot_20260102000000"); !m.DeleteAt.Equal(del) || m.ProtectedAt(now) {
		t.Fatalf("reloaded deleteAt %+v", m)
	}
	// The zero Meta removes the entry.
	if err := q.Set("p@snapshot_20260102000000", snapshot.Meta{}); err != nil {
		t.Fatal(err)
	}
	raw, _ = os.ReadFile(filepath.Join(dir, snapshot.MetaFile))
	if strings.Contains(string(raw), "20260102000000") {
		t.Fatalf("cleared entry still in the file: %s", raw)
	}
	// Without a stateDir nothing can be saved, and the error says why.
	if err := snapshot.New(snapshot.Options{}).Set("p@snapshot_20260101000000", snapshot.Meta{Protected: true}); err == nil || !strings.Contains(err.Error(), "stateDir") {
		t.Fatalf("Set without stateDir: %v", err)
	}

	// An unreadable file: reported, changes refused, nothing deleted, and
	// the file left as it was.
	if err := os.WriteFile(filepath.Join(dir, snapshot.MetaFile), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	log := &logtest.Buffer{}
	cfg.Retrieval.KeepSnapshots = 1
	b := snapshot.New(snapshot.Options{Config: cfg, Logger: log.Logger()})
	if b.Err() == nil || !strings.Contains(log.String(), "snapshot protection state unreadable") {
		t.Fatalf("unreadable state not reported: %v\n%s", b.Err(), log)
	}
	if err := b.Set("p@snapshot_20260101000000", snapshot.Meta{}); err == nil {
		t.Fatal("Set with unreadable state succeeded")
	}
	b.Forget("p@snapshot_20260101000000")
	if got := b.Sweep(t.Context()); got != nil {
		t.Fatalf("sweep with unreadable state deleted %v", got)
	}
	if _, err := b.Retain(t.Context(), nil); err == nil || !strings.Contains(err.Error(), "retention skipped") {
		t.Fatalf("retention with unreadable state: %v", err)
	}
	if raw, _ := os.ReadFile(filepath.Join(dir, snapshot.MetaFile)); string(raw) != "{not json" {
		t.Fatalf("unreadable state overwritten: %s", raw)
	}
}

// TestRetention: the N newest are kept; a snapshot with a clone and a
// protected one are never deleted and count towards N; an expired
// protection no longer keeps a snapshot.
func TestRetention(t *testing.T) {
	p, ids := poolWithSnapshots(t, 5)
	ctx := t.Context()
	if _, err := p.Clone(ctx, ids[0], "keepme"); err != nil {
		t.Fatal(err)
	}
	// Background inside: t.Context() is already cancelled when cleanups run.
	t.Cleanup(func() {
		if err := p.DestroyClone(context.Background(), "keepme"); err != nil {
			t.Errorf("cleanup: destroy clone keepme: %v", err)
		}
	})
	cfg := clonetest.Config(t, p, 1)
	cfg.Retrieval.KeepSnapshots = 3
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Now()}
	log := &logtest.Buffer{}
	pol := snapshot.New(snapshot.Options{Config: cfg, Pools: []storage.Pool{p}, Logger: log.Logger(), Now: clk.Now, SweepInterval: -1})
	if err := pol.Set(ids[1], snapshot.Meta{Protected: true, ProtectedTill: clk.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}

	deleted, err := pol.Retain(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(deleted)
	if want := []string{ids[2], ids[3]}; !reflect.DeepEqual(deleted, want) {
		t.Fatalf("retention deleted %v, want %v", deleted, want)
	}
	if got, want := snapshotIDs(t, p), []string{ids[4], ids[1], ids[0]}; !reflect.DeepEqual(got, want) {
		t.Fatalf("after retention %v, want %v (newest, protected, cloned)", got, want)
	}
	for _, id := range deleted {
		if line := "snapshot=" + id + " reason=retention keep=3"; !strings.Contains(log.String(), line) {
			t.Errorf("log lacks %q:\n%s", line, log)
		}
	}
	// At N nothing more goes.
	if deleted, err := pol.Retain(ctx, p); err != nil || len(deleted) != 0 {
		t.Fatalf("second retention deleted %v, %v", deleted, err)
	}

	// Two hours later the protection has expired: the periodic sweep of a
	// policy keeping 2 deletes that snapshot and forgets its state; the
	// clone's snapshot stays.
	clk.Add(2 * time.Hour)
	cfg.Retrieval.KeepSnapshots = 2
	pol2 := snapshot.New(snapshot.Options{Config: cfg, Pools: []storage.Pool{p}, Logger: log.Logger(), Now: clk.Now, SweepInterval: -1})
	if got := pol2.Sweep(ctx); !reflect.DeepEqual(got, []string{ids[1]}) {
		t.Fatalf("sweep deleted %v, want %s", got, ids[1])
	}
	if got, want := snapshotIDs(t, p), []string{ids[4], ids[0]}; !reflect.DeepEqual(got, want) {
		t.Fatalf("after sweep %v, want %v", got, want)
	}
	if m := snapshot.New(snapshot.Options{Config: cfg}).Get(ids[1]); !reflect.DeepEqual(m, snapshot.Meta{}) {
		t.Fatalf("state of a deleted snapshot kept: %+v", m)
	}
	// keepSnapshots 0 keeps everything.
	cfg.Retrieval.KeepSnapshots = 0
	if got, err := snapshot.New(snapshot.Options{Config: cfg, Pools: []storage.Pool{p}}).Retain(ctx, p); err != nil || got != nil {
		t.Fatalf("keepSnapshots 0 deleted %v, %v", got, err)
	}
}

// TestSweepDeleteAt: a snapshot past its deleteAt is deleted unless it is
// protected or a clone uses it; a future deleteAt waits.
func TestSweepDeleteAt(t *testing.T) {
	p, ids := poolWithSnapshots(t, 4)
	ctx := t.Context()
	if _, err := p.Clone(ctx, ids[2], "user"); err != nil {
		t.Fatal(err)
	}
	// Background inside: t.Context() is already cancelled when cleanups run.
	t.Cleanup(func() {
		if err := p.DestroyClone(context.Background(), "user"); err != nil {
			t.Errorf("cleanup: destroy clone user: %v", err)
		}
	})
	cfg := clonetest.Config(t, p, 1)
	clk := &clock{t: time.Now()}
	log := &logtest.Buffer{}
	pol := snapshot.New(snapshot.Options{Config: cfg, Pools: []storage.Pool{p}, Logger: log.Logger(), Now: clk.Now, SweepInterval: -1})
	past, future := clk.Now().Add(-time.Minute), clk.Now().Add(time.Hour)
	for id, m := range map[string]snapshot.Meta{
		ids[0]:                                {DeleteAt: past},
		ids[1]:                                {DeleteAt: past, Protected: true},
		ids[2]:                                {DeleteAt: past},
		ids[3]:                                {DeleteAt: future},
		p.Name() + "@snapshot_20000101000000": {Protected: true}, // gone from the pool
	} {
		if err := pol.Set(id, m); err != nil {
			t.Fatal(err)
		}
	}
	if got := pol.Sweep(ctx); !reflect.DeepEqual(got, []string{ids[0]}) {
		t.Fatalf("sweep deleted %v, want %s", got, ids[0])
	}
	if got := pol.Get(p.Name() + "@snapshot_20000101000000"); !reflect.DeepEqual(got, snapshot.Meta{}) {
		t.Fatalf("state of a missing snapshot kept: %+v", got)
	}
	if !strings.Contains(log.String(), "still has clones") {
		t.Fatalf("no warning for the snapshot with a clone:\n%s", log)
	}
	clk.Add(2 * time.Hour)
	if got := pol.Sweep(ctx); !reflect.DeepEqual(got, []string{ids[3]}) {
		t.Fatalf("second sweep deleted %v, want %s", got, ids[3])
	}
	if got, want := snapshotIDs(t, p), []string{ids[2], ids[1]}; !reflect.DeepEqual(got, want) {
		t.Fatalf("after sweeps %v, want %v", got, want)
	}
}

// TestRetentionPerRotatedPool: with retrieval.pools rotating between two
// pools, keepSnapshots applies to each pool on its own: the sweep keeps
// the newest N of every rotated pool (not only the first pool's, and not
// the newest N of both together), and never a snapshot with a clone or a
// protected one (which count towards N, as in TestRetention).
func TestRetentionPerRotatedPool(t *testing.T) {
	a, aIDs := poolWithSnapshots(t, 4)
	b, bIDs := poolWithSnapshots(t, 4)
	ctx := t.Context()
	if _, err := b.Clone(ctx, bIDs[0], "onb"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.DestroyClone(context.Background(), "onb"); err != nil {
			t.Errorf("cleanup: destroy clone onb: %v", err)
		}
	})
	cfg := clonetest.Config(t, a, 1)
	cfg.Pools = append(cfg.Pools, config.Pool{Name: b.Name(), Mode: b.Mode(), Path: b.MainDir()})
	cfg.Retrieval.Pools = []string{a.Name(), b.Name()}
	cfg.Retrieval.KeepSnapshots = 3
	clk := &clock{t: time.Now()}
	pol := snapshot.New(snapshot.Options{Config: cfg, Pools: []storage.Pool{a, b}, Logger: (&logtest.Buffer{}).Logger(), Now: clk.Now, SweepInterval: -1})
	if err := pol.Set(aIDs[1], snapshot.Meta{Protected: true}); err != nil {
		t.Fatal(err)
	}
	deleted := pol.Sweep(ctx)
	slices.Sort(deleted)
	want := []string{aIDs[0], bIDs[1]}
	slices.Sort(want)
	if !reflect.DeepEqual(deleted, want) {
		t.Fatalf("sweep deleted %v, want %v (a's oldest unprotected, b's oldest without a clone)", deleted, want)
	}
	if got, want := snapshotIDs(t, a), []string{aIDs[3], aIDs[2], aIDs[1]}; !reflect.DeepEqual(got, want) {
		t.Fatalf("pool a keeps %v, want %v (N=3 with the protected one)", got, want)
	}
	if got, want := snapshotIDs(t, b), []string{bIDs[3], bIDs[2], bIDs[0]}; !reflect.DeepEqual(got, want) {
		t.Fatalf("pool b keeps %v, want %v (N=3 with the cloned one)", got, want)
	}
	// After a refresh retention runs for the pool it filled only: at N
	// already, nothing more goes.
	if got, err := pol.Retain(ctx, b); err != nil || len(got) != 0 {
		t.Fatalf("retention of b at N deleted %v, %v", got, err)
	}
}
