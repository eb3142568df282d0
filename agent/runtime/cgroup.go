package runtime

import (
	"bufio"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroupGroup is the directory, below the agent's own cgroup in each
// hierarchy, that holds one sub-directory per clone.
const cgroupGroup = "thinlab"

// limiter puts clones into cgroups with CPU and memory limits, on cgroup v2
// (unified) or v1 (separate memory and cpu hierarchies, as on this
// project's hosts).
type limiter struct {
	v2 bool
	// parents: for v2 one directory; for v1 the memory and cpu ones (either
	// may be empty when that limit is not configured).
	v2Dir, memDir, cpuDir string
	cpu                   float64
	mem                   uint64
}

type cgroupMount struct {
	mountpoint string
	root       string // the hierarchy path mounted there
	v2         bool
	options    []string // v1 controllers
}

func readCgroupMounts() ([]cgroupMount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }() // read only
	var out []cgroupMount
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || len(fields) < sep+4 {
			continue
		}
		fstype := fields[sep+1]
		switch fstype {
		case "cgroup2":
			out = append(out, cgroupMount{mountpoint: fields[4], root: fields[3], v2: true})
		case "cgroup":
			out = append(out, cgroupMount{mountpoint: fields[4], root: fields[3], options: strings.Split(fields[sep+3], ",")})
		}
	}
	return out, sc.Err()
}

