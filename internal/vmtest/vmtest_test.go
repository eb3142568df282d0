package vmtest

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/internal/testenv"
)

// TestRunInVM boots a real VM (software emulation) and checks that the
// command's stdout, stderr, exit code, environment, scratch disk and
// device-mapper thin support all come through.
func TestRunInVM(t *testing.T) {
	testenv.NeedsRoot(t, "root and the QEMU VM (the shared host root is read as root inside the VM)")
	res := Run(t, Options{
		Command: []string{"/bin/sh", "-c", `echo "hello $GREETING"; echo oops >&2; ` +
			`test -b "$VMTEST_DISK" && echo disk-ok; ` +
			`grep -q '^dm_thin_pool ' /proc/modules && echo thin-ok; ` +
			`echo file > "$VMTEST_DIR/made-in-vm"; exit 7`},
		Env:      []string{"GREETING=it's me"},
		DiskSize: "64M",
	})
	if res.ExitCode != 7 {
		t.Errorf("exit code = %d, want 7; stderr %q", res.ExitCode, res.Stderr)
	}
	for _, want := range []string{"hello it's me\n", "disk-ok\n", "thin-ok\n"} {
		if !bytes.Contains(res.Stdout, []byte(want)) {
			t.Errorf("stdout %q lacks %q", res.Stdout, want)
		}
	}
	if strings.TrimSpace(string(res.Stderr)) != "oops" {
		t.Errorf("stderr = %q", res.Stderr)
	}
	if b, err := os.ReadFile(filepath.Join(res.Dir, "made-in-vm")); err != nil || string(b) != "file\n" {
		t.Errorf("file written in the VM: %q, %v", b, err)
	}
	if t.Failed() {
		t.Logf("console:\n%s", tail(res.Console, 40))
	}
}

func TestResolveModulesOrdersDependenciesFirst(t *testing.T) {
	dir := t.TempDir()
	dep := "kernel/a/dm-thin-pool.ko: kernel/a/dm-bufio.ko kernel/a/dm-mod.ko\n" +
		"kernel/a/dm-bufio.ko: kernel/a/dm-mod.ko\n" +
		"kernel/a/dm-mod.ko:\n"
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/fs/ext4/ext4.ko\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := resolveModules(dir, []string{"dm_thin_pool", "dm-mod", "ext4"})
	if err != nil {
		t.Fatal(err)
	}
	// Each module comes after everything it needs, and only once.
	if strings.Join(got, " ") != "kernel/a/dm-mod.ko kernel/a/dm-bufio.ko kernel/a/dm-thin-pool.ko" {
		t.Fatalf("order = %v", got)
	}
	if _, err := resolveModules(dir, []string{"nosuch"}); err == nil {
		t.Fatal("unknown module accepted")
	}
}

func TestRunScriptQuotes(t *testing.T) {
	s := string(runScript(Options{Command: []string{"/x/y", "a b", "it's"}, Env: []string{"K=v'w", "BAD-NAME=1"}}, "/tmp/o"))
	for _, want := range []string{"export K='v'\\''w'\n", "exec '/x/y' 'a b' 'it'\\''s'\n", "cd '/tmp/o'"} {
		if !strings.Contains(s, want) {
			t.Errorf("script lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "BAD-NAME") {
		t.Errorf("invalid env name exported:\n%s", s)
	}
}

// TestTimeoutKillsVM runs a command that outlives the timeout: run must
// report it and no qemu process may survive.
func TestTimeoutKillsVM(t *testing.T) {
	testenv.NeedsRoot(t, "root and the QEMU VM (the shared host root is read as root inside the VM)")
	res, err := run(t, Options{Command: []string{"sleep", "600"}, Timeout: 25 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "did not finish within 25s") {
		t.Fatalf("err = %v", err)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(res.Dir)) {
			t.Errorf("a process still uses the VM's directory: %s: %q", p, bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
}
