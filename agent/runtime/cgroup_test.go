package runtime

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/internal/command"
	"github.com/thinlab/thinlab/internal/pgtest"
	"github.com/thinlab/thinlab/internal/vmtest"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Fatal("this test needs root (it writes cgroups and runs postgres as the postgres user): run `go test` as root")
	}
}

// TestCgroupLimits runs on this project's hosts (cgroup v1 memory and cpu
// hierarchies; a delegated cgroup v2 works too). It checks that the
// postmaster and its children land in the clone's groups with the
// configured limits, and that the groups are removed on stop. cgroup v2
// inside a VM is TestCgroupV2InQEMU.
func TestCgroupLimits(t *testing.T) {
	needRoot(t)
	ctx := ctxT(t)
	dir := pgtest.InitDataDir(t)
	rt, err := New(Options{User: pgtest.OSUser(t), RunDir: runDir(t), ListenAddresses: "127.0.0.1", CPU: 1.5, MemoryBytes: 256 << 20})
	if err != nil {
		t.Fatalf("New with limits: %v\n(the test needs cgroup v1 memory and cpu hierarchies, or a cgroup v2 with cpu and memory delegated: systemd-run --scope -p Delegate=yes go test ...)", err)
	}
	if !rt.LimitsActive() {
		t.Fatal("limits not active although New succeeded")
	}
	inst := Instance{Name: randName("rt-cg-"), DataDir: dir, Port: pgtest.FreePort(t), Settings: DefaultSettings}
	if err := rt.Start(ctx, inst); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Kill(inst) })
	pid, _ := rt.Running(dir)
	groups := cgroupsOf(pid, inst.Name)
	if len(groups) == 0 {
		raw, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		t.Fatalf("postmaster %d is in no thinlab cgroup: %s", pid, raw)
	}
	for _, child := range descendants(pid) {
		if len(cgroupsOf(child, inst.Name)) != len(groups) {
			t.Errorf("child %d of the postmaster is not in the clone's cgroups %v", child, groups)
		}
	}
	checked := 0
	for _, g := range groups {
		for file, want := range map[string]string{
			"memory.limit_in_bytes": strconv.Itoa(256 << 20),
			"cpu.cfs_quota_us":      "150000",
			"memory.max":            strconv.Itoa(256 << 20),
			"cpu.max":               "150000 100000",
		} {
			raw, err := os.ReadFile(filepath.Join(g, file))
			if err != nil {
				continue
			}
			checked++
			if got := strings.TrimSpace(string(raw)); got != want {
				t.Errorf("%s/%s = %s, want %s", g, file, got, want)
			}
		}
	}
	if checked < 2 {
		t.Fatalf("found %d limit files in %v, want memory and cpu", checked, groups)
	}
	if err := rt.Stop(ctx, inst, "immediate"); err != nil {
		t.Fatal(err)
	}
	for _, g := range groups {
		if _, err := os.Stat(g); !os.IsNotExist(err) {
			t.Errorf("cgroup %s left behind after stop (%v)", g, err)
		}
	}
}

