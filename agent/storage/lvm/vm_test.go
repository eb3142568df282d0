//go:build lvmvm

package lvm

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/command"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

// vmFixture is a VG with a thin pool on the VM's scratch disk, removed
// (with everything in it) when the test ends.
type vmFixture struct {
	vg, thinPool string
	mountRoot    string
	run          *command.Runner
}

func newVMFixture(t testing.TB, poolSize string) *vmFixture {
	t.Helper()
	disk := os.Getenv("VMTEST_DISK")
	if disk == "" {
		t.Fatal("VMTEST_DISK is not set")
	}
	f := &vmFixture{vg: fmt.Sprintf("tlvg%d", rand.IntN(1e6)), thinPool: "tpool", run: &command.Runner{}}
	f.lvm(t, "pvcreate", "-y", disk)
	f.lvm(t, "vgcreate", f.vg, disk)
	t.Cleanup(func() {
		// Unmount whatever is still mounted below mountRoot, then drop
		// the VG and the PV label.
		for _, m := range mountsBelow(f.mountRoot) {
			// Background: t.Context() is already cancelled when cleanups run.
			if _, err := f.run.Run(context.Background(), "umount", m); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		f.lvmQuiet("vgremove", "-y", "-ff", f.vg)
		f.lvmQuiet("pvremove", "-y", disk)
		if err := os.RemoveAll(f.mountRoot); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	f.lvm(t, "lvcreate", "-y", "-L", poolSize, "-T", f.vg+"/"+f.thinPool)
	dir, err := os.MkdirTemp("", "thinlab-lvm-")
	if err != nil {
		t.Fatal(err)
	}
	// Reachable by the postgres user (MkdirTemp makes it 0700).
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f.mountRoot = dir
	return f
}

func (f *vmFixture) lvm(t testing.TB, args ...string) string {
	t.Helper()
	out, err := f.run.RunCmd(t.Context(), command.Cmd{Name: "lvm", Args: args, Env: []string{"DM_DISABLE_UDEV=1"}})
	if err != nil {
		t.Fatalf("lvm %s: %v", strings.Join(args, " "), err)
	}
	return string(out)
}

func (f *vmFixture) lvmQuiet(args ...string) {
	// Quiet on purpose: cleanup of what may already be gone; the next
	// fixture starts from a fresh VG name either way. Background: it runs
	// in cleanups, after t.Context() is cancelled, and has no testing.TB.
	_, _ = f.run.RunCmd(context.Background(), command.Cmd{Name: "lvm", Args: args, Env: []string{"DM_DISABLE_UDEV=1"}})
}

func (f *vmFixture) config(name string, owner *storage.Owner) Config {
	return Config{Name: name, VG: f.vg, ThinPool: f.thinPool, MountRoot: filepath.Join(f.mountRoot, name), Owner: owner, NoUdev: true}
}

// lvNames lists the VG's LVs (hidden ones included).
func (f *vmFixture) lvNames(t testing.TB) []string {
	t.Helper()
	out := f.lvm(t, "lvs", "-a", "--noheadings", "-o", "lv_name", f.vg)
	return strings.Fields(out)
}

// TestInVMPostgresOnThinPool runs a real PostgreSQL 15 on the main LV,
// snapshots it while it runs, starts real servers on two clones and checks
// that writes stay in the clone that made them; then metadata after a
// reopen, the refusals, forced cascade and a clean teardown.
func TestInVMPostgresOnThinPool(t *testing.T) {
	f := newVMFixture(t, "1536M")
	ctx := t.Context()
	pgUser, err := pgcluster.LookupUser("postgres")
	if err != nil {
		t.Fatal(err)
	}
	owner := &storage.Owner{UID: int(pgUser.UID), GID: int(pgUser.GID)}
	cfg := f.config("pg1", owner)
	p, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if p.Mode() != storage.ModeLVM || p.Name() != "pg1" || !isMountpoint(p.MainDir()) {
		t.Fatalf("pool: mode %s name %s main %s mounted=%v", p.Mode(), p.Name(), p.MainDir(), isMountpoint(p.MainDir()))
	}
	dumpReport(t, f, "lvs-empty-pool.json")

	// The origin: a real server on main, left running for the snapshot.
	port := 20000 + rand.IntN(10000)
	origin := &pgcluster.Cluster{DataDir: filepath.Join(p.MainDir(), storage.DataSubdir), User: pgUser}
	if err := origin.Init(ctx, pgcluster.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	startPG(t, origin, port)
	psql(t, origin, port, "CREATE TABLE t (v text); INSERT INTO t VALUES ('origin')")

	at := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	snap, err := p.Snapshot(ctx, storage.SnapshotOptions{DataStateAt: at, Message: "first, with \"quotes\"\nand a newline", Labels: map[string]string{"env": "test", "ünï": "çødé"}})
	if err != nil {
		t.Fatal(err)
	}
	if snap.ID != "pg1@snapshot_20261125100000" || snap.LogicalSize == 0 {
		t.Fatalf("snapshot = %+v", snap)
	}
	psql(t, origin, port, "INSERT INTO t VALUES ('origin-after-snapshot')")

	c1, err := p.Clone(ctx, snap.ID, "c1")
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(c1.Mountpoint); err != nil || !isMountpoint(c1.Mountpoint) || statUID(fi) != owner.UID {
		t.Fatalf("clone mountpoint %s: %v mounted=%v", c1.Mountpoint, err, isMountpoint(c1.Mountpoint))
	}
	pg1 := &pgcluster.Cluster{DataDir: filepath.Join(c1.Mountpoint, storage.DataSubdir), User: pgUser}
	startPG(t, pg1, port+1)
	if got := psql(t, pg1, port+1, "SELECT string_agg(v, ',' ORDER BY v) FROM t"); got != "origin" {
		t.Fatalf("clone c1 sees %q, want the snapshot's rows only", got)
	}
	psql(t, pg1, port+1, "INSERT INTO t VALUES ('c1'); CREATE TABLE big AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 20000) g; CHECKPOINT")

	c2, err := p.Clone(ctx, snap.ID, "c2:blue")
	if err != nil {
		t.Fatal(err)
	}
	pg2 := &pgcluster.Cluster{DataDir: filepath.Join(c2.Mountpoint, storage.DataSubdir), User: pgUser}
	startPG(t, pg2, port+2)
	if got := psql(t, pg2, port+2, "SELECT string_agg(v, ',' ORDER BY v) FROM t"); got != "origin" {
		t.Fatalf("clone c2 sees %q, want the snapshot's rows only", got)
	}
	if got := psql(t, origin, port, "SELECT string_agg(v, ',' ORDER BY v) FROM t"); got != "origin,origin-after-snapshot" {
		t.Fatalf("origin sees %q", got)
	}
	if got := psql(t, pg1, port+1, "SELECT string_agg(v, ',' ORDER BY v) FROM t"); got != "c1,origin" {
		t.Fatalf("c1 sees %q", got)
	}
	for _, c := range []*pgcluster.Cluster{pg1, pg2, origin} {
		if err := c.Stop(ctx, "fast"); err != nil {
			t.Fatal(err)
		}
	}
	// With fsync=off the servers' writes may still sit in the page cache;
	// thin LVs only account blocks that reached them.
	if _, err := f.run.Run(ctx, "sync"); err != nil {
		t.Fatal(err)
	}
	dumpReport(t, f, "lvs-snapshot-two-clones.json")

	// Sizes: c1 wrote ~10 MB, c2 nothing to speak of.
	clones, err := p.Clones(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(clones) != 2 || clones[0].Name != "c1" || clones[1].Name != "c2:blue" || clones[0].UsedBytes < 5<<20 {
		t.Fatalf("clones = %+v", clones)
	}
	u, err := p.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if u.Size < 1<<30 || u.Used == 0 || u.Free != u.Size-u.Used || u.DataSize == 0 || u.UsedByClones < clones[0].UsedBytes || u.CompressRatio != 1 {
		t.Fatalf("usage = %+v", u)
	}

	// A restart: unmount and deactivate a clone, then a fresh Open
	// rebuilds everything from LVM and mounts it again.
	if _, err := f.run.Run(ctx, "umount", c2.Mountpoint); err != nil {
		t.Fatal(err)
	}
	f.lvm(t, "lvchange", "-an", f.vg+"/"+cloneLV("pg1", "c2:blue"))
	p2, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	got, err := p2.GetSnapshot(ctx, snap.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Message != snap.Message || got.Labels["ünï"] != "çødé" || !got.DataStateAt.Equal(at) || strings.Join(got.Clones, ",") != "c1,c2:blue" || !got.CreatedAt.Equal(snap.CreatedAt) {
		t.Fatalf("after reopen: %+v, want %+v with clones c1,c2:blue", got, snap)
	}
	if !isMountpoint(c2.Mountpoint) {
		t.Fatal("reopen did not mount clone c2 again")
	}
	if _, err := os.Stat(filepath.Join(c2.Mountpoint, storage.DataSubdir, "PG_VERSION")); err != nil {
		t.Fatal(err)
	}

	// Refusals.
	if _, err := p2.Snapshot(ctx, storage.SnapshotOptions{DataStateAt: at}); !errors.Is(err, storage.ErrExists) {
		t.Errorf("duplicate snapshot: %v", err)
	}
	if err := p2.DestroySnapshot(ctx, snap.ID, false); !errors.Is(err, storage.ErrHasDependents) {
		t.Errorf("destroy with clones: %v", err)
	}
	if _, err := p2.Clone(ctx, snap.ID, "c1"); !errors.Is(err, storage.ErrExists) {
		t.Errorf("duplicate clone: %v", err)
	}
	for _, bad := range []string{"../x", "a/b", "", "x_tmeta", "has space"} {
		if _, err := p2.Clone(ctx, snap.ID, bad); !errors.Is(err, storage.ErrInvalidName) {
			t.Errorf("clone name %q: %v", bad, err)
		}
	}
	if _, err := p2.Clone(ctx, "pg1@snapshot_20990101000000", "c3"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("clone of a missing snapshot: %v", err)
	}
	if _, err := p2.Clone(ctx, "other@snapshot_20261125100000", "c3"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("clone of another pool's snapshot: %v", err)
	}
	if err := p2.DestroyClone(ctx, "nosuch"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("destroy missing clone: %v", err)
	}
	if _, err := p2.GetSnapshot(ctx, "garbage"); !errors.Is(err, storage.ErrInvalidName) {
		t.Errorf("bad snapshot id: %v", err)
	}

	// A clone whose mount fails leaves nothing behind: a file sits where
	// its mountpoint directory would go.
	blocker := p2.cloneDir("blocked")
	if err := os.WriteFile(blocker, []byte("not a directory"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := p2.Clone(ctx, snap.ID, "blocked"); err == nil {
		t.Fatal("clone over a file succeeded")
	}
	if names := f.lvNames(t); strings.Contains(strings.Join(names, " "), "blocked") {
		t.Fatalf("failed clone left an LV: %v", names)
	}
	if b, err := os.ReadFile(blocker); err != nil || string(b) != "not a directory" {
		t.Fatalf("the file in the way was touched: %q %v", b, err)
	}
	if err := os.Remove(blocker); err != nil {
		t.Fatal(err)
	}

	// Forced destroy cascades to both clones.
	if err := p2.DestroySnapshot(ctx, snap.ID, true); err != nil {
		t.Fatal(err)
	}
	for _, c := range []storage.Clone{c1, c2} {
		if _, err := os.Stat(c.Mountpoint); !os.IsNotExist(err) {
			t.Errorf("clone mountpoint %s still there: %v", c.Mountpoint, err)
		}
	}
	if s, _ := p2.Snapshots(ctx); len(s) != 0 {
		t.Fatalf("snapshots after forced destroy: %+v", s)
	}
	if c, _ := p2.Clones(ctx); len(c) != 0 {
		t.Fatalf("clones after forced destroy: %+v", c)
	}

	// The ordinary path: snapshot, clone, destroy clone, destroy snapshot.
	s2, err := p2.Snapshot(ctx, storage.SnapshotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c3, err := p2.Clone(ctx, s2.ID, "c3")
	if err != nil {
		t.Fatal(err)
	}
	if err := p2.DestroyClone(ctx, c3.Name); err != nil {
		t.Fatal(err)
	}
	if err := p2.DestroySnapshot(ctx, s2.ID, false); err != nil {
		t.Fatal(err)
	}

	// Nothing of Thinlab's is left besides main; then tear down main, the
	// pool and the VG and show LVM and the mount table are empty.
	if names := f.lvNames(t); strings.Join(names, " ") != "[lvol0_pmspare] pg1_main tpool [tpool_tdata] [tpool_tmeta]" {
		t.Fatalf("LVs left: %v", names)
	}
	if _, err := f.run.Run(ctx, "umount", p2.MainDir()); err != nil {
		t.Fatal(err)
	}
	f.lvm(t, "vgremove", "-y", "-ff", f.vg)
	if out := f.lvm(t, "lvs", "--noheadings"); strings.TrimSpace(out) != "" {
		t.Fatalf("lvs after teardown: %q", out)
	}
	if m := mountsBelow(f.mountRoot); len(m) > 0 {
		t.Fatalf("still mounted: %v", m)
	}
	if out, _ := f.run.Run(ctx, "dmsetup", "ls"); !strings.Contains(string(out), "No devices found") {
		t.Fatalf("device-mapper devices left: %s", out)
	}
}

// TestInVMExt4 checks the ext4 variant and that two Thinlab pools share
// one thin pool without seeing each other's LVs; files only (no
// postgres), to keep the VM run short.
func TestInVMExt4(t *testing.T) {
	f := newVMFixture(t, "512M")
	ctx := t.Context()
	pa, err := Open(ctx, Config{Name: "pa", VG: f.vg, ThinPool: f.thinPool, MountRoot: filepath.Join(f.mountRoot, "pa"), FSType: FSExt4, MainSize: "256M", NoUdev: true})
	if err != nil {
		t.Fatal(err)
	}
	pb, err := Open(ctx, f.config("pb", nil))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pa.MainDir(), "f"), []byte("v1"), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := pa.Snapshot(ctx, storage.SnapshotOptions{Message: "ext4"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := pa.Clone(ctx, s.ID, "x")
	if err != nil {
		t.Fatal(err)
	}
	// A clone's filesystem carries no setuid binaries or device nodes.
	if opts := mountOptions(t, c.Mountpoint); !slices.Contains(opts, "nosuid") || !slices.Contains(opts, "nodev") {
		t.Errorf("clone mounted with %v, want nosuid and nodev", opts)
	}
	if err := os.WriteFile(filepath.Join(c.Mountpoint, "f"), []byte("clone"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(pa.MainDir(), "f")); string(b) != "v1" {
		t.Fatalf("main sees %q after a write in the clone", b)
	}
	if snaps, _ := pb.Snapshots(ctx); len(snaps) != 0 {
		t.Fatalf("pool pb sees pa's snapshots: %+v", snaps)
	}
	if _, err := pb.Clone(ctx, s.ID, "y"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("pool pb cloned pa's snapshot: %v", err)
	}
	if err := pa.DestroySnapshot(ctx, s.ID, true); err != nil {
		t.Fatal(err)
	}

	// A missing VG or thin pool is named in the error, and nothing is
	// created.
	for _, c := range []Config{
		{Name: "pc", VG: "nosuchvg", ThinPool: f.thinPool, MountRoot: filepath.Join(f.mountRoot, "pc"), NoUdev: true},
		{Name: "pc", VG: f.vg, ThinPool: "nosuchpool", MountRoot: filepath.Join(f.mountRoot, "pc"), NoUdev: true},
	} {
		_, err := Open(ctx, c)
		if !errors.Is(err, storage.ErrNotFound) || !strings.Contains(err.Error(), "does not exist") || !strings.Contains(err.Error(), "nosuch") {
			t.Errorf("open %s/%s: %v", c.VG, c.ThinPool, err)
		}
	}
	if names := strings.Join(f.lvNames(t), " "); strings.Contains(names, "pc_") {
		t.Errorf("a failed Open created LVs: %s", names)
	}
}

// mountOptions are the per-mount options of the topmost mount at dir.
func mountOptions(t *testing.T, dir string) []string {
	t.Helper()
	raw, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var opts []string
	for l := range strings.SplitSeq(string(raw), "\n") {
		if f := strings.Fields(l); len(f) > 5 && unescapeMount(f[4]) == dir {
			opts = strings.Split(f[5], ",")
		}
	}
	if opts == nil {
		t.Fatalf("%s is not a mountpoint", dir)
	}
	return opts
}

func startPG(t testing.TB, c *pgcluster.Cluster, port int) {
	t.Helper()
	// A clone of a running server carries its postmaster.pid, naming a
	// process that is alive on this machine.
	if err := os.Remove(filepath.Join(c.DataDir, "postmaster.pid")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	settings := map[string]string{"shared_buffers": "16MB", "max_connections": "10", "dynamic_shared_memory_type": "posix"}
	maps.Copy(settings, pgcluster.FastSettings)
	if err := c.Start(ctx, port, "", settings); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Kill)
}

// psql runs SQL through the server's socket and returns the trimmed,
// unaligned output.
func psql(t testing.TB, c *pgcluster.Cluster, port int, sql string) string {
	t.Helper()
	binDir, err := pgcluster.NewestBinDir("")
	if err != nil {
		t.Fatal(err)
	}
	out, err := (command.Runner{}).RunCmd(t.Context(), command.Cmd{
		Name:       filepath.Join(binDir, "psql"),
		Args:       []string{"-X", "-v", "ON_ERROR_STOP=1", "-At", "-h", c.DataDir, "-p", fmt.Sprint(port), "-U", "postgres", "-d", "postgres", "-c", sql},
		Credential: c.User.Credential(),
		Dir:        "/",
	})
	if err != nil {
		t.Fatalf("psql %q: %v", sql, err)
	}
	return strings.TrimSpace(string(out))
}

// dumpReport saves the VG's lvs report (with the backend's own columns)
// into the shared result directory; the files in testdata/ were captured
// this way.
func dumpReport(t *testing.T, f *vmFixture, name string) {
	t.Helper()
	dir := os.Getenv("VMTEST_DIR")
	if dir == "" {
		return
	}
	out := f.lvm(t, "lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", strings.Join(lvsFields, ","), f.vg)
	if err := os.WriteFile(filepath.Join(dir, name), []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
}

func mountsBelow(root string) []string {
	if root == "" {
		return nil
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for line := range strings.SplitSeq(string(b), "\n") {
		fields := strings.Fields(line)
		if len(fields) > 4 {
			if m := unescapeMount(fields[4]); m == root || strings.HasPrefix(m, root+"/") {
				out = append(out, m)
			}
		}
	}
	// Deepest first, so nested mounts come off before their parents.
	slices.Reverse(out)
	return out
}

func statUID(fi os.FileInfo) int {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid)
	}
	return -1
}