// procCgroups maps "memory", "cpu" (v1 controllers) and "" (v2) to the
// process's path in that hierarchy.
func procCgroups(pid string) (map[string]string, error) {
	raw, err := os.ReadFile(filepath.Join("/proc", pid, "cgroup")) //nolint:gosec // pid is a number the agent formatted
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for line := range strings.SplitSeq(strings.TrimSpace(string(raw)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[1] == "" {
			out[""] = parts[2]
			continue
		}
		for c := range strings.SplitSeq(parts[1], ",") {
			out[c] = parts[2]
		}
	}
	return out, nil
}

func hasOption(m cgroupMount, c string) bool { return slices.Contains(m.options, c) }

// dirFor turns a hierarchy path into a directory under the mount.
func (m cgroupMount) dirFor(path string) string {
	rel := path
	if m.root != "/" {
		rel = strings.TrimPrefix(path, m.root)
	}
	return filepath.Join(m.mountpoint, rel)
}

// DefaultCgroupRoot is where cgroup filesystems are mounted on Linux.
const DefaultCgroupRoot = "/sys/fs/cgroup"

// agentLeaf is the cgroup, below the agent's own (v2), that the agent's
// processes move into: a v2 cgroup that holds processes cannot enable
// controllers for its children ("no internal processes"), so the agent's
// own cgroup must be emptied before the clone groups can get limits.
const agentLeaf = "agent"

// newLimiter finds the cgroup hierarchies mounted at or below root
// (DefaultCgroupRoot when empty), prepares them for per-clone groups and
// probes them once. An error means the limits cannot be applied: the
// caller must not run clones without them.
func newLimiter(root string, cpu float64, mem uint64) (*limiter, error) {
	if root == "" {
		root = DefaultCgroupRoot
	}
	root = filepath.Clean(root)
	if _, err := os.Stat(root); err != nil {
		return nil, fmt.Errorf("cgroup root: %w", err)
	}
	all, err := readCgroupMounts()
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	var mounts []cgroupMount
	for _, m := range all {
		if m.mountpoint == root || strings.HasPrefix(m.mountpoint, root+"/") {
			mounts = append(mounts, m)
		}
	}
	own, err := procCgroups("self")
	if err != nil {
		return nil, fmt.Errorf("read own cgroup: %w", err)
	}
	l := &limiter{cpu: cpu, mem: mem}
	var memMount, cpuMount, v2Mount *cgroupMount
	for i := range mounts {
		m := &mounts[i]
		switch {
		case m.v2:
			if v2Mount == nil {
				v2Mount = m
			}
		case hasOption(*m, "memory"):
			memMount = m
		case hasOption(*m, "cpu"):
			cpuMount = m
		}
	}
	needMem, needCPU := mem > 0, cpu > 0
	switch {
	case (needMem && memMount != nil) || (needCPU && cpuMount != nil) || (v2Mount == nil && (memMount != nil || cpuMount != nil)):
		// cgroup v1 (or hybrid): the controllers have their own hierarchies,
		// where a group with processes may have children.
		if needMem {
			if memMount == nil {
				return nil, fmt.Errorf("cgroup v1 memory controller is not mounted below %s", root)
			}
			l.memDir = filepath.Join(memMount.dirFor(own["memory"]), cgroupGroup)
		}
		if needCPU {
			if cpuMount == nil {
				return nil, fmt.Errorf("cgroup v1 cpu controller is not mounted below %s", root)
			}
			l.cpuDir = filepath.Join(cpuMount.dirFor(own["cpu"]), cgroupGroup)
		}
	case v2Mount != nil:
		l.v2 = true
		path, ok := own[""]
		if !ok {
			return nil, errors.New("cgroup v2: /proc/self/cgroup has no unified (0::) entry")
		}
		dir, err := l.prepareV2(v2Mount.dirFor(path))
		if err != nil {
			return nil, fmt.Errorf("cgroup v2: %w", err)
		}
		l.v2Dir = filepath.Join(dir, cgroupGroup)
	default:
		return nil, fmt.Errorf("no cgroup filesystem is mounted at or below %s", root)
	}
	if err := l.probe(); err != nil {
		return nil, err
	}
	return l, nil
}

// prepareV2 makes the agent's cgroup (ownDir, or its parent when the agent
// already sits in its leaf from an earlier call) able to hold the clone
// groups: every process in it moves into the leaf agentLeaf, then the
// controllers are enabled for its children. It returns the agent's cgroup.
// Under systemd that cgroup is the service's, which must be delegated
// (Delegate=yes): the controllers are only available where the parent
// enables them, and systemd leaves a delegated subtree alone.
func (l *limiter) prepareV2(ownDir string) (string, error) {
	if filepath.Base(ownDir) == agentLeaf {
		ownDir = filepath.Dir(ownDir)
	}
	want := wantedV2(l.cpu > 0, l.mem > 0)
	raw, err := os.ReadFile(filepath.Join(ownDir, "cgroup.controllers")) //nolint:gosec // the agent's own cgroup from /proc/self/cgroup
	if err != nil {
		return "", err
	}
	avail := strings.Fields(string(raw))
	for _, c := range want {
		if !slices.Contains(avail, c) {
			return "", fmt.Errorf("controller %s is not available in the agent's cgroup %s (available: %q): its parent does not delegate it; run the agent as a systemd service with Delegate=yes", c, ownDir, strings.Join(avail, " "))
		}
	}
	// The root cgroup has no cgroup.type and may hold processes and
	// enable controllers at once; any other must be emptied first.
	if _, err := os.Stat(filepath.Join(ownDir, "cgroup.type")); err == nil {
		if err := moveAllInto(ownDir, filepath.Join(ownDir, agentLeaf)); err != nil {
			return "", err
		}
	}
	ctl := "+" + strings.Join(want, " +")
	if err := os.WriteFile(filepath.Join(ownDir, "cgroup.subtree_control"), []byte(ctl), 0); err != nil {
		return "", fmt.Errorf("enable %s in %s: %w", ctl, ownDir, err)
	}
	return ownDir, nil
}

// moveAllInto moves every process of cgroup dir into leaf (created if
// needed). Processes that exit meanwhile are skipped; it repeats until dir
// is empty, since a process may fork while it runs.
func moveAllInto(dir, leaf string) error {
	if err := os.Mkdir(leaf, 0o755); err != nil && !errors.Is(err, os.ErrExist) { //nolint:gosec // cgroup directories are readable by all, as the rest of /sys/fs/cgroup; only root writes
		return fmt.Errorf("create the agent's leaf cgroup %s: %w", leaf, err)
	}
	for range 10 {
		raw, err := os.ReadFile(filepath.Join(dir, "cgroup.procs")) //nolint:gosec // the agent's own cgroup from /proc/self/cgroup
		if err != nil {
			return err
		}
		pids := strings.Fields(string(raw))
		if len(pids) == 0 {
			return nil
		}
		for _, p := range pids {
			err := os.WriteFile(filepath.Join(leaf, "cgroup.procs"), []byte(p), 0) //nolint:gosec // the agent's own cgroup from /proc/self/cgroup
			if err != nil && !errors.Is(err, syscall.ESRCH) {
				return fmt.Errorf("move pid %s from %s into %s: %w", p, dir, leaf, err)
			}
		}
	}
	return fmt.Errorf("processes keep appearing in %s; cannot empty it", dir)
}

func wantedV2(cpu, mem bool) []string {
	var out []string
	if cpu {
		out = append(out, "cpu")
	}
	if mem {
		out = append(out, "memory")
	}
	return out
}

func (l *limiter) describe() string {
	if l.v2 {
		return "v2 " + l.v2Dir
	}
	return strings.TrimSpace("v1 " + l.memDir + " " + l.cpuDir)
}

// probe creates, limits and removes a throwaway group, so that a host that
// does not allow it is found at start, not at the first clone.
func (l *limiter) probe() error {
	name := fmt.Sprintf("probe-%d", os.Getpid())
	defer l.remove(name)
	if _, err := l.create(name); err != nil {
		return err
	}
	return nil
}

// create makes the clone's groups with limits and returns their dirs.
func (l *limiter) create(name string) ([]string, error) {
	const period = 100000
	quota := strconv.Itoa(int(l.cpu * period))
	type group struct {
		parent string
		files  map[string]string
	}
	var groups []group
	switch {
	case l.v2:
		files := map[string]string{}
		if l.mem > 0 {
			files["memory.max"] = strconv.FormatUint(l.mem, 10)
		}
		if l.cpu > 0 {
			files["cpu.max"] = quota + " " + strconv.Itoa(period)
		}
		groups = append(groups, group{l.v2Dir, files})
	default:
		if l.memDir != "" {
			groups = append(groups, group{l.memDir, map[string]string{"memory.limit_in_bytes": strconv.FormatUint(l.mem, 10)}})
		}
		if l.cpuDir != "" {
			groups = append(groups, group{l.cpuDir, map[string]string{"cpu.cfs_period_us": strconv.Itoa(period), "cpu.cfs_quota_us": quota}})
		}
	}
	var dirs []string
	for _, g := range groups {
		dir := filepath.Join(g.parent, name)
		var err error
		// Another clone's removal may take the empty parent away (and
		// a creation bring it back without its controllers yet) at any
		// point: start over when something is missing.
		for range 5 {
			if err = l.mkGroup(g.parent, dir, g.files); !errors.Is(err, os.ErrNotExist) {
				break
			}
		}
		if err != nil {
			removeCgroups(dirs)
			return nil, err
		}
		dirs = append(dirs, dir)
	}
	return dirs, nil
}

// mkGroup creates dir below parent with the limit files set.
func (l *limiter) mkGroup(parent, dir string, files map[string]string) error {
	if err := os.MkdirAll(parent, 0o755); err != nil { //nolint:gosec // cgroup directories are readable by all, as the rest of /sys/fs/cgroup; only root writes
		return fmt.Errorf("create cgroup %s: %w", parent, err)
	}
	if l.v2 {
		// Children of parent need the controllers enabled in it.
		ctl := "+" + strings.Join(wantedV2(l.cpu > 0, l.mem > 0), " +")
		if err := os.WriteFile(filepath.Join(parent, "cgroup.subtree_control"), []byte(ctl), 0); err != nil {
			return fmt.Errorf("enable %s in %s: %w", ctl, parent, err)
		}
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) { //nolint:gosec // cgroup directories are readable by all, as the rest of /sys/fs/cgroup; only root writes
		return fmt.Errorf("create cgroup %s: %w", dir, err)
	}
	for _, f := range slices.Sorted(maps.Keys(files)) {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(files[f]), 0); err != nil {
			return fmt.Errorf("set %s/%s = %s: %w", dir, f, files[f], err)
		}
	}
	return nil
}