// TestNewRefusesWhenLimitsCannotBeApplied: with limits configured, a
// cgroup root that is missing, holds no cgroup filesystem or is read-only
// makes New fail (the agent does not start) and changes nothing; the old
// code logged a warning and ran clones without limits.
func TestNewRefusesWhenLimitsCannotBeApplied(t *testing.T) {
	needRoot(t)
	// A read-only view of this host's cgroup v1 memory hierarchy: a bind
	// mount remounted read-only, below a directory of its own.
	var memMount string
	mounts, err := readCgroupMounts()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mounts {
		if !m.v2 && hasOption(m, "memory") {
			memMount = m.mountpoint
		}
	}
	if memMount == "" {
		t.Fatal("this host has no cgroup v1 memory hierarchy for the read-only case (cgroup v2 hosts: that case runs in TestCgroupV2InQEMU)")
	}
	roRoot := t.TempDir()
	ro := filepath.Join(roRoot, "memory")
	if err := os.Mkdir(ro, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount(memMount, ro, "", syscall.MS_BIND, ""); err != nil {
		t.Fatalf("bind-mount %s: %v", memMount, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(ro, 0); err != nil {
			t.Errorf("unmount %s: %v", ro, err)
		}
	})
	if err := syscall.Mount("", ro, "", syscall.MS_REMOUNT|syscall.MS_BIND|syscall.MS_RDONLY, ""); err != nil {
		t.Fatalf("remount %s read-only: %v", ro, err)
	}

	ownBefore, _ := os.ReadFile("/proc/self/cgroup")
	for _, tc := range []struct {
		name, root string
		cpu        float64
		mem        uint64
		want       string
	}{
		{"missing root", filepath.Join(t.TempDir(), "nosuch"), 1, 128 << 20, "no such file or directory"},
		{"no cgroup filesystem", t.TempDir(), 1, 128 << 20, "no cgroup filesystem is mounted"},
		{"read-only memory hierarchy", roRoot, 0, 128 << 20, "read-only file system"},
		{"cpu limit without a cpu hierarchy", roRoot, 1, 0, "cpu controller is not mounted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt, err := New(Options{User: pgtest.OSUser(t), RunDir: runDir(t), CPU: tc.cpu, MemoryBytes: tc.mem, CgroupRoot: tc.root})
			if err == nil || rt != nil {
				t.Fatalf("New = %v, %v; want a refusal", rt, err)
			}
			t.Logf("refused: %v", err)
			for _, want := range []string{tc.want, "provision.resources", "cannot apply"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
		})
	}
	if ownAfter, _ := os.ReadFile("/proc/self/cgroup"); string(ownAfter) != string(ownBefore) {
		t.Errorf("a refused New moved the process: cgroups were\n%s\nnow\n%s", ownBefore, ownAfter)
	}
	// Without limits nothing is probed, whatever the root.
	if _, err := New(Options{CgroupRoot: "/nonexistent"}); err != nil {
		t.Errorf("New without limits: %v", err)
	}
}

// ---- cgroup v2 inside a VM ----

// cgroupV2RoleEnv tells a copy of this test binary which part of
// TestCgroupV2InQEMU it plays: "vm" (inside the VM, as init's child),
// "agent" (the agent, started in a systemd-like delegated service cgroup)
// or "nodelegate" (the agent in a service cgroup without delegation).
const cgroupV2RoleEnv = "THINLAB_CGROUP_V2_ROLE"

// helperPIDEnv passes the pid of another process of the agent's service
// (it must move into the agent's leaf too).
const helperPIDEnv = "THINLAB_CGROUP_V2_HELPER"

// cgroupV2DataDirEnv passes the data directory the agent role runs its
// clones on. The host's test makes it with initdb before the VM boots:
// inside the VM initdb runs under software emulation and took 113 s of
// the agent's 120 s on a host with load 16-38 on 2 cores (0.4 s natively),
// leaving the clones too little time; the VM sees the host's directory
// through its root overlay and writes only to its own copy.
const cgroupV2DataDirEnv = "THINLAB_CGROUP_V2_DATADIR"

// vmService is the service cgroup, as systemd names it, relative to the
// cgroup2 root.
const vmService = "system.slice/thinlab-agent.service"

// cgroupV2OK is printed by the agent role once every check passed.
const cgroupV2OK = "CGROUPV2-OK"

// TestCgroupV2InQEMU boots a VM (this host has cgroup v1), mounts only
// cgroup2 at /sys/fs/cgroup there and lays it out as systemd does: the
// agent starts in a service cgroup that holds processes and has cpu and
// memory delegated. The real runtime must move the agent into a leaf,
// enable the controllers and run a real postgres with cpu.max and
// memory.max set, every backend inside the clone's group; removal cleans
// the groups. In the same VM: a read-only cgroup2 root and a service
// without delegation make New fail, and a clone that cannot be put into
// its group is stopped instead of running unlimited. It fails, never
// skips, when qemu or the kernel are missing: `make deps` installs them.
func TestCgroupV2InQEMU(t *testing.T) {
	switch os.Getenv(cgroupV2RoleEnv) {
	case "vm":
		cgroupV2VM(t)
		return
	case "agent":
		cgroupV2Agent(t)
		return
	case "nodelegate":
		cgroupV2NoDelegation(t)
		return
	}
	needRoot(t)
	bin := compileTestBinary(t)
	dataDir := pgtest.InitDataDir(t)
	res := vmtest.Run(t, vmtest.Options{
		Command: []string{bin, "-test.run", "^TestCgroupV2InQEMU$", "-test.v", "-test.count=1", "-test.timeout", "200s"},
		Env:     []string{cgroupV2RoleEnv + "=vm", cgroupV2DataDirEnv + "=" + dataDir},
		Timeout: 240 * time.Second,
	})
	t.Logf("in-VM test output:\n%s", res.Stdout)
	if len(res.Stderr) > 0 {
		t.Logf("in-VM stderr:\n%s", res.Stderr)
	}
	if res.ExitCode != 0 {
		t.Fatalf("in-VM test failed (exit %d)", res.ExitCode)
	}
	out := string(res.Stdout)
	for _, want := range []string{
		"--- PASS: TestCgroupV2InQEMU/read-only_cgroup_root ",
		"--- PASS: TestCgroupV2InQEMU/service_without_delegation ",
		"--- PASS: TestCgroupV2InQEMU/delegated_service ",
		cgroupV2OK,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("in-VM output lacks %q", want)
		}
	}
	if strings.Contains(out, "--- SKIP") {
		t.Error("an in-VM test skipped")
	}
}

