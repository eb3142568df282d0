// Package vmtest runs one command inside a throwaway QEMU virtual machine,
// for tests that need kernel features this host lacks (device-mapper, so
// LVM thin pools). The VM boots the Debian kernel installed by `make deps`
// (linux-image-amd64) under software emulation, with an initramfs built at
// test time from busybox-static and the kernel's own modules. The host's
// root filesystem is shared read-only over virtio-9p and stacked under a
// tmpfs overlay, so the command runs in the host's userland (lvm, mkfs.xfs,
// postgres, a `go test -c` binary) with a private, writable view of it.
//
// Inside the VM:
//   - the optional scratch disk (a sparse image file) is /dev/vda
//     ($VMTEST_DISK);
//   - the result directory is shared writable at the same path as on the
//     host ($VMTEST_DIR, also the working directory); stdout, stderr and the
//     exit code are written there;
//   - udev does not run: device-mapper users need DM_DISABLE_UDEV=1.
//
// Only `-accel tcg` is used: on this project's machines KVM is absent or
// hangs, and a TCG boot takes 10-60 s.
package vmtest

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/thinlab/thinlab/internal/pgcluster"
	"github.com/thinlab/thinlab/internal/testenv"
)

// DefaultModules are loaded by the initramfs before anything else: what
// mounting the shared host root needs (virtio, 9p, overlay), the block
// device, device-mapper thin provisioning and the filesystems made on it.
var DefaultModules = []string{
	"virtio_pci", "virtio_blk", "9pnet_virtio", "9p", "overlay",
	"crc32c_generic", "libcrc32c",
	"dm_mod", "dm_bufio", "dm_bio_prison", "dm_persistent_data", "dm_thin_pool",
	"xfs", "ext4",
}

// Options describe one VM run.
type Options struct {
	// Command is run as root inside the VM, in the host's userland.
	Command []string
	// Env entries (KEY=value) are exported for Command.
	Env []string
	// DiskSize, when set ("2G", "512M"), attaches a sparse scratch disk of
	// that size as /dev/vda.
	DiskSize string
	// Timeout bounds the whole VM run (boot included). Default 3 minutes.
	Timeout time.Duration
	// MemoryMB is the VM's memory. Default 1024.
	MemoryMB int
	// CPUs is the number of virtual CPUs. Default 2.
	CPUs int
	// Modules are loaded in addition to DefaultModules.
	Modules []string
	// Kernel is a vmlinuz path; default the newest /boot/vmlinuz-* whose
	// /lib/modules directory exists.
	Kernel string
}

// Result is what the command left behind.
type Result struct {
	Stdout   []byte
	Stderr   []byte
	ExitCode int
	// Console is the VM's serial console (kernel and init messages).
	Console string
	// Dir is the shared result directory (removed with the test's temp
	// directories); files the command wrote to $VMTEST_DIR are here.
	Dir string
}

// Markers written by /init on the console.
const (
	markerStart = "VMTEST-START"
	markerDone  = "VMTEST-DONE"
	markerFail  = "VMTEST-FAIL"
)

// Run boots a VM, runs opt.Command in it and returns its result. Any
// failure to set up or boot the VM fails the test (it never skips: the
// packages it needs are installed by `make deps`). The VM is killed by PID
// when the test ends, whatever happened.
func Run(t testing.TB, opt Options) Result {
	t.Helper()
	testenv.NeedsSystem(t, "the QEMU VM")
	res, err := run(t, opt)
	if err != nil {
		t.Fatalf("vmtest: %v", err)
	}
	return res
}

