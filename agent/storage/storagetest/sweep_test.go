package storagetest

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/loopdev"
	"github.com/thinlab/thinlab/internal/command"
	"github.com/thinlab/thinlab/internal/testenv"
)

const sweepChildEnv = "THINLAB_SWEEP_CHILD"

// TestSweepCrashedBinary runs a copy of this test binary that makes a
// btrfs loop pool, starts a process in it in its own session (as a
// clone's postgres is) and is then killed with SIGKILL, so none of its
// cleanup runs. The next pool made sweeps all of it: process, mount, loop
// device and directory.
func TestSweepCrashedBinary(t *testing.T) {
	if os.Getenv(sweepChildEnv) != "" {
		crashingChild(t)
		return
	}
	testenv.NeedsRoot(t, "root, for loop devices and mounts")
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run", "^TestSweepCrashedBinary$", "-test.v") //nolint:gosec // G702: os.Args[0] is this test binary, run again as the crashing child
	cmd.Env = append(os.Environ(), sweepChildEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var dir string
	var sleeper int
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if _, err := fmt.Sscanf(sc.Text(), "CRASH-READY %s %d", &dir, &sleeper); err == nil {
			break
		}
	}
	if dir == "" {
		_ = cmd.Process.Kill() // it may have exited already; Wait reaps it either way
		_ = cmd.Wait()         // it ends killed or failed: the report below is what matters
		t.Fatal("the child test binary did not report its pool")
	}
	t.Cleanup(func() { _ = sweepDir(dir) }) // should the sweep fail
	// The crash under test: SIGKILL, so none of the child's cleanup runs.
	if err := cmd.Process.Kill(); err != nil {
		t.Fatalf("kill the child test binary: %v", err)
	}
	_ = cmd.Wait() // "signal: killed", by design
	if len(mountsBelow(dir)) == 0 || syscall.Kill(sleeper, 0) != nil {
		t.Fatalf("the killed child left no mount in %s or no running process %d: nothing to sweep", dir, sleeper)
	}

	sweepOnce = sync.Once{} // as in a fresh test binary
	NewLoopPool(t, storage.ModeBtrfs)

	if m := mountsBelow(dir); len(m) > 0 {
		t.Errorf("still mounted after the sweep: %v", m)
	}
	devs, err := loopdev.DevicesFor(t.Context(), command.Runner{}, filepath.Join(dir, "pool.img"))
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) > 0 {
		t.Errorf("loop devices still attached after the sweep: %v", devs)
	}
	for i := 0; i < 100 && syscall.Kill(sleeper, 0) == nil; i++ {
		time.Sleep(20 * time.Millisecond)
	}
	if syscall.Kill(sleeper, 0) == nil {
		t.Errorf("process %d in the crashed binary's pool still runs after the sweep", sleeper)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s still exists after the sweep (stat: %v)", dir, err)
	}
}

// crashingChild makes a pool, starts a process in it that outlives this
// binary, reports both and waits to be killed.
func crashingChild(t *testing.T) {
	p := NewLoopPool(t, storage.ModeBtrfs)
	sleeper := exec.Command("sleep", "600")
	sleeper.Dir = p.MainDir()
	sleeper.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(filepath.Dir(p.MainDir()))
	for !strings.HasPrefix(filepath.Base(dir), "thinlab-st-") && dir != "/" {
		dir = filepath.Dir(dir)
	}
	fmt.Printf("CRASH-READY %s %d\n", dir, sleeper.Process.Pid)
	time.Sleep(10 * time.Minute)
}