// compileTestBinary builds this package's tests into a binary the VM runs
// from the shared host filesystem.
func compileTestBinary(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	bin := filepath.Join(t.TempDir(), "runtime.test")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	if _, err := (command.Runner{}).Run(ctx, goBin, "test", "-c", "-o", bin, "."); err != nil {
		t.Fatalf("compile the test binary: %v", err)
	}
	return bin
}

// cgroupV2VM runs inside the VM as root, in the root cgroup.
func cgroupV2VM(t *testing.T) {
	root := DefaultCgroupRoot
	if err := syscall.Mount("cgroup2", root, "cgroup2", 0, ""); err != nil {
		t.Fatalf("mount cgroup2 at %s: %v", root, err)
	}
	// Unmounted last (cleanups run in reverse), after the processes in it
	// are gone; the VM is thrown away anyway.
	t.Cleanup(func() {
		if err := syscall.Unmount(root, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", root, err)
		}
	})
	mounts, err := readCgroupMounts()
	if err != nil {
		t.Fatal(err)
	}
	if len(mounts) != 1 || !mounts[0].v2 || mounts[0].mountpoint != root {
		t.Fatalf("cgroup mounts in the VM = %+v, want cgroup2 at %s only", mounts, root)
	}
	if got := ownV2(t, os.Getpid()); got != "/" {
		t.Fatalf("the in-VM test runs in cgroup %s, want the root", got)
	}
	// What systemd does for a service with Delegate=yes: cpu and memory
	// enabled down to the service's cgroup, which the service owns.
	writeCg(t, filepath.Join(root, "cgroup.subtree_control"), "+cpu +memory")
	svc := filepath.Join(root, vmService)
	mkdirCg(t, filepath.Dir(svc))
	writeCg(t, filepath.Join(filepath.Dir(svc), "cgroup.subtree_control"), "+cpu +memory")
	mkdirCg(t, svc)

	t.Run("read-only cgroup root", func(t *testing.T) {
		ro := t.TempDir()
		if err := syscall.Mount("cgroup2", ro, "cgroup2", syscall.MS_RDONLY, ""); err != nil {
			t.Fatalf("mount cgroup2 read-only at %s: %v", ro, err)
		}
		defer func() {
			if err := syscall.Unmount(ro, 0); err != nil {
				t.Errorf("unmount %s: %v", ro, err)
			}
		}()
		rt, err := New(Options{User: pgtest.OSUser(t), RunDir: runDir(t), CPU: 1, MemoryBytes: 64 << 20, CgroupRoot: ro})
		if err == nil || rt != nil || !strings.Contains(err.Error(), "read-only file system") {
			t.Fatalf("New on a read-only cgroup2 = %v, %v; want a refusal naming the read-only file system", rt, err)
		}
		t.Logf("refused: %v", err)
	})

	t.Run("service without delegation", func(t *testing.T) {
		// The parent enables no controllers for the service (systemd
		// without Delegate=yes and no accounting), as on the hosts
		// where clones used to run without limits, silently.
		plain := filepath.Join(root, "plain.slice")
		mkdirCg(t, plain)
		nodelegate := filepath.Join(plain, "nodelegate.service")
		mkdirCg(t, nodelegate)
		out := runRole(t, "nodelegate", nodelegate, nil)
		t.Logf("agent without delegation:\n%s", out)
	})

	t.Run("delegated service", func(t *testing.T) {
		// Another process of the service (as systemd's cgroup may hold
		// an ExecStartPre leftover or a helper): it must move too.
		helper := exec.Command("sleep", "600")
		f := openCgroupDir(t, svc)
		helper.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}
		if err := helper.Start(); err != nil {
			t.Fatalf("start a helper in %s: %v", svc, err)
		}
		t.Cleanup(func() {
			_ = helper.Process.Kill() // fails only when it has exited
			_ = helper.Wait()         // killed: it exits with an error by design
		})
		out := runRole(t, "agent", svc, []string{helperPIDEnv + "=" + strconv.Itoa(helper.Process.Pid)})
		t.Logf("agent:\n%s", out)
		if !strings.Contains(out, cgroupV2OK) {
			t.Fatalf("the agent did not report %s", cgroupV2OK)
		}
		// After the agent exited: the helper stays in the agent's leaf,
		// and no clone group is left.
		if got, want := ownV2(t, helper.Process.Pid), "/"+vmService+"/"+agentLeaf; got != want {
			t.Errorf("helper is in %s, want %s", got, want)
		}
		if _, err := os.Stat(filepath.Join(svc, cgroupGroup)); !errors.Is(err, os.ErrNotExist) {
			entries, _ := os.ReadDir(filepath.Join(svc, cgroupGroup))
			t.Errorf("%s/%s left behind after the clones were removed (%v, entries %v)", svc, cgroupGroup, err, entries)
		}
	})
}

