// Package zfstest gives tests and benchmarks a real ZFS pool on a sparse
// file: it makes sure a ZFS implementation answers the zfs/zpool CLI
// (starting the zfs-fuse daemon when none runs) and removes every pool,
// image and daemon it created at cleanup, even when the test fails.
//
// Only one zfs-fuse daemon can run per host. EnsureDaemon holds it through
// zfs.AcquireDaemon, which starts it only when `zpool list` does not
// answer, stops it only if it started it, and leaves a daemon it found (a
// demo's, or the kernel's OpenZFS, which needs no daemon) alone. Within
// one test binary the daemon is reference-counted across tests. Two test
// binaries must not use it at once: on zfs-fuse, AcquireDaemon holds a
// cross-process lock (zfs.DaemonLockFile) from the first reference to the
// last, so a second binary waits. A package other than the zfs ones holds
// the daemon per test (NewFilePool, EnsureDaemon), never for its whole run
// (Main), so that it blocks the others only while its zfs test runs.
package zfstest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/zfs"
	"github.com/thinlab/thinlab/internal/command"
	"github.com/thinlab/thinlab/internal/pgcluster"
	"github.com/thinlab/thinlab/internal/testenv"
)

// EnsureDaemon makes the zfs/zpool CLI usable until t ends.
func EnsureDaemon(t testing.TB) {
	t.Helper()
	testenv.NeedsSystem(t, "root and the zfs-fuse daemon")
	if err := zfs.AcquireDaemon(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(zfs.ReleaseDaemon)
}

// Main runs a test binary's tests with the daemon held throughout, so it
// is started and stopped (about 4 s) once, not once per test:
//
//	func TestMain(m *testing.M) { os.Exit(zfstest.Main(m)) }
func Main(m *testing.M) int {
	flag.Parse() // testing.Short needs the flags parsed
	if testing.Short() {
		return m.Run() // the tests skip in zfstest's helpers
	}
	if err := zfs.AcquireDaemon(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer zfs.ReleaseDaemon()
	return m.Run()
}

// FilePool is a zpool on a sparse image file made for one test.
type FilePool struct {
	Name     string // zpool name, also the pool's Thinlab name
	Image    string
	MountDir string // the zpool's mountpoint
	Dir      string // temp directory holding image, mountpoint and clones
}

// NewFilePool creates a zpool of size bytes with a unique name and
// destroys it (and its files) at cleanup. It calls EnsureDaemon.
func NewFilePool(t testing.TB, size int64) FilePool {
	t.Helper()
	EnsureDaemon(t)
	b := make([]byte, 4)
	rand.Read(b)
	name := "tlz" + hex.EncodeToString(b)
	dir, err := os.MkdirTemp("", "thinlab-zfs-")
	if err != nil {
		t.Fatal(err)
	}
	// MkdirTemp makes it 0700; the postgres user must reach PGDATA below.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	fp := FilePool{Name: name, Image: filepath.Join(dir, "pool.img"), MountDir: filepath.Join(dir, "mnt"), Dir: dir}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := zfs.CreateFilePool(ctx, command.Runner{}, name, fp.Image, size, fp.MountDir); err != nil {
		_ = os.RemoveAll(dir) // best effort: the Fatal below is what matters
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := zfs.DestroyPool(ctx, command.Runner{}, name); err != nil {
			t.Errorf("cleanup: %v", err)
			return // keep the image: removing it under a live pool wedges zfs-fuse
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return fp
}

// Open opens a zfs.Pool on fp with clones under fp.Dir/clones, owned by
// the postgres OS user.
func (fp FilePool) Open(t testing.TB) *zfs.Pool {
	t.Helper()
	u, err := pgcluster.LookupUser("postgres")
	if err != nil {
		t.Fatal(err)
	}
	p, err := zfs.Open(context.Background(), zfs.Config{
		Name:      fp.Name,
		Dataset:   fp.Name,
		ClonesDir: filepath.Join(fp.Dir, "clones"),
		Owner:     &storage.Owner{UID: int(u.UID), GID: int(u.GID)},
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// NewPool is NewFilePool(t, size).Open(t).
func NewPool(t testing.TB, size int64) *zfs.Pool {
	t.Helper()
	return NewFilePool(t, size).Open(t)
}