// attach moves the postmaster, then its existing children, into the
// clone's groups; later children inherit the postmaster's groups. The
// children are listed after the postmaster moved, so that none forked in
// between is left behind.
func (l *limiter) attach(name string, pid int) error {
	if pid <= 0 {
		return fmt.Errorf("no postmaster pid to put into cgroup %s", name)
	}
	dirs, err := l.create(name)
	if err != nil {
		return err
	}
	move := func(p int) error {
		for _, dir := range dirs {
			if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(p)), 0); err != nil && processAlive(p) {
				return fmt.Errorf("move pid %d into %s: %w", p, dir, err)
			}
		}
		return nil
	}
	if err := move(pid); err != nil {
		return err
	}
	for _, p := range descendants(pid) {
		if err := move(p); err != nil {
			return err
		}
	}
	return nil
}

func (l *limiter) remove(name string) {
	var dirs []string
	for _, p := range []string{l.v2Dir, l.memDir, l.cpuDir} {
		if p != "" {
			dirs = append(dirs, filepath.Join(p, name))
		}
	}
	removeCgroups(dirs)
}

// cgroupsOf returns the directories of pid's Thinlab cgroups (those named
// name below a "thinlab" group; any name when name is empty), found from
// the process itself so that groups made by an earlier agent process in a
// different cgroup are found too.
func cgroupsOf(pid int, name string) []string {
	if pid <= 0 {
		return nil
	}
	paths, err := procCgroups(strconv.Itoa(pid))
	if err != nil {
		return nil
	}
	mounts, err := readCgroupMounts()
	if err != nil {
		return nil
	}
	seen := map[string]bool{}
	var dirs []string
	for ctrl, path := range paths {
		if filepath.Base(filepath.Dir(path)) != cgroupGroup || (name != "" && filepath.Base(path) != name) {
			continue
		}
		for _, m := range mounts {
			if (ctrl == "" && m.v2) || (ctrl != "" && !m.v2 && hasOption(m, ctrl)) {
				d := m.dirFor(path)
				if !seen[d] {
					seen[d] = true
					dirs = append(dirs, d)
				}
			}
		}
	}
	return dirs
}

// removeCgroups removes empty cgroup directories, waiting briefly for
// exiting processes to leave them, and the "thinlab" parent once it is
// empty (rmdir refuses while other clones' groups are in it).
func removeCgroups(dirs []string) {
	for _, d := range dirs {
		for range 50 {
			err := os.Remove(d)
			if err == nil || errors.Is(err, os.ErrNotExist) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if parent := filepath.Dir(d); filepath.Base(parent) == cgroupGroup {
			_ = os.Remove(parent) // fails while another clone's group is in it; the last one removes it
		}
	}
}

// descendants lists the pids whose parent chain leads to pid.
func descendants(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(raw)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(fields[1])
		children[ppid] = append(children[ppid], p)
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}
