package backend

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/testenv"
)

func TestOpenErrorsNameTheField(t *testing.T) {
	ctx := t.Context()
	for _, tc := range []struct {
		cfg  Config
		want []string
	}{
		{Config{Name: "p", Mode: "ext4", Path: "/x"}, []string{`unknown mode "ext4"`, "zfs, btrfs, reflink, lvm"}},
		{Config{Name: "p", Path: "/x"}, []string{"mode is empty"}},
		{Config{Name: "p", Mode: "btrfs"}, []string{"path is empty", "btrfs filesystem"}},
		{Config{Name: "p", Mode: "zfs"}, []string{"path is empty", "ZFS dataset"}},
		{Config{Name: "p", Mode: "btrfs", Path: "relative/dir"}, []string{"path", "absolute"}},
		{Config{Name: "p", Mode: "reflink", Path: "/nonexistent-thinlab-x"}, []string{"/nonexistent-thinlab-x does not exist"}},
		{Config{Name: "p", Mode: "btrfs", Path: "/nonexistent-thinlab-x"}, []string{"/nonexistent-thinlab-x does not exist"}},
		{Config{Name: "p", Mode: "lvm", Path: "vgonly"}, []string{`path "vgonly"`, "VG/THINPOOL"}},
		{Config{Name: "p", Mode: "lvm", Path: "vg/thin", ClonesDir: "/x"}, []string{"clonesDir is not used by mode lvm"}},
		{Config{Name: "bad/name", Mode: "btrfs", Path: "/tmp"}, []string{"pool name"}},
		{Config{Name: "p", Mode: "btrfs", Path: "/mnt/pool", ClonesDir: "/var/clones"}, []string{"clonesDir /var/clones must lie inside path /mnt/pool"}},
		{Config{Name: "p", Mode: "reflink", Path: "/tmp", ClonesDir: "/"}, []string{"clonesDir / must be a directory of its own"}},
		{Config{Name: "p", Mode: "reflink", Path: "/tmp", ClonesDir: "/tmp/main/c"}, []string{"clonesDir /tmp/main/c must be a directory of its own"}},
	} {
		_, err := Open(ctx, tc.cfg)
		if err == nil {
			t.Errorf("Open(%+v) succeeded", tc.cfg)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("Open(%+v) = %v; want it to mention %q", tc.cfg, err, w)
			}
		}
	}
}

// A btrfs pool opened on a directory of another filesystem (the test's
// temp dir) is refused without creating anything.
func TestOpenRefusesWrongFilesystem(t *testing.T) {
	dir := t.TempDir()
	_, err := Open(t.Context(), Config{Name: "p", Mode: storage.ModeBtrfs, Path: dir})
	if err == nil || !strings.Contains(err.Error(), "not btrfs") {
		t.Fatalf("btrfs on %s: %v, want 'not btrfs'", dir, err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("Open left %v in %s", entries, dir)
	}
}

// CreateLoopPool for btrfs and reflink: a usable pool, and a teardown that
// removes everything and can run twice. (zfs is covered by the storage
// benchmark and the zfs package's tests: one zfs-fuse daemon per host
// must not be started by two test binaries at once.)
func TestCreateLoopPool(t *testing.T) {
	testenv.NeedsRoot(t, "root, for loop devices and mounts")
	for _, mode := range []string{storage.ModeBtrfs, storage.ModeReflink} {
		t.Run(mode, func(t *testing.T) {
			ctx := t.Context()
			dir := filepath.Join(t.TempDir(), "pool")
			p, teardown, err := CreateLoopPool(ctx, mode, LoopOptions{Dir: dir, Size: 512 << 20})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := teardown(); err != nil {
					t.Errorf("teardown of the %s pool: %v", mode, err)
				}
			})
			if p.Mode() != mode {
				t.Fatalf("mode %s", p.Mode())
			}
			if err := os.WriteFile(filepath.Join(p.MainDir(), "f"), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
			s, err := p.Snapshot(ctx, storage.SnapshotOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := p.Clone(ctx, s.ID, "c"); err != nil {
				t.Fatal(err)
			}
			if _, _, err := CreateLoopPool(ctx, mode, LoopOptions{Dir: dir}); err == nil || !strings.Contains(err.Error(), "not empty") {
				t.Fatalf("second pool in the same dir: %v", err)
			}
			if err := teardown(); err != nil {
				t.Fatal(err)
			}
			if err := teardown(); err != nil {
				t.Fatalf("second teardown: %v", err)
			}
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Fatalf("dir %s survives teardown: %v", dir, err)
			}
			mounts, _ := os.ReadFile("/proc/mounts")
			if strings.Contains(string(mounts), dir) {
				t.Fatalf("still mounted under %s", dir)
			}
		})
	}
	if _, _, err := CreateLoopPool(t.Context(), "lvm", LoopOptions{Dir: filepath.Join(t.TempDir(), "x")}); err == nil || !strings.Contains(err.Error(), "device-mapper") {
		t.Fatalf("lvm loop pool: %v", err)
	}
}
