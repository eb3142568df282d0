package storagetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/backend"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

// RunConformance checks that the pools newPool makes behave as
// storage.Pool promises. mode is the backend under test (storage.ModeBtrfs,
// ...): every pool newPool makes must be of it, and the subtests that need
// it (MissingPath) take it from here, not from an earlier subtest. Each
// subtest takes a fresh pool. Pools made with NewLoopPool are also reopened
// from scratch and, at the end, checked for leftovers (mounts, loop
// devices, zpools, processes, files).
func RunConformance(t *testing.T, mode string, newPool func(t *testing.T) storage.Pool) {
	var mu sync.Mutex
	var made []*loopInfo
	tracked := func(t *testing.T) storage.Pool {
		p := newPool(t)
		if p.Mode() != mode {
			t.Fatalf("newPool made a %s pool, want %s", p.Mode(), mode)
		}
		mu.Lock()
		defer mu.Unlock()
		if v, ok := registry.Load(p); ok {
			made = append(made, v.(*loopInfo))
		}
		return p
	}
	t.Run("PostgresLifecycle", func(t *testing.T) { testPostgresLifecycle(t, tracked(t)) })
	t.Run("SnapshotOfClone", func(t *testing.T) { testSnapshotOfClone(t, tracked(t)) })
	t.Run("CloneSnapshotter", func(t *testing.T) { testCloneSnapshotter(t, tracked(t)) })
	t.Run("Retention", func(t *testing.T) { testRetention(t, tracked(t)) })
	t.Run("ParallelClones", func(t *testing.T) { testParallelClones(t, tracked(t)) })
	t.Run("BadInput", func(t *testing.T) { testBadInput(t, tracked(t)) })
	t.Run("FullPool", func(t *testing.T) { testFullPool(t, tracked(t)) })
	t.Run("MissingPath", func(t *testing.T) { testMissingPath(t, mode) })
	t.Run("NoLeftovers", func(t *testing.T) {
		// One pool of its own (removed when the inner subtest ends), so
		// the check never depends on which subtests ran before.
		t.Run("pool", func(t *testing.T) {
			p := tracked(t)
			writeMarker(t, p, "leftover check")
		})
		if len(made) == 0 {
			if mode == storage.ModeLVM {
				return // LVM pools live in the VM's VG; TestInVMConformance removes the VG and checks it is gone
			}
			t.Fatalf("no %s pool was made by storagetest.NewLoopPool: nothing to check for leftovers", mode)
		}
		checkNoLeftovers(t, made)
	})
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func postgresUser(t *testing.T) pgcluster.OSUser {
	u, err := pgcluster.LookupUser("postgres")
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// startPostgres starts a socket-only server on dataDir and kills it at
// cleanup (registered after the pool's, so it runs first).
func startPostgres(t *testing.T, ctx context.Context, dataDir string) (*pgcluster.Cluster, *pgx.Conn) {
	t.Helper()
	c := &pgcluster.Cluster{DieWithParent: true, DataDir: dataDir, User: postgresUser(t)}
	port := 20000 + mrand.IntN(12000)
	if err := c.Start(ctx, port, "", pgcluster.FastSettings); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Kill)
	conn, err := pgx.Connect(ctx, c.SocketConnString(port, "postgres", "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) }) // the server is killed next; its end of the socket may be gone
	return c, conn
}

func count(t *testing.T, ctx context.Context, conn *pgx.Conn) int {
	t.Helper()
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM items").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func testPostgresLifecycle(t *testing.T, p storage.Pool) {
	ctx := testCtx(t)
	u := postgresUser(t)
	if err := os.Chown(p.MainDir(), int(u.UID), int(u.GID)); err != nil {
		t.Fatal(err)
	}
	mainData := filepath.Join(p.MainDir(), storage.DataSubdir)
	origin := &pgcluster.Cluster{DieWithParent: true, DataDir: mainData, User: u}
	if err := origin.Init(ctx, pgcluster.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	origin, conn := startPostgres(t, ctx, mainData)
	if _, err := conn.Exec(ctx, "CREATE TABLE items (id int PRIMARY KEY, note text); INSERT INTO items SELECT g, repeat('x', 200) FROM generate_series(1, 3000) g"); err != nil {
		t.Fatal(err)
	}
	if err := conn.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// Stopped cleanly, as retrieval leaves the main dataset before a
	// snapshot (a reflink copy of a running server is not atomic).
	if err := origin.Stop(ctx, "fast"); err != nil {
		t.Fatal(err)
	}

	at := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	labels := map[string]string{"env": "test", "source": "conformance"}
	snap, err := p.Snapshot(ctx, storage.SnapshotOptions{DataStateAt: at.Add(300 * time.Millisecond), Message: "first\nsnapshot\twith tabs", Labels: labels})
	if err != nil {
		t.Fatal(err)
	}
	if want := storage.SnapshotID(p.Name(), at); snap.ID != want {
		t.Fatalf("snapshot ID %q, want %q", snap.ID, want)
	}
	if !snap.DataStateAt.Equal(at) || snap.Pool != p.Name() || snap.Message != "first\nsnapshot\twith tabs" || !reflect.DeepEqual(snap.Labels, labels) {
		t.Fatalf("snapshot metadata: %+v", snap)
	}
	if snap.CreatedAt.IsZero() || time.Since(snap.CreatedAt) > time.Hour {
		t.Fatalf("snapshot createdAt %v", snap.CreatedAt)
	}
	if _, err := p.Snapshot(ctx, storage.SnapshotOptions{DataStateAt: at}); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("second snapshot at the same time: %v, want ErrExists", err)
	}

	c1, err := p.Clone(ctx, snap.ID, "c1")
	if err != nil {
		t.Fatal(err)
	}
	c2, err := p.Clone(ctx, snap.ID, "c2")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Clone(ctx, snap.ID, "c1"); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("clone with a taken name: %v, want ErrExists", err)
	}
	for _, c := range []storage.Clone{c1, c2} {
		if c.SnapshotID != snap.ID || !filepath.IsAbs(c.Mountpoint) || c.CreatedAt.IsZero() {
			t.Fatalf("clone %+v", c)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(c.Mountpoint, &st); err != nil {
			t.Fatal(err)
		}
		if st.Uid != u.UID {
			t.Fatalf("clone root %s owned by uid %d, want postgres (%d)", c.Mountpoint, st.Uid, u.UID)
		}
	}

	// Writes in one clone reach neither the origin nor the other clone.
	_, conn1 := startPostgres(t, ctx, filepath.Join(c1.Mountpoint, storage.DataSubdir))
	if _, err := conn1.Exec(ctx, "INSERT INTO items SELECT g, 'clone' FROM generate_series(3001, 3500) g; UPDATE items SET note = 'changed' WHERE id <= 1000"); err != nil {
		t.Fatal(err)
	}
	if n := count(t, ctx, conn1); n != 3500 {
		t.Fatalf("clone c1 has %d rows after insert, want 3500", n)
	}
	_, conn2 := startPostgres(t, ctx, filepath.Join(c2.Mountpoint, storage.DataSubdir))
	if n := count(t, ctx, conn2); n != 3000 {
		t.Fatalf("clone c2 has %d rows, want 3000", n)
	}
	_, connMain := startPostgres(t, ctx, mainData)
	if n := count(t, ctx, connMain); n != 3000 {
		t.Fatalf("origin has %d rows, want 3000", n)
	}
	if _, err := conn1.Exec(ctx, "CHECKPOINT"); err != nil {
		t.Fatal(err)
	}

	// Sizes: the snapshot references the data; clones share it.
	snap, err = p.GetSnapshot(ctx, snap.ID)
	if err != nil {
		t.Fatal(err)
	}
	if snap.LogicalSize < 8<<20 {
		t.Errorf("snapshot logical size %d bytes, want at least the 8 MiB of an initdb'ed data directory", snap.LogicalSize)
	}
	if snap.PhysicalSize > snap.LogicalSize {
		t.Errorf("snapshot physical size %d > logical size %d", snap.PhysicalSize, snap.LogicalSize)
	}
	clones, err := p.Clones(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range clones {
		if c.UsedBytes >= snap.LogicalSize {
			t.Errorf("clone %s uses %d bytes of its own, not less than the %d bytes it shares: not copy-on-write", c.Name, c.UsedBytes, snap.LogicalSize)
		}
	}
	use, err := p.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if use.Size == 0 || use.Free == 0 || use.Free > use.Size || use.Used > use.Size || use.DataSize < 8<<20 || use.CompressRatio < 1 {
		t.Errorf("usage %+v", use)
	}
	t.Logf("sizes: snapshot logical %d physical %d; usage %+v; clones %+v", snap.LogicalSize, snap.PhysicalSize, use, clones)

	// Metadata survives a fresh process.
	if q, ok := Reopen(t, p); ok {
		snaps, err := q.Snapshots(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(snaps) != 1 {
			t.Fatalf("reopened pool has %d snapshots, want 1", len(snaps))
		}
		r := snaps[0]
		slices.Sort(r.Clones)
		if r.ID != snap.ID || !r.CreatedAt.Equal(snap.CreatedAt) || !r.DataStateAt.Equal(at) || r.Message != snap.Message || !reflect.DeepEqual(r.Labels, labels) || !reflect.DeepEqual(r.Clones, []string{"c1", "c2"}) {
			t.Fatalf("reopened snapshot %+v, want %+v", r, snap)
		}
		rc, err := q.Clones(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(rc) != 2 || rc[0].Name != "c1" || rc[1].Name != "c2" || rc[0].SnapshotID != snap.ID || rc[0].Mountpoint != c1.Mountpoint || !rc[0].CreatedAt.Equal(c1.CreatedAt) {
			t.Fatalf("reopened clones %+v", rc)
		}
	}

	// Dependents: refused, then cascaded with force.
	if err := p.DestroySnapshot(ctx, snap.ID, false); !errors.Is(err, storage.ErrHasDependents) {
		t.Fatalf("destroy snapshot with clones: %v, want ErrHasDependents", err)
	}
	if _, err := p.GetSnapshot(ctx, snap.ID); err != nil {
		t.Fatalf("snapshot gone after a refused destroy: %v", err)
	}
	for _, c := range []*pgx.Conn{connMain, conn1, conn2} {
		if err := c.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, dir := range []string{mainData, filepath.Join(c1.Mountpoint, storage.DataSubdir), filepath.Join(c2.Mountpoint, storage.DataSubdir)} {
		c := &pgcluster.Cluster{DieWithParent: true, DataDir: dir, User: u}
		if err := c.Stop(ctx, "fast"); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.DestroyClone(ctx, "c2"); err != nil {
		t.Fatal(err)
	}
	if err := p.DestroyClone(ctx, "c2"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("destroy a destroyed clone: %v, want ErrNotFound", err)
	}
	if _, err := os.Stat(c2.Mountpoint); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("clone mountpoint %s left behind: %v", c2.Mountpoint, err)
	}
	if err := p.DestroySnapshot(ctx, snap.ID, true); err != nil {
		t.Fatal(err)
	}
	if _, err := p.GetSnapshot(ctx, snap.ID); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("snapshot after forced destroy: %v, want ErrNotFound", err)
	}
	if list, err := p.Clones(ctx); err != nil || len(list) != 0 {
		t.Fatalf("clones after forced destroy: %v %v", list, err)
	}
	if _, err := os.Stat(c1.Mountpoint); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("clone mountpoint %s left behind by force: %v", c1.Mountpoint, err)
	}
}

// writeMarker puts a small file into the main dataset so snapshots have
// content without a PostgreSQL cluster.
func writeMarker(t *testing.T, p storage.Pool, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(p.MainDir(), "marker"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func testRetention(t *testing.T, p storage.Pool) {
	ctx := testCtx(t)
	base := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	var ids []string
	for i := range 4 {
		writeMarker(t, p, fmt.Sprint(i))
		s, err := p.Snapshot(ctx, storage.SnapshotOptions{DataStateAt: base.Add(time.Duration(i) * time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, s.ID)
	}
	snaps, err := p.Snapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range snaps {
		if s.ID != ids[len(ids)-1-i] {
			t.Fatalf("snapshots not newest first: %d is %s", i, s.ID)
		}
	}
	if _, err := p.Clone(ctx, ids[0], "keepme"); err != nil {
		t.Fatal(err)
	}
	// keep=3: the clone's snapshot and the one keepAlso names (as the
	// agent does for protected snapshots) count towards it and are skipped.
	keepAlso := func(s storage.Snapshot) bool { return s.ID == ids[1] }
	deleted, err := storage.Retain(ctx, p, 3, keepAlso)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{ids[2]}; !reflect.DeepEqual(deleted, want) {
		t.Fatalf("retention deleted %v, want %v (never the oldest, which has a clone, nor the one kept by keepAlso)", deleted, want)
	}
	// keep=2 without keepAlso: the clone's snapshot still stays.
	deleted, err = storage.Retain(ctx, p, 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(deleted)
	if want := []string{ids[1]}; !reflect.DeepEqual(deleted, want) {
		t.Fatalf("retention deleted %v, want %v", deleted, want)
	}
	snaps, _ = p.Snapshots(ctx)
	if len(snaps) != 2 || snaps[0].ID != ids[3] || snaps[1].ID != ids[0] {
		t.Fatalf("after retention: %+v", snaps)
	}
	raw, err := os.ReadFile(filepath.Join(mustClone(t, p, "keepme").Mountpoint, "marker"))
	if err != nil || string(raw) != "0" {
		t.Fatalf("clone content %q, %v; want the first snapshot's", raw, err)
	}
	if err := p.DestroySnapshot(ctx, ids[0], true); err != nil {
		t.Fatal(err)
	}
}

func mustClone(t *testing.T, p storage.Pool, name string) storage.Clone {
	t.Helper()
	list, err := p.Clones(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range list {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("clone %s not listed", name)
	return storage.Clone{}
}

func testParallelClones(t *testing.T, p storage.Pool) {
	ctx := testCtx(t)
	writeMarker(t, p, "parallel")
	snap, err := p.Snapshot(ctx, storage.SnapshotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, err := p.Clone(ctx, snap.ID, fmt.Sprintf("par%02d", i))
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	list, err := p.Clones(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != n {
		t.Fatalf("%d clones listed, want %d", len(list), n)
	}
	s, _ := p.GetSnapshot(ctx, snap.ID)
	if len(s.Clones) != n {
		t.Fatalf("snapshot lists %d clones, want %d", len(s.Clones), n)
	}
	errs = make(chan error, n)
	for _, c := range list {
		wg.Go(func() {
			errs <- p.DestroyClone(ctx, c.Name)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if list, err := p.Clones(ctx); err != nil || len(list) != 0 {
		t.Fatalf("after destroying all: %v %v", list, err)
	}
	if err := p.DestroySnapshot(ctx, snap.ID, false); err != nil {
		t.Fatal(err)
	}
}

func testBadInput(t *testing.T, p storage.Pool) {
	ctx := testCtx(t)
	writeMarker(t, p, "bad input")
	snap, err := p.Snapshot(ctx, storage.SnapshotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	unknown := storage.SnapshotID(p.Name(), time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC))
	otherPool := storage.SnapshotID("otherpool", snap.DataStateAt)
	for _, id := range []string{unknown, otherPool} {
		if _, err := p.GetSnapshot(ctx, id); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("GetSnapshot(%s): %v, want ErrNotFound", id, err)
		}
		if _, err := p.Clone(ctx, id, "x1"); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("Clone(%s): %v, want ErrNotFound", id, err)
		}
		if err := p.DestroySnapshot(ctx, id, true); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("DestroySnapshot(%s): %v, want ErrNotFound", id, err)
		}
	}
	for _, id := range []string{"", "garbage", p.Name() + "@../../etc", p.Name() + "@snapshot_1; rm -rf /"} {
		if _, err := p.Clone(ctx, id, "x2"); !errors.Is(err, storage.ErrInvalidName) {
			t.Errorf("Clone(%q): %v, want ErrInvalidName", id, err)
		}
		if err := p.DestroySnapshot(ctx, id, true); !errors.Is(err, storage.ErrInvalidName) {
			t.Errorf("DestroySnapshot(%q): %v, want ErrInvalidName", id, err)
		}
	}
	for _, name := range []string{"", "a/b", "..", "../escape", "a..b", "with space", "semi;colon", ".hidden", "-dash", strings.Repeat("x", 64)} {
		if _, err := p.Clone(ctx, snap.ID, name); !errors.Is(err, storage.ErrInvalidName) {
			t.Errorf("Clone(name %q): %v, want ErrInvalidName", name, err)
		}
		if err := p.DestroyClone(ctx, name); !errors.Is(err, storage.ErrInvalidName) {
			t.Errorf("DestroyClone(%q): %v, want ErrInvalidName", name, err)
		}
	}
	if err := p.DestroyClone(ctx, "nosuchclone"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("DestroyClone(nosuchclone): %v, want ErrNotFound", err)
	}
	if _, err := p.Snapshot(ctx, storage.SnapshotOptions{DataStateAt: time.Now().Add(time.Hour), Labels: map[string]string{"": "x"}}); !errors.Is(err, storage.ErrInvalidName) {
		t.Errorf("snapshot with an empty label key: %v, want ErrInvalidName", err)
	}
	if list, err := p.Clones(ctx); err != nil || len(list) != 0 {
		t.Fatalf("bad input created clones: %v %v", list, err)
	}
	if snaps, err := p.Snapshots(ctx); err != nil || len(snaps) != 1 {
		t.Fatalf("bad input changed snapshots: %v %v", snaps, err)
	}
	if err := p.DestroySnapshot(ctx, snap.ID, false); err != nil {
		t.Fatal(err)
	}
}

// fullPoolSnapshotsSucceed names the backends whose snapshots and clones
// succeed in a full pool by design: ZFS keeps a slice of the pool (the
// "slop space") that user writes cannot fill and snapshot and clone may
// use; an LVM snapshot or clone is a thin LV whose metadata are LV tags, so
// it takes nothing from the main LV's full filesystem (the thin pool
// itself is never filled in tests: a full thin pool stalls all writes).
func fullPoolSnapshotsSucceed(mode string) bool {
	return mode == storage.ModeZFS || mode == storage.ModeLVM
}

// testFullPool fills the pool's filesystem (data and metadata: FillUp),
// then snapshots and clones: both must fail with ErrNoSpace, which proves
// the backend's mapping of its tools' "no space" errors, and leave no half
// snapshot or clone behind.
func testFullPool(t *testing.T, p storage.Pool) {
	ctx := testCtx(t)
	writeMarker(t, p, "before full")
	snap, err := p.Snapshot(ctx, storage.SnapshotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c0, err := p.Clone(ctx, snap.ID, "before")
	if err != nil {
		t.Fatal(err)
	}
	clonesDir := filepath.Dir(c0.Mountpoint)
	FillUp(t, filepath.Join(p.MainDir(), "filler"))

	entriesBefore := dirNames(clonesDir)
	s2, err := p.Snapshot(ctx, storage.SnapshotOptions{DataStateAt: snap.DataStateAt.Add(time.Second)})
	switch {
	case err == nil && fullPoolSnapshotsSucceed(p.Mode()):
		t.Logf("%s: snapshot of a full pool succeeded (its reserve is meant for this)", p.Mode())
		if err := p.DestroySnapshot(ctx, s2.ID, false); err != nil {
			t.Fatal(err)
		}
	case err == nil:
		t.Fatalf("%s: snapshot of a full pool succeeded, want ErrNoSpace (the pool was filled until nothing more fit)", p.Mode())
	case !errors.Is(err, storage.ErrNoSpace):
		t.Fatalf("snapshot of a full pool: %v, want ErrNoSpace", err)
	default:
		t.Logf("%s: snapshot of a full pool: %v", p.Mode(), err)
	}
	c1, err := p.Clone(ctx, snap.ID, "during")
	switch {
	case err == nil && fullPoolSnapshotsSucceed(p.Mode()):
		t.Logf("%s: clone in a full pool succeeded (its reserve is meant for this)", p.Mode())
		if err := p.DestroyClone(ctx, c1.Name); err != nil {
			t.Fatal(err)
		}
	case err == nil:
		t.Fatalf("%s: clone in a full pool succeeded, want ErrNoSpace", p.Mode())
	case !errors.Is(err, storage.ErrNoSpace):
		t.Fatalf("clone in a full pool: %v, want ErrNoSpace", err)
	default:
		t.Logf("%s: clone in a full pool: %v", p.Mode(), err)
		if !strings.Contains(err.Error(), "during") {
			t.Errorf("error does not name the clone: %v", err)
		}
	}
	if after := dirNames(clonesDir); !reflect.DeepEqual(after, entriesBefore) {
		t.Fatalf("clones directory changed from %v to %v: something half-made was left", entriesBefore, after)
	}
	if snaps, _ := p.Snapshots(ctx); len(snaps) != 1 {
		t.Fatalf("%d snapshots after the full-pool attempts, want 1", len(snaps))
	}
	if list, _ := p.Clones(ctx); len(list) != 1 || list[0].Name != "before" {
		t.Fatalf("clones after the full-pool attempts: %+v", list)
	}

	// Freed space makes it work again (btrfs and ZFS free asynchronously).
	if err := os.RemoveAll(filepath.Join(p.MainDir(), "filler")); err != nil {
		t.Fatal(err)
	}
	syscall.Sync()
	deadline := time.Now().Add(time.Minute)
	for {
		_, err := p.Clone(ctx, snap.ID, "after")
		if err == nil {
			break
		}
		if !errors.Is(err, storage.ErrNoSpace) || time.Now().After(deadline) {
			t.Fatalf("clone after freeing space: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err := p.DestroySnapshot(ctx, snap.ID, true); err != nil {
		t.Fatal(err)
	}
}

// FillUp fills the filesystem holding dir until nothing more fits: data
// (incompressible files) and metadata (empty files, for the inodes and
// directory entries a snapshot or clone needs), repeated after each sync,
// since a filesystem may find room again once delayed allocations and
// reserves are settled. Everything goes into dir, which it creates; remove
// dir to free the space. It fails t when the filesystem still takes writes
// after many rounds.
func FillUp(t testing.TB, dir string) {
	t.Helper()
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	full := func(err error) bool { return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) }
	buf := make([]byte, 4<<20)
	rand.Read(buf)
	var written int64
	files := 0
	// writeData writes a new file until the filesystem refuses; it reports
	// whether anything at all was written.
	writeData := func(round int) bool {
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("data%d", round)), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			if full(err) {
				return false
			}
			t.Fatalf("fill %s: %v", dir, err)
		}
		before := written
		for size := len(buf); size >= 4096; {
			// A fresh prefix per chunk keeps deduplicating or
			// compressing filesystems from shrinking it.
			copy(buf, fmt.Sprintf("%020d", written))
			n, err := f.Write(buf[:size])
			written += int64(n)
			if err != nil {
				if !full(err) {
					t.Fatalf("fill %s: %v", dir, err)
				}
				size /= 2 // the last free blocks
			}
		}
		_ = f.Sync()  // may fail with ENOSPC: the data is full either way
		_ = f.Close() // likewise
		return written > before
	}
	// makeFiles creates empty files until the filesystem refuses.
	makeFiles := func() bool {
		made := 0
		for {
			f, err := os.Create(filepath.Join(dir, fmt.Sprintf("f%07d", files)))
			if err != nil {
				if !full(err) {
					t.Fatalf("fill %s with files: %v", dir, err)
				}
				return made > 0
			}
			if err := f.Close(); err != nil && !full(err) {
				t.Fatalf("close %s: %v", f.Name(), err)
			}
			files++
			made++
		}
	}
	for round := 0; ; round++ {
		if round == 20 {
			t.Fatalf("the filesystem of %s still takes writes after %d rounds (%d MiB, %d files)", dir, round, written>>20, files)
		}
		grew := writeData(round)
		grew = makeFiles() || grew
		syscall.Sync()
		if !grew && round > 0 {
			break
		}
	}
	t.Logf("filled the pool with %d MiB and %d files", written>>20, files)
}

func dirNames(dir string) []string {
	entries, _ := os.ReadDir(dir)
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

func testMissingPath(t *testing.T, mode string) {
	b := make([]byte, 4)
	rand.Read(b)
	path := "/nonexistent-thinlab-" + hex.EncodeToString(b)
	named := path // what the error must name
	switch mode {
	case storage.ModeZFS:
		path = "tlmissing" + hex.EncodeToString(b)
		named = path
	case storage.ModeLVM:
		named = "tlmissing" + hex.EncodeToString(b)
		path = named + "/thin"
	}
	_, err := backend.Open(context.Background(), backend.Config{Name: "missing", Mode: mode, Path: path})
	if err == nil {
		t.Fatalf("opening a %s pool at %s succeeded", mode, path)
	}
	if !strings.Contains(err.Error(), named) || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("error for a missing path does not say so: %v", err)
	}
	if _, err := os.Stat(path); err == nil && mode != storage.ModeZFS && mode != storage.ModeLVM {
		_ = os.RemoveAll(path) // best effort: the Fatal below reports the real failure
		t.Fatalf("Open created %s", path)
	}
	t.Logf("missing path: %v", err)
}

// testSnapshotOfClone is a branch commit at the storage level: a snapshot
// of a clone whose postgres is running (stopped first where the backend's
// snapshots are not atomic), cloned again; the snapshot outlives the
// clone it was taken of.
func testSnapshotOfClone(t *testing.T, p storage.Pool) {
	ctx := testCtx(t)
	u := postgresUser(t)
	if err := os.Chown(p.MainDir(), int(u.UID), int(u.GID)); err != nil {
		t.Fatal(err)
	}
	mainData := filepath.Join(p.MainDir(), storage.DataSubdir)
	origin := &pgcluster.Cluster{DieWithParent: true, DataDir: mainData, User: u}
	if err := origin.Init(ctx, pgcluster.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	origin, conn := startPostgres(t, ctx, mainData)
	if _, err := conn.Exec(ctx, "CREATE TABLE items (id int PRIMARY KEY, note text); INSERT INTO items SELECT g, 'base' FROM generate_series(1, 1000) g"); err != nil {
		t.Fatal(err)
	}
	_ = conn.Close(ctx)
	if err := origin.Stop(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
	base, err := p.Snapshot(ctx, storage.SnapshotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	work, err := p.Clone(ctx, base.ID, "work")
	if err != nil {
		t.Fatal(err)
	}
	workPG, workConn := startPostgres(t, ctx, filepath.Join(work.Mountpoint, storage.DataSubdir))
	// Two transactions, then a CHECKPOINT of its own (a CHECKPOINT in
	// the same implicit transaction would run before the commit; the test
	// servers commit asynchronously): the checkpoint flushes the WAL up to
	// it, commit records included, as the agent's commit does.
	for _, q := range []string{"INSERT INTO items SELECT g, 'work' FROM generate_series(1001, 1500) g", "INSERT INTO items VALUES (1501, 'second')", "CHECKPOINT"} {
		if _, err := workConn.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if !storage.SnapshotsAreAtomic(p) {
		_ = workConn.Close(ctx)
		if err := workPG.Stop(ctx, "fast"); err != nil {
			t.Fatal(err)
		}
	}

	for _, bad := range []string{"../work", "work/..", "", "no-such-clone"} {
		if bad == "" {
			continue // an empty source is the main dataset
		}
		_, err := p.Snapshot(ctx, storage.SnapshotOptions{Source: bad, DataStateAt: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)})
		if !errors.Is(err, storage.ErrInvalidName) && !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("snapshot of clone %q: %v, want ErrInvalidName or ErrNotFound", bad, err)
		}
	}
	at := base.DataStateAt.Add(time.Hour)
	commit, err := p.Snapshot(ctx, storage.SnapshotOptions{Source: "work", DataStateAt: at, Message: "commit of work"})
	if err != nil {
		t.Fatal(err)
	}
	if commit.ID != storage.SnapshotID(p.Name(), at) || commit.Message != "commit of work" || !commit.OfClone() || commit.Labels[storage.LabelSource] != "work" {
		t.Fatalf("commit snapshot %+v", commit)
	}
	if _, err := p.Snapshot(ctx, storage.SnapshotOptions{DataStateAt: at}); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("a main snapshot with the ID of a clone's snapshot: %v, want ErrExists", err)
	}
	if storage.SnapshotsAreAtomic(p) {
		// The clone keeps running and diverges after the commit.
		if _, err := workConn.Exec(ctx, "DELETE FROM items"); err != nil {
			t.Fatal(err)
		}
		_ = workConn.Close(ctx)
		if err := workPG.Stop(ctx, "fast"); err != nil {
			t.Fatal(err)
		}
	}

	next, err := p.Clone(ctx, commit.ID, "next")
	if err != nil {
		t.Fatal(err)
	}
	nextPG, nextConn := startPostgres(t, ctx, filepath.Join(next.Mountpoint, storage.DataSubdir))
	if n := count(t, ctx, nextConn); n != 1501 {
		t.Fatalf("clone of the commit has %d rows, want the 1501 of the clone at commit time", n)
	}
	_ = nextConn.Close(ctx)
	if err := nextPG.Stop(ctx, "fast"); err != nil {
		t.Fatal(err)
	}

	// The commit outlives the clone it was taken of.
	if err := p.DestroyClone(ctx, "work"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(work.Mountpoint); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("clone mountpoint %s left behind: %v", work.Mountpoint, err)
	}
	got, err := p.GetSnapshot(ctx, commit.ID)
	if err != nil {
		t.Fatalf("commit after its clone was destroyed: %v", err)
	}
	if !reflect.DeepEqual(got.Clones, []string{"next"}) {
		t.Fatalf("commit's clones %v, want [next]", got.Clones)
	}
	if list, err := p.Clones(ctx); err != nil || len(list) != 1 || list[0].Name != "next" {
		t.Fatalf("clones after destroying work: %+v %v, want only next", list, err)
	}
	again, err := p.Clone(ctx, commit.ID, "again")
	if err != nil {
		t.Fatalf("clone of the commit after its clone was destroyed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(again.Mountpoint, storage.DataSubdir, "PG_VERSION")); err != nil {
		t.Fatalf("clone of the commit has no data: %v", err)
	}
	if q, ok := Reopen(t, p); ok {
		if _, err := q.GetSnapshot(ctx, commit.ID); err != nil {
			t.Fatalf("reopened pool lost the commit: %v", err)
		}
	}

	if err := p.DestroySnapshot(ctx, commit.ID, false); !errors.Is(err, storage.ErrHasDependents) {
		t.Fatalf("destroy commit with clones: %v, want ErrHasDependents", err)
	}
	for _, name := range []string{"next", "again"} {
		if err := p.DestroyClone(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.DestroySnapshot(ctx, commit.ID, false); err != nil {
		t.Fatal(err)
	}
	if err := p.DestroySnapshot(ctx, base.ID, false); err != nil {
		t.Fatalf("destroy the base snapshot once the commit and its clones are gone: %v", err)
	}
	if snaps, err := p.Snapshots(ctx); err != nil || len(snaps) != 0 {
		t.Fatalf("snapshots left: %+v %v", snaps, err)
	}
}

// testCloneSnapshotter is physical retrieval's snapshot cycle at the
// storage level, twice: a snapshot of main under the same ID each round, a
// clone of it that is written to (the promoted data), a snapshot of that
// clone (storage.CloneSnapshotter), then the clone and the first snapshot
// destroyed while the clone's snapshot lives on. Its clones see the
// clone's writes and not what main or the clone wrote later; the usual
// delete rules hold. Files only, no postgres, few storage calls (each
// takes seconds in the LVM VM): the capability is the storage's
// (PostgresLifecycle and SnapshotOfClone run servers).
func testCloneSnapshotter(t *testing.T, p storage.Pool) {
	ctx := testCtx(t)
	cs, ok := p.(storage.CloneSnapshotter)
	if !ok {
		t.Fatalf("the %s pool does not implement storage.CloneSnapshotter, which physical retrieval needs", p.Mode())
	}
	read := func(dir, name string) string {
		t.Helper()
		raw, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(raw)
	}
	write := func(dir, name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tempAt := time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)
	base := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	var made []string
	for round := range 2 {
		writeMarker(t, p, fmt.Sprint("main ", round))
		tmp, err := p.Snapshot(ctx, storage.SnapshotOptions{DataStateAt: tempAt, Labels: map[string]string{storage.LabelTransient: "true"}})
		if err != nil {
			t.Fatalf("round %d: snapshot of main under the ID the previous round destroyed: %v", round, err)
		}
		c, err := p.Clone(ctx, tmp.ID, "cycle")
		if err != nil {
			t.Fatal(err)
		}
		if round == 0 {
			for _, bad := range []string{"", "../cycle", "cycle/.."} {
				if _, err := cs.SnapshotClone(ctx, bad, storage.SnapshotOptions{DataStateAt: base}); !errors.Is(err, storage.ErrInvalidName) {
					t.Fatalf("SnapshotClone(%q): %v, want ErrInvalidName", bad, err)
				}
			}
			if _, err := cs.SnapshotClone(ctx, "no-such-clone", storage.SnapshotOptions{DataStateAt: base}); !errors.Is(err, storage.ErrNotFound) {
				t.Fatalf("SnapshotClone of a missing clone: %v, want ErrNotFound", err)
			}
		}
		write(c.Mountpoint, "promoted", fmt.Sprint("promoted ", round))
		at := base.Add(time.Duration(round) * time.Hour)
		s, err := cs.SnapshotClone(ctx, "cycle", storage.SnapshotOptions{DataStateAt: at, Message: "promoted", Labels: map[string]string{"kind": "promoted"}})
		if err != nil {
			t.Fatalf("round %d: SnapshotClone: %v", round, err)
		}
		if s.ID != storage.SnapshotID(p.Name(), at) || s.OfClone() || s.Message != "promoted" || s.Labels["kind"] != "promoted" || !s.DataStateAt.Equal(at) {
			t.Fatalf("snapshot of the clone %+v: want ID %s, the message and labels given, and no %s label (it joins the pool's line of data)", s, storage.SnapshotID(p.Name(), at), storage.LabelSource)
		}
		if round == 0 {
			if _, err := cs.SnapshotClone(ctx, "cycle", storage.SnapshotOptions{DataStateAt: at}); !errors.Is(err, storage.ErrExists) {
				t.Fatalf("a second SnapshotClone with the same ID: %v, want ErrExists", err)
			}
		}
		// Written after the snapshot: no clone of it may see this.
		write(c.Mountpoint, "promoted", "after the snapshot")
		if err := p.DestroyClone(ctx, "cycle"); err != nil {
			t.Fatal(err)
		}
		if err := p.DestroySnapshot(ctx, tmp.ID, false); err != nil {
			t.Fatalf("round %d: destroy the snapshot the clone was made from, once the clone is gone: %v", round, err)
		}
		made = append(made, s.ID)
	}
	writeMarker(t, p, "main later")
	ids := func(q storage.Pool) []string {
		t.Helper()
		snaps, err := q.Snapshots(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, s := range snaps {
			out = append(out, s.ID)
		}
		return out
	}
	if got, want := ids(p), []string{made[1], made[0]}; !reflect.DeepEqual(got, want) {
		t.Fatalf("snapshots %v, want the clones' snapshots %v only (newest first)", got, want)
	}
	if q, ok := Reopen(t, p); ok {
		if got, want := ids(q), []string{made[1], made[0]}; !reflect.DeepEqual(got, want) {
			t.Fatalf("reopened pool lists %v, want %v", got, want)
		}
	}
	for i, id := range made {
		c, err := p.Clone(ctx, id, fmt.Sprint("from", i))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := read(c.Mountpoint, "marker")+" / "+read(c.Mountpoint, "promoted"), fmt.Sprintf("main %d / promoted %d", i, i); got != want {
			t.Fatalf("clone of %s holds %q, want %q (main as it was, plus the clone's write before its snapshot)", id, got, want)
		}
	}

	if err := p.DestroySnapshot(ctx, made[0], false); !errors.Is(err, storage.ErrHasDependents) {
		t.Fatalf("destroy a clone's snapshot that has clones: %v, want ErrHasDependents", err)
	}
	if deleted, err := storage.Retain(ctx, p, 1, nil); err != nil || len(deleted) != 0 {
		t.Fatalf("retention deleted %v (%v), want nothing (the older snapshot has clones)", deleted, err)
	}
	if err := p.DestroyClone(ctx, "from0"); err != nil {
		t.Fatal(err)
	}
	if deleted, err := storage.Retain(ctx, p, 1, nil); err != nil || !reflect.DeepEqual(deleted, made[:1]) {
		t.Fatalf("retention deleted %v (%v), want %v", deleted, err, made[:1])
	}
	if err := p.DestroyClone(ctx, "from1"); err != nil {
		t.Fatal(err)
	}
	if err := p.DestroySnapshot(ctx, made[1], false); err != nil {
		t.Fatal(err)
	}
	if got := ids(p); len(got) != 0 {
		t.Fatalf("snapshots left: %v", got)
	}
}