// run is Run returning its failures; temporary files and the qemu process
// are still tied to t's cleanup.
func run(t testing.TB, opt Options) (Result, error) {
	t.Helper()
	if len(opt.Command) == 0 {
		return Result{}, errors.New("Options.Command is empty")
	}
	if opt.Timeout == 0 {
		opt.Timeout = 3 * time.Minute
	}
	if opt.MemoryMB == 0 {
		opt.MemoryMB = 1024
	}
	if opt.CPUs == 0 {
		opt.CPUs = 2
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return Result{}, fmt.Errorf("qemu-system-x86_64 not found (run `make deps`, which installs qemu-system-x86): %w", err)
	}
	kernel, modDir, err := findKernel(opt.Kernel)
	if err != nil {
		return Result{}, err
	}
	busybox, err := findStaticBusybox()
	if err != nil {
		return Result{}, err
	}

	work := t.TempDir() // initramfs, disk image, console log
	out := t.TempDir()  // shared with the VM, writable
	if err := os.Chmod(out, 0o755); err != nil {
		return Result{}, err
	}
	mods, err := resolveModules(modDir, append(append([]string{}, DefaultModules...), opt.Modules...))
	if err != nil {
		return Result{}, err
	}
	initrd := filepath.Join(work, "initramfs.cpio")
	if err := buildInitramfs(initrd, busybox, modDir, mods, initScript(out)); err != nil {
		return Result{}, fmt.Errorf("build initramfs: %w", err)
	}
	if err := os.WriteFile(filepath.Join(out, "run.sh"), runScript(opt, out), 0o755); err != nil {
		return Result{}, err
	}

	args := []string{
		"-accel", "tcg",
		"-cpu", "max",
		"-smp", strconv.Itoa(opt.CPUs),
		"-m", strconv.Itoa(opt.MemoryMB),
		"-nographic", "-no-reboot",
		"-nic", "none",
		"-kernel", kernel,
		"-initrd", initrd,
		// no_timer_check: under software emulation on a busy host the
		// kernel's IO-APIC timer check can miss its window and panic
		// ("IO-APIC + timer doesn't work"), as seen on this project's hosts.
		"-append", "console=ttyS0 rdinit=/init panic=-1 quiet loglevel=4 no_timer_check",
		"-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
		"-virtfs", "local,path=" + out + ",mount_tag=vmtest_out,security_model=none,multidevs=remap",
	}
	if opt.DiskSize != "" {
		size, err := parseSize(opt.DiskSize)
		if err != nil {
			return Result{}, fmt.Errorf("DiskSize: %w", err)
		}
		disk := filepath.Join(work, "disk.img")
		if err := makeSparse(disk, size); err != nil {
			return Result{}, fmt.Errorf("scratch disk: %w", err)
		}
		args = append(args, "-drive", "file="+disk+",format=raw,if=virtio,cache=unsafe")
	}

	console := filepath.Join(work, "console.log")
	logf, err := os.Create(console)
	if err != nil {
		return Result{}, err
	}
	defer func() { _ = logf.Close() }() // closed below on the normal path; this is for early returns

	// qemu runs through os/exec rather than internal/command: the test
	// must own the process (its PID, to kill it at cleanup) and stream the
	// console to a file instead of buffering it.
	ctx, cancel := context.WithTimeout(context.Background(), opt.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu, args...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.WaitDelay = 5 * time.Second
	// If the test binary dies without running its cleanups (go test's
	// -timeout panic, a kill), the kernel kills qemu with it. Pdeathsig
	// follows the forking thread, which pgcluster.AsUser may end: fork
	// from a thread that lasts.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if err := pgcluster.StartOnLastingThread(cmd); err != nil {
		return Result{}, fmt.Errorf("start qemu: %w", err)
	}
	pid := cmd.Process.Pid
	proc := cmd.Process
	t.Cleanup(func() {
		// Normally qemu has exited and been waited for, and Kill does
		// nothing (the Process handle never signals a reused PID);
		// this is for a test that panicked mid-run.
		_ = proc.Kill() // fails when qemu has exited, which is the normal case
	})
	waitErr := cmd.Wait()
	elapsed := time.Since(start)
	if err := logf.Close(); err != nil {
		return Result{}, fmt.Errorf("console log: %w", err)
	}

	res := Result{Dir: out, ExitCode: -1}
	cb, _ := os.ReadFile(console)
	res.Console = string(cb)
	if ctx.Err() != nil {
		return res, fmt.Errorf("VM did not finish within %s (killed qemu pid %d); console tail:\n%s", opt.Timeout, pid, tail(res.Console, 60))
	}
	if strings.Contains(res.Console, markerFail) {
		return res, fmt.Errorf("VM setup failed; console tail:\n%s", tail(res.Console, 60))
	}
	res.Stdout, _ = os.ReadFile(filepath.Join(out, "stdout"))
	res.Stderr, _ = os.ReadFile(filepath.Join(out, "stderr"))
	code, err := os.ReadFile(filepath.Join(out, "exitcode"))
	if err != nil {
		return res, fmt.Errorf("command left no exit code (qemu: %v); console tail:\n%s", waitErr, tail(res.Console, 60))
	}
	res.ExitCode, err = strconv.Atoi(strings.TrimSpace(string(code)))
	if err != nil {
		return res, fmt.Errorf("bad exit code file %q", code)
	}
	t.Logf("vmtest: %s exited %d after %s (VM boot included)", opt.Command[0], res.ExitCode, elapsed.Round(time.Millisecond))
	return res, nil
}

