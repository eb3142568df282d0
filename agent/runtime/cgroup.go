package runtime

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
	defer f.Close()
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
	raw, err := os.ReadFile(filepath.Join("/proc", pid, "cgroup"))
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[1] == "" {
			out[""] = parts[2]
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			out[c] = parts[2]
		}
	}
	return out, nil
}

func hasOption(m cgroupMount, c string) bool {
	for _, o := range m.options {
		if o == c {
			return true
		}
	}
	return false
}

// dirFor turns a hierarchy path into a directory under the mount.
func (m cgroupMount) dirFor(path string) string {
	rel := path
	if m.root != "/" {
		rel = strings.TrimPrefix(path, m.root)
	}
	return filepath.Join(m.mountpoint, rel)
}

func newLimiter(cpu float64, mem uint64) (*limiter, error) {
	mounts, err := readCgroupMounts()
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
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
	if (needMem && memMount != nil) || (needCPU && cpuMount != nil) {
		// cgroup v1 (or hybrid): the controllers have their own hierarchies.
		if needMem {
			if memMount == nil {
				return nil, errors.New("cgroup v1 memory controller is not mounted")
			}
			l.memDir = filepath.Join(memMount.dirFor(own["memory"]), cgroupGroup)
		}
		if needCPU {
			if cpuMount == nil {
				return nil, errors.New("cgroup v1 cpu controller is not mounted")
			}
			l.cpuDir = filepath.Join(cpuMount.dirFor(own["cpu"]), cgroupGroup)
		}
	} else if v2Mount != nil {
		l.v2 = true
		ownDir := v2Mount.dirFor(own[""])
		ctrl, err := os.ReadFile(filepath.Join(ownDir, "cgroup.controllers"))
		if err != nil {
			return nil, fmt.Errorf("cgroup v2: %w", err)
		}
		for _, c := range wantedV2(needCPU, needMem) {
			if !contains(strings.Fields(string(ctrl)), c) {
				return nil, fmt.Errorf("cgroup v2: controller %s is not delegated to %s (run the agent with systemd Delegate=yes)", c, ownDir)
			}
		}
		l.v2Dir = filepath.Join(ownDir, cgroupGroup)
	} else {
		return nil, errors.New("no cgroup filesystem is mounted")
	}
	if err := l.probe(); err != nil {
		return nil, err
	}
	return l, nil
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
	var dirs []string
	mk := func(parent string, files map[string]string) error {
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return fmt.Errorf("create cgroup %s: %w", parent, err)
		}
		if l.v2 {
			// Children of parent need the controllers enabled in it.
			ctl := "+" + strings.Join(wantedV2(l.cpu > 0, l.mem > 0), " +")
			if err := os.WriteFile(filepath.Join(parent, "cgroup.subtree_control"), []byte(ctl), 0); err != nil {
				return fmt.Errorf("enable %s in %s: %w", ctl, parent, err)
			}
		}
		dir := filepath.Join(parent, name)
		err := os.Mkdir(dir, 0o755)
		if errors.Is(err, os.ErrNotExist) {
			// Another clone's removal took the empty parent away meanwhile.
			if err = os.MkdirAll(parent, 0o755); err == nil {
				err = os.Mkdir(dir, 0o755)
			}
		}
		if err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("create cgroup %s: %w", dir, err)
		}
		dirs = append(dirs, dir)
		for f, v := range files {
			if err := os.WriteFile(filepath.Join(dir, f), []byte(v), 0); err != nil {
				return fmt.Errorf("set %s/%s = %s: %w", dir, f, v, err)
			}
		}
		return nil
	}
	const period = 100000
	quota := strconv.Itoa(int(l.cpu * period))
	var err error
	switch {
	case l.v2:
		files := map[string]string{}
		if l.mem > 0 {
			files["memory.max"] = strconv.FormatUint(l.mem, 10)
		}
		if l.cpu > 0 {
			files["cpu.max"] = quota + " " + strconv.Itoa(period)
		}
		err = mk(l.v2Dir, files)
	default:
		if l.memDir != "" {
			err = mk(l.memDir, map[string]string{"memory.limit_in_bytes": strconv.FormatUint(l.mem, 10)})
		}
		if err == nil && l.cpuDir != "" {
			err = mk(l.cpuDir, map[string]string{"cpu.cfs_period_us": strconv.Itoa(period), "cpu.cfs_quota_us": quota})
		}
	}
	if err != nil {
		removeCgroups(dirs)
		return nil, err
	}
	return dirs, nil
}

// attach moves the postmaster and its existing children into the clone's
// groups; later backends inherit the postmaster's groups.
func (l *limiter) attach(name string, pid int) error {
	dirs, err := l.create(name)
	if err != nil {
		return err
	}
	pids := append([]int{pid}, descendants(pid)...)
	for _, dir := range dirs {
		for _, p := range pids {
			if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(p)), 0); err != nil && processAlive(p) {
				return fmt.Errorf("move pid %d into %s: %w", p, dir, err)
			}
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
		for i := 0; i < 50; i++ {
			err := os.Remove(d)
			if err == nil || errors.Is(err, os.ErrNotExist) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if parent := filepath.Dir(d); filepath.Base(parent) == cgroupGroup {
			os.Remove(parent)
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

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
