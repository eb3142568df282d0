package zfs_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/zfs"
	"github.com/thinlab/thinlab/agent/storage/zfs/zfstest"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

const testPoolSize = 512 << 20

func zfsCmd(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("zfs", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("zfs %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

// TestMetadataRoundTrip: messages with characters that zfs prints raw
// (newline, tab, quotes, non-ASCII) and labels survive a fresh Open, which
// reads everything back from the pool's user properties.
func TestMetadataRoundTrip(t *testing.T) {
	ctx := t.Context()
	fp := zfstest.NewFilePool(t, testPoolSize)
	p := fp.Open(t)
	writeFile(t, filepath.Join(p.MainDir(), storage.DataSubdir, "f"), "v1")

	at := time.Date(2026, 3, 4, 5, 6, 7, 890, time.FixedZone("x", 3600))
	msg := "line one\nline\ttwo \"quoted\" ünïcode -"
	labels := map[string]string{"env": "prod", "note": "a\tb\nc"}
	s, err := p.Snapshot(ctx, storage.SnapshotOptions{DataStateAt: at, Message: msg, Labels: labels})
	if err != nil {
		t.Fatal(err)
	}
	wantID := fp.Name + "@snapshot_20260304040607"
	if s.ID != wantID {
		t.Fatalf("ID = %s, want %s", s.ID, wantID)
	}
	if _, err := p.Snapshot(ctx, storage.SnapshotOptions{DataStateAt: at}); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("second snapshot at the same time: err = %v, want ErrExists", err)
	}

	reopened := fp.Open(t)
	got, err := reopened.GetSnapshot(ctx, wantID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Message != msg || !reflect.DeepEqual(got.Labels, labels) || !got.DataStateAt.Equal(at.Truncate(time.Second)) || got.Pool != fp.Name {
		t.Fatalf("after reopen: %+v", got)
	}
	if got.CreatedAt.IsZero() || time.Since(got.CreatedAt) > time.Hour {
		t.Fatalf("CreatedAt = %v", got.CreatedAt)
	}
	if got.LogicalSize == 0 {
		t.Fatalf("LogicalSize = 0, want the referenced bytes")
	}
	// The value on disk is readable by a human with zfs get.
	if v := zfsCmd(t, "get", "-H", "-o", "value", "thinlab:datastateat", fp.Name+"/main@snapshot_20260304040607"); v != "2026-03-04T04:06:07Z" {
		t.Fatalf("thinlab:datastateat = %q", v)
	}
}

// TestHandMadeAndInherited: snapshots made with plain zfs are listed with
// times taken from their names, snapshots with other names are ignored,
// and a thinlab: property set on main (inherited by every snapshot) is not
// mistaken for a snapshot's own metadata.
func TestHandMadeAndInherited(t *testing.T) {
	ctx := t.Context()
	fp := zfstest.NewFilePool(t, testPoolSize)
	p := fp.Open(t)
	zfsCmd(t, "set", `thinlab:message="inherited"`, fp.Name+"/main")
	zfsCmd(t, "snapshot", fp.Name+"/main@snapshot_20200102030405")
	zfsCmd(t, "snapshot", fp.Name+"/main@manual")

	snaps, err := p.Snapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(snaps) != 1 {
		t.Fatalf("snapshots = %+v, want only the snapshot_ one", snaps)
	}
	s := snaps[0]
	if s.ID != fp.Name+"@snapshot_20200102030405" || !s.DataStateAt.Equal(time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)) || s.Message != "" {
		t.Fatalf("hand-made snapshot read as %+v", s)
	}
	if _, err := p.GetSnapshot(ctx, fp.Name+"@manual"); !errors.Is(err, storage.ErrInvalidName) {
		t.Fatalf("GetSnapshot(manual): %v, want ErrInvalidName", err)
	}
	if _, err := p.GetSnapshot(ctx, "otherpool@snapshot_20200102030405"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("GetSnapshot(other pool): %v, want ErrNotFound", err)
	}
}

// TestCloneLifecycle: clones are isolated, live outside the pool's
// mountpoint, are owned by the owner, are found again after an unmount and
// a fresh Open, hold their snapshot, and leave nothing behind.
func TestCloneLifecycle(t *testing.T) {
	ctx := t.Context()
	fp := zfstest.NewFilePool(t, testPoolSize)
	p := fp.Open(t)
	data := filepath.Join(p.MainDir(), storage.DataSubdir)
	writeFile(t, filepath.Join(data, "f"), "v1")
	s1, err := p.Snapshot(ctx, storage.SnapshotOptions{DataStateAt: time.Now().Add(-time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(data, "f"), "v2")

	a, err := p.Clone(ctx, s1.ID, "a")
	if err != nil {
		t.Fatal(err)
	}
	if a.Mountpoint != filepath.Join(fp.Dir, "clones", "a") || strings.HasPrefix(a.Mountpoint, fp.MountDir+"/") {
		t.Fatalf("mountpoint %s: want <ClonesDir>/a outside %s", a.Mountpoint, fp.MountDir)
	}
	if uid := statUID(t, a.Mountpoint); uid != postgresUID(t) {
		t.Fatalf("clone root owned by uid %d, want postgres", uid)
	}
	if got := readFile(t, filepath.Join(a.Mountpoint, storage.DataSubdir, "f")); got != "v1" {
		t.Fatalf("clone sees %q, want the snapshot's v1", got)
	}
	b, err := p.Clone(ctx, s1.ID, "b")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(a.Mountpoint, storage.DataSubdir, "f"), "clone a")
	big := strings.Repeat("x", 4<<20)
	writeFile(t, filepath.Join(a.Mountpoint, storage.DataSubdir, "big"), big)
	if got := readFile(t, filepath.Join(b.Mountpoint, storage.DataSubdir, "f")); got != "v1" {
		t.Fatalf("clone b sees %q", got)
	}
	if got := readFile(t, filepath.Join(data, "f")); got != "v2" {
		t.Fatalf("main sees %q", got)
	}
	if _, err := p.Clone(ctx, s1.ID, "a"); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("duplicate clone: %v, want ErrExists", err)
	}

	// After the daemon or host restarts clones may be unmounted; Open
	// mounts them again.
	zfsCmd(t, "unmount", fp.Name+"/clones/b")
	p = fp.Open(t)
	if got := readFile(t, filepath.Join(b.Mountpoint, storage.DataSubdir, "f")); got != "v1" {
		t.Fatalf("remounted clone b sees %q", got)
	}

	clones, err := p.Clones(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(clones) != 2 || clones[0].Name != "a" || clones[1].Name != "b" || clones[0].SnapshotID != s1.ID {
		t.Fatalf("clones = %+v", clones)
	}
	if clones[0].UsedBytes < 4<<20 {
		t.Fatalf("clone a UsedBytes = %d, want at least the 4 MiB written", clones[0].UsedBytes)
	}
	got, err := p.GetSnapshot(ctx, s1.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Clones, []string{"a", "b"}) {
		t.Fatalf("snapshot clones = %v", got.Clones)
	}
	u, err := p.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if u.UsedByClones < 4<<20 || u.Size == 0 || u.Free == 0 || u.Size != u.Used+u.Free || u.DataSize == 0 || u.CompressRatio < 1 {
		t.Fatalf("usage = %+v", u)
	}

	if err := p.DestroySnapshot(ctx, s1.ID, false); !errors.Is(err, storage.ErrHasDependents) || !strings.Contains(err.Error(), "a, b") {
		t.Fatalf("destroy with clones: %v, want ErrHasDependents naming a, b", err)
	}
	if err := p.DestroyClone(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(a.Mountpoint); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("mountpoint of a left behind: %v", err)
	}
	if err := p.DestroyClone(ctx, "a"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("destroy again: %v, want ErrNotFound", err)
	}
	if err := p.DestroySnapshot(ctx, s1.ID, true); err != nil {
		t.Fatal(err)
	}
	if out := zfsCmd(t, "list", "-H", "-r", "-t", "all", "-o", "name", fp.Name); out != fp.Name+"\n"+fp.Name+"/clones\n"+fp.Name+"/commits\n"+fp.Name+"/main" {
		t.Fatalf("left in the pool:\n%s", out)
	}
	if entries, _ := os.ReadDir(filepath.Join(fp.Dir, "clones")); len(entries) != 0 {
		t.Fatalf("left in ClonesDir: %v", entries)
	}
}

// TestParallelClonesAndDestroys: 20 clones made and destroyed at once
// through one zfs-fuse daemon (whose destroys fail "busy" at random).
func TestParallelClonesAndDestroys(t *testing.T) {
	ctx := t.Context()
	fp := zfstest.NewFilePool(t, testPoolSize)
	p := fp.Open(t)
	writeFile(t, filepath.Join(p.MainDir(), storage.DataSubdir, "f"), "v1")
	s, err := p.Snapshot(ctx, storage.SnapshotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	names := make([]string, n)
	for i := range names {
		names[i] = "par" + string(rune('a'+i))
	}
	parallel := func(f func(name string) error) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i, name := range names {
			wg.Go(func() { errs[i] = f(name) })
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
	}
	parallel(func(name string) error {
		c, err := p.Clone(ctx, s.ID, name)
		if err != nil {
			return err
		}
		raw, err := os.ReadFile(filepath.Join(c.Mountpoint, storage.DataSubdir, "f"))
		if err != nil || string(raw) != "v1" {
			return errors.New(name + ": clone content wrong: " + string(raw))
		}
		return os.WriteFile(filepath.Join(c.Mountpoint, storage.DataSubdir, "f"), []byte(name), 0o644)
	})
	clones, err := p.Clones(ctx)
	if err != nil || len(clones) != n {
		t.Fatalf("clones: %d, %v", len(clones), err)
	}
	for _, c := range clones {
		if got := readFile(t, filepath.Join(c.Mountpoint, storage.DataSubdir, "f")); got != c.Name {
			t.Fatalf("clone %s sees %q", c.Name, got)
		}
	}
	parallel(func(name string) error { return p.DestroyClone(ctx, name) })
	if clones, _ := p.Clones(ctx); len(clones) != 0 {
		t.Fatalf("clones left: %v", clones)
	}
}

// TestBadInput: every bad input names its field and creates nothing.
func TestBadInput(t *testing.T) {
	ctx := t.Context()
	fp := zfstest.NewFilePool(t, testPoolSize)
	p := fp.Open(t)
	s, err := p.Snapshot(ctx, storage.SnapshotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	before := zfsCmd(t, "list", "-H", "-r", "-t", "all", "-o", "name", fp.Name)

	cases := []struct {
		name string
		err  error
		want string
	}{
		{"clone name with slash", func() error { _, err := p.Clone(ctx, s.ID, "a/b"); return err }(), "clone name"},
		{"clone name with dotdot", func() error { _, err := p.Clone(ctx, s.ID, "a..b"); return err }(), "clone name"},
		{"empty clone name", func() error { _, err := p.Clone(ctx, s.ID, ""); return err }(), "clone name"},
		{"option-like clone name", func() error { _, err := p.Clone(ctx, s.ID, "-o"); return err }(), "clone name"},
		{"bad snapshot id", func() error { _, err := p.Clone(ctx, "x; rm -rf /", "ok"); return err }(), "snapshot id"},
		{"destroy bad clone", p.DestroyClone(ctx, "../x"), "clone name"},
		{"destroy bad snapshot", p.DestroySnapshot(ctx, fp.Name+"@../main", true), "snapshot id"},
		{"huge message", func() error {
			_, err := p.Snapshot(ctx, storage.SnapshotOptions{DataStateAt: time.Now().Add(time.Hour), Message: strings.Repeat("m", 5000)})
			return err
		}(), "snapshot message"},
		{"empty label key", func() error {
			_, err := p.Snapshot(ctx, storage.SnapshotOptions{DataStateAt: time.Now().Add(time.Hour), Labels: map[string]string{"": "v"}})
			return err
		}(), "label key"},
	}
	for _, c := range cases {
		if c.err == nil || !errors.Is(c.err, storage.ErrInvalidName) || !strings.Contains(c.err.Error(), c.want) {
			t.Errorf("%s: err = %v, want ErrInvalidName mentioning %q", c.name, c.err, c.want)
		}
	}
	if _, err := p.Clone(ctx, fp.Name+"@snapshot_19990101000000", "ok"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("clone of missing snapshot: %v, want ErrNotFound", err)
	}
	if after := zfsCmd(t, "list", "-H", "-r", "-t", "all", "-o", "name", fp.Name); after != before {
		t.Fatalf("bad input changed the pool:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if entries, _ := os.ReadDir(filepath.Join(fp.Dir, "clones")); len(entries) != 0 {
		t.Fatalf("bad input left mountpoints: %v", entries)
	}
}

// TestOpenErrors: configuration mistakes name the field and the fix.
func TestOpenErrors(t *testing.T) {
	ctx := t.Context()
	fp := zfstest.NewFilePool(t, testPoolSize)
	zfsCmd(t, "create", "-o", "mountpoint=none", fp.Name+"/unmounted")
	cases := []struct {
		name string
		cfg  zfs.Config
		want string
	}{
		{"dataset without mountpoint", zfs.Config{Name: "p", Dataset: fp.Name + "/unmounted", ClonesDir: "/tmp/x"}, "zfs set mountpoint="},
		{"bad pool name", zfs.Config{Name: "a b", Dataset: fp.Name, ClonesDir: "/tmp/x"}, "pool name"},
		{"empty dataset", zfs.Config{Name: "p", ClonesDir: "/tmp/x"}, "zfs dataset"},
		{"bad dataset", zfs.Config{Name: "p", Dataset: fp.Name + "//x", ClonesDir: "/tmp/x"}, "zfs dataset"},
		{"missing dataset", zfs.Config{Name: "p", Dataset: fp.Name + "/nope", ClonesDir: "/tmp/x"}, "does not exist"},
		{"relative clonesDir", zfs.Config{Name: "p", Dataset: fp.Name, ClonesDir: "clones"}, "clonesDir"},
		{"clonesDir inside pool", zfs.Config{Name: "p", Dataset: fp.Name, ClonesDir: filepath.Join(fp.MountDir, "clones")}, "clonesDir"},
	}
	for _, c := range cases {
		_, err := zfs.Open(ctx, c.cfg)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want it to mention %q", c.name, err, c.want)
		}
	}
	if out := zfsCmd(t, "list", "-H", "-r", "-o", "name", fp.Name); out != fp.Name+"\n"+fp.Name+"/unmounted" {
		t.Fatalf("failed opens created datasets:\n%s", out)
	}
}

// TestNoSpace: a full pool makes zfs fail "out of space", which callers
// see as storage.ErrNoSpace; destroying data makes room again.
func TestNoSpace(t *testing.T) {
	ctx := t.Context()
	fp := zfstest.NewFilePool(t, 96<<20)
	p := fp.Open(t)
	big := filepath.Join(p.MainDir(), "fill")
	fillUntilFull(t, big)
	_, err := p.Snapshot(ctx, storage.SnapshotOptions{})
	if !errors.Is(err, storage.ErrNoSpace) {
		t.Fatalf("snapshot of a full pool: %v, want ErrNoSpace", err)
	}
	if snaps, _ := p.Snapshots(ctx); len(snaps) != 0 {
		t.Fatalf("failed snapshot left %v", snaps)
	}
	if err := os.Remove(big); err != nil {
		t.Fatal(err)
	}
	// Freed space shows up after the next transaction group commits.
	var s storage.Snapshot
	for range 50 {
		if s, err = p.Snapshot(ctx, storage.SnapshotOptions{}); !errors.Is(err, storage.ErrNoSpace) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("snapshot after freeing space: %v", err)
	}
	if _, err := p.Clone(ctx, s.ID, "after"); err != nil {
		t.Fatal(err)
	}
}

func fillUntilFull(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }() // may fail with ENOSPC like Sync below; the pool is full either way
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*7 + i>>8) // not all zeros: zfs-fuse may compress or skip zeros
	}
	for i := range 4096 {
		buf[0] = byte(i)
		if _, err := f.Write(buf); err != nil {
			_ = f.Sync() // may fail with ENOSPC too; the pool is full either way
			return
		}
	}
	t.Fatal("pool never filled")
}

func statUID(t *testing.T, path string) uint32 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Uid
}

func postgresUID(t *testing.T) uint32 {
	t.Helper()
	u, err := pgcluster.LookupUser("postgres")
	if err != nil {
		t.Fatal(err)
	}
	return u.UID
}

// TestRetiredOrigins: a snapshot that snapshots of its clones depend on in
// ZFS is retired when destroyed (gone from the listing, its ID free) and
// reaped with its last dependent, also along a chain (a snapshot of a
// clone of a snapshot of a clone) and by Open after a process died
// between the two steps.
func TestRetiredOrigins(t *testing.T) {
	ctx := t.Context()
	fp := zfstest.NewFilePool(t, testPoolSize)
	p := fp.Open(t)
	writeFile(t, filepath.Join(p.MainDir(), "f"), "main")
	retired := func() []string {
		t.Helper()
		var out []string
		for name := range strings.FieldsSeq(zfsCmd(t, "list", "-H", "-o", "name", "-t", "snapshot", "-r", fp.Name)) {
			if strings.Contains(name, "@thinlab_retired_") {
				out = append(out, name)
			}
		}
		return out
	}
	at := func(h int) time.Time { return time.Date(2026, 7, 1, h, 0, 0, 0, time.UTC) }
	base, err := p.Snapshot(ctx, storage.SnapshotOptions{DataStateAt: at(0)})
	if err != nil {
		t.Fatal(err)
	}
	// base -> clone a -> snapshot A -> clone b -> snapshot B.
	if _, err := p.Clone(ctx, base.ID, "a"); err != nil {
		t.Fatal(err)
	}
	sa, err := p.SnapshotClone(ctx, "a", storage.SnapshotOptions{DataStateAt: at(1)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Clone(ctx, sa.ID, "b"); err != nil {
		t.Fatal(err)
	}
	sb, err := p.SnapshotClone(ctx, "b", storage.SnapshotOptions{DataStateAt: at(2)})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"a", "b"} {
		if err := p.DestroyClone(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{base.ID, sa.ID} {
		if err := p.DestroySnapshot(ctx, id, false); err != nil {
			t.Fatalf("destroy %s, which a snapshot of its clone depends on: %v", id, err)
		}
		if _, err := p.GetSnapshot(ctx, id); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("retired %s still found: %v", id, err)
		}
	}
	if r := retired(); len(r) != 2 {
		t.Fatalf("retired snapshots %v, want the two destroyed ones kept in ZFS for %s", r, sb.ID)
	}
	// The ID of a retired snapshot is free again.
	again, err := p.Snapshot(ctx, storage.SnapshotOptions{DataStateAt: at(0)})
	if err != nil || again.ID != base.ID {
		t.Fatalf("snapshot under a retired snapshot's ID: %+v %v", again, err)
	}
	if err := p.DestroySnapshot(ctx, again.ID, false); err != nil {
		t.Fatal(err)
	}
	c, err := p.Clone(ctx, sb.ID, "c")
	if err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(c.Mountpoint, "f")); got != "main" {
		t.Fatalf("clone at the end of the chain holds %q, want main's data", got)
	}
	if err := p.DestroyClone(ctx, "c"); err != nil {
		t.Fatal(err)
	}

	// A process dies after destroying the last dependent's snapshot and
	// dataset by hand: Open reaps the chain.
	ds := strings.TrimSpace(zfsCmd(t, "list", "-H", "-o", "name", "-t", "snapshot", "-r", fp.Name+"/commits"))
	var last string
	for name := range strings.FieldsSeq(ds) {
		if strings.HasSuffix(name, "@snapshot_20260701020000") {
			last = name
		}
	}
	if last == "" {
		t.Fatalf("no commit snapshot of %s among %q", sb.ID, ds)
	}
	zfsCmd(t, "destroy", "-r", strings.SplitN(last, "@", 2)[0])
	fp.Open(t)
	if r := retired(); len(r) != 0 {
		t.Fatalf("retired snapshots left after their last dependent went and the pool was opened: %v", r)
	}
	if left := zfsCmd(t, "list", "-H", "-o", "name", "-r", fp.Name+"/commits"); left != fp.Name+"/commits" {
		t.Fatalf("commit datasets left: %q", left)
	}
}
