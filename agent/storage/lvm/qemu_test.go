//go:build !lvmvm

package lvm

// The host side of the LVM tests: this kernel has no device-mapper, so the
// tests that need it (the lvmvm build tag: vm_test.go, conformance_test.go,
// bench_test.go) are compiled into a test binary that runs inside a QEMU VM.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/internal/command"
	"github.com/thinlab/thinlab/internal/testenv"
	"github.com/thinlab/thinlab/internal/vmtest"
)

// inVMEnv is set for the copy of this package's test binary that runs
// inside the VM (built with -tags lvmvm; the in-VM tests exist only there,
// so on the host they are neither run nor skipped).
const inVMEnv = "THINLAB_LVM_IN_VM"

// TestLVMInQEMU compiles this package's tests and runs the TestInVM* ones
// in a QEMU VM (software emulation, Debian kernel with dm-thin-pool), on a
// fresh 2 GiB scratch disk. It fails, never skips, when qemu or the kernel
// are missing: `make deps` installs them.
func TestLVMInQEMU(t *testing.T) {
	testenv.NeedsRoot(t, "root and the QEMU VM (the VM reads the host's root filesystem as root)")
	bin := compileTestBinary(t)
	res := vmtest.Run(t, vmtest.Options{
		// Software emulation: the conformance suite (with its snapshot of
		// a running clone) takes minutes in the VM, more on a busy host.
		Command:  []string{bin, "-test.run", "^TestInVM", "-test.v", "-test.timeout", "1140s"},
		Env:      []string{inVMEnv + "=1"},
		DiskSize: "2G",
		Timeout:  1200 * time.Second,
	})
	t.Logf("in-VM test output:\n%s", res.Stdout)
	if os.Getenv("THINLAB_LVM_CAPTURE") != "" {
		// Refresh testdata/ with the reports the in-VM test saved.
		files, _ := filepath.Glob(filepath.Join(res.Dir, "lvs-*.json"))
		for _, src := range files {
			b, err := os.ReadFile(src)
			if err == nil {
				err = os.WriteFile(filepath.Join("testdata", filepath.Base(src)), b, 0o644)
			}
			if err != nil {
				t.Error(err)
			}
		}
	}
	if len(res.Stderr) > 0 {
		t.Logf("in-VM stderr:\n%s", res.Stderr)
	}
	if res.ExitCode != 0 {
		t.Fatalf("in-VM tests failed (exit %d)", res.ExitCode)
	}
	out := string(res.Stdout)
	for _, name := range []string{"TestInVMPostgresOnThinPool", "TestInVMExt4", "TestInVMConformance"} {
		if !strings.Contains(out, "--- PASS: "+name+" ") {
			t.Errorf("%s did not pass inside the VM", name)
		}
	}
	if strings.Contains(out, "--- SKIP") {
		t.Errorf("an in-VM test skipped")
	}
}

// compileTestBinary builds this package's tests into a binary the VM runs
// from the shared host filesystem.
func compileTestBinary(t testing.TB) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	bin := filepath.Join(t.TempDir(), "lvm.test")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	if _, err := (command.Runner{}).Run(ctx, goBin, "test", "-c", "-tags", "lvmvm", "-o", bin, "."); err != nil {
		t.Fatalf("compile the test binary: %v", err)
	}
	return bin
}

// BenchmarkLVMInQEMU measures snapshot, clone and clone-ready times of the
// LVM backend inside the QEMU VM (software emulation, so every number is
// several times what real hardware gives) and, for scale, a full `cp -a`
// of the same data directory in the same VM. It relays the in-VM
// benchmark's BENCH lines.
func BenchmarkLVMInQEMU(b *testing.B) {
	bin := compileTestBinary(b)
	res := vmtest.Run(b, vmtest.Options{
		Command:  []string{bin, "-test.run", "^$", "-test.bench", "^BenchmarkInVMLVM$", "-test.benchtime", "1x", "-test.timeout", "540s"},
		Env:      []string{inVMEnv + "=1"},
		DiskSize: "4G",
		Timeout:  580 * time.Second,
	})
	if res.ExitCode != 0 {
		b.Fatalf("in-VM benchmark failed (exit %d):\n%s\n%s", res.ExitCode, res.Stdout, res.Stderr)
	}
	lines := 0
	sc := bufio.NewScanner(bytes.NewReader(res.Stdout))
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "BENCH ") {
			fmt.Printf("%s\n", sc.Text())
			lines++
		}
	}
	if lines == 0 {
		b.Fatalf("the in-VM benchmark printed no BENCH lines:\n%s\n%s", res.Stdout, res.Stderr)
	}
}