// initScript is the initramfs's /init: load modules, stack a tmpfs over the
// read-only host root, mount the result directory, run run.sh chrooted
// there, record the exit code and power off. Any setup failure prints
// markerFail, which Run reports with the console.
func initScript(out string) []byte {
	return []byte(`#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
OUT=` + shellQuote(out) + `
fail() { echo "` + markerFail + `: $*"; sync; reboot -f; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do
	insmod "/modules/$m" || fail "insmod $m"
done < /modules/order
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=loose,ro hostroot /host || fail "mount host root"
mount -t tmpfs -o mode=0755 tmpfs /rw || fail "mount tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work /newroot || fail "mount overlay"
mount -t proc proc /newroot/proc || fail "mount proc"
mount -t sysfs sysfs /newroot/sys || fail "mount sysfs"
mount -t devtmpfs devtmpfs /newroot/dev || fail "mount devtmpfs"
mkdir -p /newroot/dev/shm /newroot/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm || fail "mount /dev/shm"
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs -o mode=0755 tmpfs /newroot/run || fail "mount /run"
mkdir -p /newroot/run/lock /newroot/run/lvm /newroot/run/postgresql
mkdir -p "/newroot$OUT"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 vmtest_out "/newroot$OUT" || fail "mount result dir"
echo ` + markerStart + `
chroot /newroot /bin/sh "$OUT/run.sh" > "/newroot$OUT/stdout" 2> "/newroot$OUT/stderr"
echo $? > "/newroot$OUT/exitcode"
sync
umount "/newroot$OUT"
echo ` + markerDone + `
reboot -f
`)
}

// runScript exports the environment and runs the command; it is run by
// /bin/sh from the host's userland inside the chroot.
func runScript(opt Options, out string) []byte {
	var b bytes.Buffer
	b.WriteString("cd " + shellQuote(out) + " || exit 125\n")
	b.WriteString("export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root\n")
	b.WriteString("export VMTEST_DIR=" + shellQuote(out) + "\n")
	if opt.DiskSize != "" {
		b.WriteString("export VMTEST_DISK=/dev/vda\n")
	}
	for _, kv := range opt.Env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !validEnvName(k) {
			continue
		}
		b.WriteString("export " + k + "=" + shellQuote(v) + "\n")
	}
	b.WriteString("exec")
	for _, a := range opt.Command {
		b.WriteString(" " + shellQuote(a))
	}
	b.WriteString("\n")
	return b.Bytes()
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func validEnvName(k string) bool {
	if k == "" {
		return false
	}
	for i, r := range k {
		if r == '_' || (r >= 'A' && r <= 'Z') || (r >= 'a' && r <= 'z') || (i > 0 && r >= '0' && r <= '9') {
			continue
		}
		return false
	}
	return true
}

// findKernel picks the kernel image and its module directory.
func findKernel(kernel string) (string, string, error) {
	if kernel == "" {
		images, _ := filepath.Glob("/boot/vmlinuz-*")
		sort.Sort(sort.Reverse(sort.StringSlice(images)))
		for _, img := range images {
			ver := strings.TrimPrefix(filepath.Base(img), "vmlinuz-")
			if _, err := os.Stat(filepath.Join("/lib/modules", ver, "modules.dep")); err == nil {
				kernel = img
				break
			}
		}
		if kernel == "" {
			return "", "", errors.New("no /boot/vmlinuz-* with a matching /lib/modules/<version>/modules.dep (run `make deps`, which installs linux-image-amd64)")
		}
	}
	ver := strings.TrimPrefix(filepath.Base(kernel), "vmlinuz-")
	modDir := filepath.Join("/lib/modules", ver)
	if _, err := os.Stat(kernel); err != nil {
		return "", "", fmt.Errorf("kernel: %w", err)
	}
	if _, err := os.Stat(filepath.Join(modDir, "modules.dep")); err != nil {
		return "", "", fmt.Errorf("kernel %s has no modules: %w", kernel, err)
	}
	return kernel, modDir, nil
}

// findStaticBusybox returns a busybox that runs without shared libraries
// (the initramfs has none).
func findStaticBusybox() (string, error) {
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		f, err := elf.Open(p)
		if err != nil {
			continue
		}
		static := true
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				static = false
			}
		}
		_ = f.Close() // read only
		if static {
			return p, nil
		}
	}
	return "", errors.New("no statically linked busybox (run `make deps`, which installs busybox-static)")
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	num := strings.TrimSuffix(strings.ToUpper(s), "B")
	switch {
	case strings.HasSuffix(num, "K"):
		mult, num = 1<<10, strings.TrimSuffix(num, "K")
	case strings.HasSuffix(num, "M"):
		mult, num = 1<<20, strings.TrimSuffix(num, "M")
	case strings.HasSuffix(num, "G"):
		mult, num = 1<<30, strings.TrimSuffix(num, "G")
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("size %q: want a positive number with an optional K, M or G suffix", s)
	}
	return n * mult, nil
}

func makeSparse(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		_ = f.Close() // the truncate error is the one to report
		return err
	}
	return f.Close()
}

func tail(s string, lines int) string {
	parts := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}
