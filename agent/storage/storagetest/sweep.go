package storagetest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/storage/loopdev"
	"github.com/thinlab/thinlab/internal/command"
)

// Loop pools live in os.TempDir()/thinlab-st-<pid>-<random>, pid being the
// test binary that made them. A binary killed by -timeout or a crash runs
// no cleanup: its pools stay mounted, their loop devices attached and the
// clones' postgres (started in their own sessions, as in production)
// running. The next binary that makes a loop pool sweeps what belongs to
// binaries that no longer run.
var (
	sweepOnce sync.Once
	poolDirRE = regexp.MustCompile(`^thinlab-st-(\d+)-\d+$`)
)

func poolDirPattern() string { return fmt.Sprintf("thinlab-st-%d-", os.Getpid()) }

// sweepCrashed removes the loop pools of test binaries that are gone.
func sweepCrashed(t testing.TB) {
	sweepOnce.Do(func() {
		entries, err := os.ReadDir(os.TempDir())
		if err != nil {
			return
		}
		for _, e := range entries {
			m := poolDirRE.FindStringSubmatch(e.Name())
			if m == nil {
				continue
			}
			pid, _ := strconv.Atoi(m[1])
			if pid == os.Getpid() || syscall.Kill(pid, 0) == nil {
				continue // its binary still runs (or the pid was reused: leave it)
			}
			dir := filepath.Join(os.TempDir(), e.Name())
			t.Logf("storagetest: removing the leftovers of test binary %d, which did not clean up (killed or crashed): %s", pid, dir)
			if err := sweepDir(dir); err != nil {
				t.Logf("storagetest: sweep %s: %v", dir, err)
			}
		}
	})
}

// sweepDir kills the processes using dir, unmounts what is mounted below
// it, detaches its image's loop devices and removes it.
func sweepDir(dir string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, pid := range pidsUsing(dir) {
		_ = syscall.Kill(pid, syscall.SIGKILL) // gone already is fine
	}
	for i := 0; i < 100 && len(pidsUsing(dir)) > 0; i++ {
		time.Sleep(20 * time.Millisecond)
	}
	r := command.Runner{}
	for _, m := range mountsBelow(dir) {
		if _, err := r.Run(ctx, "umount", m); err != nil {
			if _, err := r.Run(ctx, "umount", "-l", m); err != nil {
				return fmt.Errorf("unmount %s: %w", m, err)
			}
		}
	}
	image := filepath.Join(dir, "pool.img")
	devs, err := loopdev.DevicesFor(ctx, r, image)
	if err != nil {
		return err
	}
	for _, d := range devs {
		if err := loopdev.Detach(ctx, r, d); err != nil {
			return err
		}
	}
	return os.RemoveAll(dir)
}

// pidsUsing lists the processes whose command line or working directory
// is in dir (a clone's postgres has its data directory in both).
func pidsUsing(dir string) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		cwd, _ := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		if bytes.Contains(cmdline, []byte(dir+"/")) || cwd == dir || strings.HasPrefix(cwd, dir+"/") {
			out = append(out, pid)
		}
	}
	return out
}

// mountsBelow lists the mountpoints at or below dir, deepest first.
func mountsBelow(dir string) []string {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return nil
	}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 1 && (f[1] == dir || strings.HasPrefix(f[1], dir+"/")) {
			out = append(out, f[1])
		}
	}
	slices.SortFunc(out, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	return out
}
