package runtime

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// PSSOfUID is the proportional set size (bytes) of every process running
// as uid: each process's private memory plus its share of what it shares
// (the clone's shared buffers with its own backends, binaries with every
// postgres on the host). Summed over clones it is what they cost the host.
func PSSOfUID(uid uint32) uint64 {
	var total uint64
	for _, pid := range processesOf(uid) {
		total += pssOf(pid)
	}
	return total
}

// PSSOfUIDRange is PSSOfUID summed over the uids from..to, in one pass
// over /proc (a measurement of many clones at once).
func PSSOfUIDRange(from, to uint32) uint64 {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	var total uint64
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile("/proc/" + e.Name() + "/status")
		if err != nil {
			continue
		}
		for line := range strings.SplitSeq(string(raw), "\n") {
			if v, ok := strings.CutPrefix(line, "Uid:"); ok {
				f := strings.Fields(v)
				if len(f) > 0 {
					uid, err := strconv.ParseUint(f[0], 10, 32)
					if err == nil && uint32(uid) >= from && uint32(uid) <= to {
						total += pssOf(pid)
					}
				}
				break
			}
		}
	}
	return total
}

// pssOf reads the Pss line of /proc/PID/smaps_rollup (0 when the process
// is gone).
func pssOf(pid int) uint64 {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
	if err != nil {
		return 0
	}
	defer func() { _ = f.Close() }() // read-only
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Pss:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				kb, _ := strconv.ParseUint(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

// CheckPortOwner verifies that every TCP socket listening on port (any
// address, IPv4 and IPv6) is held by process pid: the agent hands a
// client's connection to a clone's port only when the clone's verified
// postmaster holds it, never a program that bound the port first.
func CheckPortOwner(pid, port int) error {
	inodes := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		raw, err := os.ReadFile(f) //nolint:gosec // one of two fixed /proc paths
		if err != nil {
			continue // no IPv6 on the host
		}
		for i, line := range strings.Split(string(raw), "\n") {
			fs := strings.Fields(line)
			if i == 0 || len(fs) < 10 || fs[3] != "0A" { // 0A: LISTEN
				continue
			}
			_, hexPort, ok := strings.Cut(fs[1], ":")
			p, err := strconv.ParseUint(hexPort, 16, 32)
			if !ok || err != nil || int(p) != port {
				continue
			}
			inodes[fs[9]] = true
		}
	}
	if len(inodes) == 0 {
		return fmt.Errorf("nothing listens on port %d", port)
	}
	fdDir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	entries, err := os.ReadDir(fdDir)
	if err != nil {
		return fmt.Errorf("read the sockets of process %d: %w", pid, err)
	}
	for _, e := range entries {
		link, err := os.Readlink(filepath.Join(fdDir, e.Name()))
		if err != nil {
			continue
		}
		if in, ok := strings.CutPrefix(link, "socket:["); ok {
			delete(inodes, strings.TrimSuffix(in, "]"))
		}
	}
	if len(inodes) > 0 {
		return fmt.Errorf("port %d is also listened on by a process other than the postmaster %d", port, pid)
	}
	return nil
}
