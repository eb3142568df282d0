package zfs

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The zfs-fuse daemon serves the zfs/zpool CLI on hosts without the kernel
// module. Only one runs per host, so everything in a process that needs it
// shares one reference count: the first AcquireDaemon starts it when
// `zpool list` does not answer, the last ReleaseDaemon stops it (by its
// pidfile's PID) only if this process started it. A daemon found running
// (another process's, or none needed with the kernel's OpenZFS) is left
// alone.
//
// On zfs-fuse (no /dev/zfs) the references of one process also hold an
// exclusive lock on DaemonLockFile, so that two processes (two test
// binaries: the storage tests and physical retrieval's) never use, start
// or stop the one daemon at the same time: the second AcquireDaemon waits
// until the first process released its last reference.
var daemon struct {
	mu      sync.Mutex
	refs    int
	pid     int    // the daemon this process started; 0 if none
	tempDir string // holds its pidfile
	lock    *os.File
}

// DaemonLockFile is the cross-process lock AcquireDaemon takes on zfs-fuse.
const DaemonLockFile = "/run/lock/thinlab-zfs-fuse.lock"

// AcquireDaemon makes the zfs/zpool CLI usable until the matching
// ReleaseDaemon, starting zfs-fuse when no ZFS implementation answers. On
// zfs-fuse it first waits (up to ctx's end) for other processes that use
// it to finish.
func AcquireDaemon(ctx context.Context) error {
	daemon.mu.Lock()
	defer daemon.mu.Unlock()
	if daemon.refs == 0 {
		if fuseDaemon() {
			f, err := lockExclusive(ctx, DaemonLockFile)
			if err != nil {
				return err
			}
			daemon.lock = f
		}
		if !answers(ctx) {
			pid, dir, err := startDaemon(ctx)
			if err != nil {
				unlock()
				return err
			}
			daemon.pid, daemon.tempDir = pid, dir
		}
	}
	daemon.refs++
	return nil
}

// ReleaseDaemon drops a reference taken by AcquireDaemon; the last one
// stops the daemon if AcquireDaemon started it, and lets other processes
// have it.
func ReleaseDaemon() {
	daemon.mu.Lock()
	defer daemon.mu.Unlock()
	daemon.refs--
	if daemon.refs > 0 {
		return
	}
	if daemon.pid != 0 {
		stopDaemon(daemon.pid)
		_ = os.RemoveAll(daemon.tempDir) // best effort: a pidfile in a temp directory
		daemon.pid, daemon.tempDir = 0, ""
	}
	unlock()
}

// lockExclusive takes flock(LOCK_EX) on path, polling so that ctx can end
// the wait. The lock goes with the process: a killed holder frees it.
func lockExclusive(ctx context.Context, path string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil { //nolint:gosec // 0755: /run/lock, a system directory
		return nil, fmt.Errorf("zfs-fuse lock: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600) //nolint:gosec // G304: a fixed path
	if err != nil {
		return nil, fmt.Errorf("zfs-fuse lock: %w", err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if err != syscall.EWOULDBLOCK {
			_ = f.Close() // the flock error is what matters
			return nil, fmt.Errorf("zfs-fuse lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			_ = f.Close() // the wait's end is what matters
			return nil, fmt.Errorf("zfs-fuse lock %s: another process uses zfs-fuse (gave up waiting: %w)", path, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// unlock releases the cross-process lock, if held (daemon.mu held).
func unlock() {
	if daemon.lock != nil {
		_ = daemon.lock.Close() // closing the descriptor releases the flock
		daemon.lock = nil
	}
}

// answers reports whether a ZFS implementation serves the CLI.
func answers(ctx context.Context) bool {
	return exec.CommandContext(ctx, "zpool", "list", "-H").Run() == nil
}

func startDaemon(ctx context.Context) (int, string, error) {
	if _, err := exec.LookPath("zfs-fuse"); err != nil {
		return 0, "", fmt.Errorf("no ZFS here: `zpool list` fails and zfs-fuse is not installed: install ZFS (OpenZFS, or apt-get install zfs-fuse, see deploy/dev/deps.sh)")
	}
	dir, err := os.MkdirTemp("", "thinlab-zfsd-")
	if err != nil {
		return 0, "", err
	}
	pidfile := filepath.Join(dir, "zfs-fuse.pid")
	// zfs-fuse daemonizes: the command returns once the daemon is forked.
	if out, err := exec.CommandContext(ctx, "zfs-fuse", "--no-kstat-mount", "-p", pidfile).CombinedOutput(); err != nil { //nolint:gosec // G204: a fixed binary; the only variable is the pidfile in our own temp directory
		_ = os.RemoveAll(dir) // best effort: a temp directory; the start error matters
		return 0, "", fmt.Errorf("start zfs-fuse: %v: %s", err, out)
	}
	deadline := time.Now().Add(30 * time.Second)
	pid := 0
	for time.Now().Before(deadline) {
		if pid == 0 {
			if raw, err := os.ReadFile(pidfile); err == nil { //nolint:gosec // G304: the pidfile in our own temp directory
				pid, _ = strconv.Atoi(strings.TrimSpace(string(raw)))
			}
		}
		if pid > 0 && answers(ctx) {
			return pid, dir, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	if pid > 0 {
		stopDaemon(pid)
	}
	_ = os.RemoveAll(dir) // best effort: a temp directory; the start error matters
	return 0, "", fmt.Errorf("zfs-fuse started but `zpool list` did not answer within 30s")
}

// stopDaemon asks zfs-fuse to exit (it unmounts and syncs on SIGTERM) and
// waits up to 30 s, killing it if it hangs.
func stopDaemon(pid int) {
	// ESRCH (already gone) is the only error for a pid we started; the
	// loop below checks liveness either way.
	_ = syscall.Kill(pid, syscall.SIGTERM)
	for i := 0; i < 600 && alive(pid); i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if alive(pid) {
		_ = syscall.Kill(pid, syscall.SIGKILL) // as above
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