// runRole runs this test binary as role inside cgroup dir (placed there
// at fork, as systemd starts a service) and fails unless it passes.
func runRole(t *testing.T, role, dir string, env []string) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 150*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "-test.run", "^TestCgroupV2InQEMU$", "-test.v", "-test.count=1")
	cmd.Env = append(append(os.Environ(), cgroupV2RoleEnv+"="+role), env...)
	f := openCgroupDir(t, dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestCgroupV2InQEMU ") {
		t.Fatalf("%s role failed (%v):\n%s", role, err, out)
	}
	return string(out)
}

func openCgroupDir(t *testing.T, dir string) *os.File {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() }) // read only
	return f
}

// cgroupV2NoDelegation: the agent in a service cgroup whose parent
// enables no controllers must refuse, and leave its cgroup as it was.
func cgroupV2NoDelegation(t *testing.T) {
	before := ownV2(t, os.Getpid())
	rt, err := New(Options{User: pgtest.OSUser(t), RunDir: runDir(t), CPU: 1, MemoryBytes: 128 << 20})
	if err == nil || rt != nil {
		t.Fatalf("New in %s without delegated controllers = %v, %v; want a refusal", before, rt, err)
	}
	for _, want := range []string{"controller cpu is not available", "Delegate=yes"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	t.Logf("refused: %v", err)
	if after := ownV2(t, os.Getpid()); after != before {
		t.Errorf("a refused New moved the agent from %s to %s", before, after)
	}
}

// cgroupV2Agent is the agent, started in the delegated service cgroup
// next to a helper process.
func cgroupV2Agent(t *testing.T) {
	ctx := ctxT(t)
	// When each step began and the time left: under software emulation
	// on a loaded host a step takes up to a hundred times its native time,
	// and a failure must show which step used the budget.
	began := time.Now()
	step := func(name string) {
		dl, _ := ctx.Deadline()
		t.Logf("step %q at %s, %s left", name, time.Since(began).Round(time.Millisecond), time.Until(dl).Round(time.Millisecond))
	}
	defer step("end")
	root := DefaultCgroupRoot
	svc := filepath.Join(root, vmService)
	leaf := "/" + vmService + "/" + agentLeaf
	helper, err := strconv.Atoi(os.Getenv(helperPIDEnv))
	if err != nil {
		t.Fatalf("%s: %v", helperPIDEnv, err)
	}
	if got := ownV2(t, os.Getpid()); got != "/"+vmService {
		t.Fatalf("the agent starts in %s, want /%s", got, vmService)
	}
	opt := Options{User: pgtest.OSUser(t), RunDir: runDir(t), CPU: 1.5, MemoryBytes: 256 << 20}
	step("New")
	rt, err := New(opt)
	if err != nil {
		t.Fatalf("New in a delegated service cgroup: %v", err)
	}
	// The agent and the helper moved into the leaf; the service's cgroup
	// holds no process and enables the controllers for its children.
	for _, pid := range []int{os.Getpid(), helper} {
		if got := ownV2(t, pid); got != leaf {
			t.Errorf("pid %d is in %s, want the agent's leaf %s", pid, got, leaf)
		}
	}
	if procs := readCg(t, filepath.Join(svc, "cgroup.procs")); procs != "" {
		t.Errorf("the service cgroup still holds processes: %q", procs)
	}
	if ctl := strings.Fields(readCg(t, filepath.Join(svc, "cgroup.subtree_control"))); !slices.Contains(ctl, "cpu") || !slices.Contains(ctl, "memory") {
		t.Errorf("%s/cgroup.subtree_control = %v, want cpu and memory", svc, ctl)
	}
	// A second runtime in the same process uses the same layout rather
	// than nesting a leaf in the leaf.
	if _, err := New(opt); err != nil {
		t.Fatalf("second New: %v", err)
	}
	if got := ownV2(t, os.Getpid()); got != leaf {
		t.Errorf("after a second New the agent is in %s, want %s", got, leaf)
	}

	dir := os.Getenv(cgroupV2DataDirEnv)
	if dir == "" {
		t.Fatalf("%s is not set (the host side makes the data directory)", cgroupV2DataDirEnv)
	}
	inst := Instance{Name: "c1", DataDir: dir, Port: 5433, Settings: DefaultSettings}
	step("start c1")
	if err := rt.Start(ctx, inst); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Kill(inst) })
	group := "/" + vmService + "/" + cgroupGroup + "/" + inst.Name
	groupDir := filepath.Join(root, group)
	for file, want := range map[string]string{"cpu.max": "150000 100000", "memory.max": strconv.Itoa(256 << 20)} {
		if got := readCg(t, filepath.Join(groupDir, file)); got != want {
			t.Errorf("%s/%s = %q, want %q", groupDir, file, got, want)
		}
	}
	step("query c1")
	conn, err := pgx.Connect(ctx, rt.SocketConnString(dir, inst.Port, "postgres", "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	var backend int
	var sum int64
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid(), sum(g) FROM generate_series(1, 200000) g").Scan(&backend, &sum); err != nil {
		t.Fatal(err)
	}
	if sum != 200000*200001/2 {
		t.Errorf("sum = %d", sum)
	}
	pid, running := rt.Running(dir)
	if !running {
		t.Fatal("postgres is not running")
	}
	// Every postgres process, the new backend included, is in the clone's
	// group, and the group holds nothing else.
	want := append([]int{pid}, descendants(pid)...)
	if !slices.Contains(want, backend) {
		t.Fatalf("backend %d is not a child of postmaster %d", backend, pid)
	}
	for _, p := range want {
		if got := ownV2(t, p); got != group {
			t.Errorf("postgres pid %d is in %s, want %s", p, got, group)
		}
	}
	// Compared again a few times: postgres may start or end a worker
	// between the two reads.
	var inGroup []int
	for range 10 {
		inGroup = inGroup[:0]
		for f := range strings.FieldsSeq(readCg(t, filepath.Join(groupDir, "cgroup.procs"))) {
			p, _ := strconv.Atoi(f)
			inGroup = append(inGroup, p)
		}
		want = append([]int{pid}, descendants(pid)...)
		slices.Sort(want)
		slices.Sort(inGroup)
		if slices.Equal(inGroup, want) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !slices.Equal(inGroup, want) {
		t.Errorf("%s/cgroup.procs = %v, want the postmaster and its children %v", groupDir, inGroup, want)
	}
	if len(want) < 5 {
		t.Errorf("only %d postgres processes %v, want the postmaster, its auxiliary processes and the backend", len(want), want)
	}
	// The controllers account the clone: its memory and CPU time count.
	if cur, _ := strconv.ParseInt(readCg(t, filepath.Join(groupDir, "memory.current")), 10, 64); cur <= 0 {
		t.Errorf("memory.current of the clone's group = %d, want > 0", cur)
	}
	if stat := readCg(t, filepath.Join(groupDir, "cpu.stat")); !strings.Contains(stat, "nr_periods") {
		t.Errorf("cpu.stat of the clone's group has no bandwidth statistics (the cpu controller is not enabled for it):\n%s", stat)
	}
	_ = conn.Close(ctx) // a failed goodbye loses nothing

	step("stop c1")
	if err := rt.Stop(ctx, inst, "fast"); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{groupDir, filepath.Dir(groupDir)} {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("cgroup %s left after the only clone stopped (%v)", d, err)
		}
	}

	// A clone that cannot be put into its group is stopped, not left
	// running without limits: its group is made a non-leaf with a
	// domain controller enabled, so the kernel refuses processes in it.
	parent := filepath.Join(svc, cgroupGroup)
	blocked := filepath.Join(parent, "c2")
	mkdirCg(t, parent)
	writeCg(t, filepath.Join(parent, "cgroup.subtree_control"), "+cpu +memory")
	mkdirCg(t, blocked)
	mkdirCg(t, filepath.Join(blocked, "inner"))
	writeCg(t, filepath.Join(blocked, "cgroup.subtree_control"), "+memory")
	t.Cleanup(func() {
		// Best effort, innermost first: what the test left behind fails the
		// next run's mkdir loudly.
		_ = os.Remove(filepath.Join(blocked, "inner"))
		_ = os.Remove(blocked)
		_ = os.Remove(parent)
	})
	step("start c2 into an unusable group")
	err = rt.Start(ctx, Instance{Name: "c2", DataDir: dir, Port: 5434, Settings: DefaultSettings})
	if err == nil || !strings.Contains(err.Error(), "could not be put into its cgroup") {
		t.Fatalf("Start into an unusable group = %v, want a refusal", err)
	}
	if pid, running := rt.Running(dir); running {
		t.Fatalf("postgres (pid %d) runs although it could not be limited", pid)
	}
	procs, err := Postmasters()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range procs {
		if p.DataDir == filepath.Clean(dir) {
			t.Fatalf("postmaster %d still runs in %s", p.PID, dir)
		}
	}
	fmt.Printf("%s processes=%d backend=%d group=%s\n", cgroupV2OK, len(want), backend, group)
}

// ownV2 is pid's cgroup v2 path.
func ownV2(t *testing.T, pid int) string {
	t.Helper()
	paths, err := procCgroups(strconv.Itoa(pid))
	if err != nil {
		t.Fatal(err)
	}
	p, ok := paths[""]
	if !ok {
		t.Fatalf("pid %d has no cgroup v2 entry: %v", pid, paths)
	}
	return p
}

func readCg(t *testing.T, path string) string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(raw))
}

func writeCg(t *testing.T, path, value string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(value), 0); err != nil {
		t.Fatalf("write %q to %s: %v", value, path, err)
	}
}

func mkdirCg(t *testing.T, dir string) {
	t.Helper()
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		t.Fatal(err)
	}
}
