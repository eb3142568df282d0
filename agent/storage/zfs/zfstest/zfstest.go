// Package zfstest gives tests and benchmarks a real ZFS pool on a sparse
// file: it makes sure a ZFS implementation answers the zfs/zpool CLI
// (starting the zfs-fuse daemon when none runs) and removes every pool,
// image and daemon it created at cleanup, even when the test fails.
//
// Only one zfs-fuse daemon can run per host. EnsureDaemon starts it only
// when `zpool list` does not answer, stops it (by the PID in its own
// pidfile) only if it started it, and leaves a daemon it found (a demo's,
// or the kernel's OpenZFS, which needs no daemon) alone. Within one test
// binary the daemon is reference-counted across tests. Two test binaries
// must not both start it, which is why only the zfs packages use ZFS in
// `make test` and benchmarks run with -p 1.
package zfstest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/storage/zfs"
	"github.com/thinlab/thinlab/internal/command"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

var daemon struct {
	mu      sync.Mutex
	refs    int
	pid     int    // the daemon this process started; 0 if none
	tempDir string // holds its pidfile
}

// EnsureDaemon makes the zfs/zpool CLI usable until t ends.
func EnsureDaemon(t testing.TB) {
	t.Helper()
	if err := acquireDaemon(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(releaseDaemon)
}

// Main runs a test binary's tests with the daemon held throughout, so it
// is started and stopped (about 4 s) once, not once per test:
//
//	func TestMain(m *testing.M) { os.Exit(zfstest.Main(m)) }
func Main(m *testing.M) int {
	if err := acquireDaemon(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer releaseDaemon()
	return m.Run()
}

func acquireDaemon() error {
	daemon.mu.Lock()
	defer daemon.mu.Unlock()
	if daemon.refs == 0 && !answers() {
		pid, dir, err := startDaemon()
		if err != nil {
			return err
		}
		daemon.pid, daemon.tempDir = pid, dir
	}
	daemon.refs++
	return nil
}

func releaseDaemon() {
	daemon.mu.Lock()
	defer daemon.mu.Unlock()
	daemon.refs--
	if daemon.refs > 0 || daemon.pid == 0 {
		return
	}
	stopDaemon(daemon.pid)
	os.RemoveAll(daemon.tempDir)
	daemon.pid, daemon.tempDir = 0, ""
}

// answers reports whether a ZFS implementation serves the CLI.
func answers() bool {
	return exec.Command("zpool", "list", "-H").Run() == nil
}

func startDaemon() (int, string, error) {
	if _, err := exec.LookPath("zfs-fuse"); err != nil {
		return 0, "", fmt.Errorf("no ZFS here: `zpool list` fails and zfs-fuse is not installed (apt-get install zfs-fuse, see deploy/dev/deps.sh)")
	}
	dir, err := os.MkdirTemp("", "thinlab-zfsd-")
	if err != nil {
		return 0, "", err
	}
	pidfile := filepath.Join(dir, "zfs-fuse.pid")
	// It daemonizes: the command returns once the daemon is forked.
	if out, err := exec.Command("zfs-fuse", "--no-kstat-mount", "-p", pidfile).CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return 0, "", fmt.Errorf("start zfs-fuse: %v: %s", err, out)
	}
	deadline := time.Now().Add(30 * time.Second)
	pid := 0
	for time.Now().Before(deadline) {
		if pid == 0 {
			if raw, err := os.ReadFile(pidfile); err == nil {
				pid, _ = strconv.Atoi(strings.TrimSpace(string(raw)))
			}
		}
		if pid > 0 && answers() {
			return pid, dir, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	if pid > 0 {
		stopDaemon(pid)
	}
	os.RemoveAll(dir)
	return 0, "", fmt.Errorf("zfs-fuse started but `zpool list` did not answer within 30s")
}

// stopDaemon asks zfs-fuse to exit (it unmounts and syncs on SIGTERM) and
// waits, killing it if it hangs.
func stopDaemon(pid int) {
	syscall.Kill(pid, syscall.SIGTERM)
	for i := 0; i < 600 && alive(pid); i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if alive(pid) {
		syscall.Kill(pid, syscall.SIGKILL)
		for i := 0; i < 100 && alive(pid); i++ {
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// alive is kill(0) that treats a zombie (exited, not yet reaped by its
// parent) as gone.
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(raw)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(fields) == 0 || fields[0] != "Z"
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
	os.Chmod(dir, 0o755)
	fp := FilePool{Name: name, Image: filepath.Join(dir, "pool.img"), MountDir: filepath.Join(dir, "mnt"), Dir: dir}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := zfs.CreateFilePool(ctx, command.Runner{}, name, fp.Image, size, fp.MountDir); err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := zfs.DestroyPool(ctx, command.Runner{}, name); err != nil {
			t.Errorf("cleanup: %v", err)
			return // keep the image: removing it under a live pool wedges zfs-fuse
		}
		os.RemoveAll(dir)
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
		Owner:     &zfs.Owner{UID: int(u.UID), GID: int(u.GID)},
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
