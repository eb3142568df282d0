package backend

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
// module. Only one runs per host, so loop pools share it: the first one
// starts it when `zpool list` does not answer, the last one stops it (by
// its pidfile's PID) only if this process started it. A daemon found
// running (the kernel's OpenZFS needs none) is left alone. The same logic
// lives in zfstest for tests; this copy serves the demo and benchmarks,
// which must not depend on a testing package.
var zfsd struct {
	mu      sync.Mutex
	refs    int
	pid     int
	tempDir string
}

func acquireZFSDaemon(ctx context.Context) error {
	zfsd.mu.Lock()
	defer zfsd.mu.Unlock()
	if zfsd.refs == 0 && !zfsAnswers(ctx) {
		if err := startZFSDaemon(ctx); err != nil {
			return err
		}
	}
	zfsd.refs++
	return nil
}

func releaseZFSDaemon() {
	zfsd.mu.Lock()
	defer zfsd.mu.Unlock()
	zfsd.refs--
	if zfsd.refs > 0 || zfsd.pid == 0 {
		return
	}
	stopProcess(zfsd.pid)
	os.RemoveAll(zfsd.tempDir)
	zfsd.pid, zfsd.tempDir = 0, ""
}

func zfsAnswers(ctx context.Context) bool {
	return exec.CommandContext(ctx, "zpool", "list", "-H").Run() == nil
}

func startZFSDaemon(ctx context.Context) error {
	if _, err := exec.LookPath("zfs-fuse"); err != nil {
		return fmt.Errorf("zfs: `zpool list` fails and zfs-fuse is not installed: install ZFS (OpenZFS, or apt-get install zfs-fuse)")
	}
	dir, err := os.MkdirTemp("", "thinlab-zfsd-")
	if err != nil {
		return err
	}
	pidfile := filepath.Join(dir, "zfs-fuse.pid")
	// zfs-fuse daemonizes: the command returns once the daemon is forked.
	if out, err := exec.CommandContext(ctx, "zfs-fuse", "--no-kstat-mount", "-p", pidfile).CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return fmt.Errorf("start zfs-fuse: %v: %s", err, out)
	}
	deadline := time.Now().Add(30 * time.Second)
	pid := 0
	for time.Now().Before(deadline) {
		if pid == 0 {
			if raw, err := os.ReadFile(pidfile); err == nil {
				pid, _ = strconv.Atoi(strings.TrimSpace(string(raw)))
			}
		}
		if pid > 0 && zfsAnswers(ctx) {
			zfsd.pid, zfsd.tempDir = pid, dir
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	if pid > 0 {
		stopProcess(pid)
	}
	os.RemoveAll(dir)
	return fmt.Errorf("zfs-fuse started but `zpool list` did not answer within 30s")
}

// stopProcess sends SIGTERM (zfs-fuse unmounts and syncs on it), waits up
// to 30 s, then kills.
func stopProcess(pid int) {
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

// alive is kill(0) that treats a zombie as gone.
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
