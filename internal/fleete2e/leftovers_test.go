package fleete2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/runtime"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/sdk/agentapi"
)

// clonesDir is where pool mounts its clone datasets (btrfs: Path/clones).
func clonesDir(t *testing.T, pool storage.Pool) string {
	t.Helper()
	p, ok := pool.(interface{ ClonesDir() string })
	if !ok {
		t.Fatalf("pool %s (%s) does not tell where its clones live: the leftover checks need a btrfs pool", pool.Name(), pool.Mode())
	}
	return filepath.Clean(p.ClonesDir())
}

// leftovers compares what the agent lists (clones, as its API answers
// them) with what exists on the host: the pool's clone datasets, the
// postgres processes and mounts in the pool's clones directory, and the
// ports. Every clone must be OK (none stuck in an operation), every
// dataset, postmaster and mount must belong to a listed clone, every
// listed clone must have its dataset and a running postgres on its port,
// and goneClonePorts (of clones that no longer exist) must be closed.
// It returns one line per problem.
func leftovers(t *testing.T, pool storage.Pool, clones []agentapi.Clone, goneClonePorts ...int) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	dir := clonesDir(t, pool)
	var problems []string
	listed := map[string]agentapi.Clone{}
	ports := map[string]string{}
	for _, c := range clones {
		listed[c.ID] = c
		if c.Status.Code != agentapi.StatusOK {
			problems = append(problems, fmt.Sprintf("clone %s is %s (%s), want OK", c.ID, c.Status.Code, c.Status.Message))
			continue
		}
		if other, dup := ports[c.DB.Port]; dup {
			problems = append(problems, fmt.Sprintf("clones %s and %s share port %s", other, c.ID, c.DB.Port))
		}
		ports[c.DB.Port] = c.ID
	}

	datasets, err := pool.Clones(ctx)
	if err != nil {
		t.Fatalf("list the clone datasets of pool %s: %v", pool.Name(), err)
	}
	has := map[string]bool{}
	for _, d := range datasets {
		if strings.Contains(d.Name, ":") {
			continue // the agent's own datasets (branch work), never clones
		}
		has[d.Name] = true
		if _, ok := listed[d.Name]; !ok {
			problems = append(problems, fmt.Sprintf("dataset %s (%s) has no clone record", d.Name, d.Mountpoint))
		}
	}
	for id := range listed {
		if !has[id] {
			problems = append(problems, fmt.Sprintf("clone %s has no dataset", id))
		}
	}

	procs, err := runtime.Postmasters()
	if err != nil {
		t.Fatalf("list postgres processes: %v", err)
	}
	running := map[string]bool{}
	for _, p := range procs {
		id, ok := cloneOf(dir, p.DataDir)
		if !ok {
			continue // not in this pool
		}
		running[id] = true
		if c, ok := listed[id]; !ok || c.Status.Code != agentapi.StatusOK {
			problems = append(problems, fmt.Sprintf("postgres pid %d in %s belongs to no ready clone", p.PID, p.DataDir))
		}
	}
	for id, c := range listed {
		if c.Status.Code != agentapi.StatusOK {
			continue
		}
		if !running[id] {
			problems = append(problems, fmt.Sprintf("clone %s is OK but no postgres runs in its data directory", id))
		}
		if !listening(c.DB.Port) {
			problems = append(problems, fmt.Sprintf("clone %s is OK but nothing accepts connections on its port %s", id, c.DB.Port))
		}
	}

	for _, m := range mountsUnder(t, dir) {
		if id, _ := cloneOf(dir, m); listed[id].ID == "" {
			problems = append(problems, fmt.Sprintf("mount %s belongs to no clone", m))
		}
	}
	for _, port := range goneClonePorts {
		p := strconv.Itoa(port)
		if _, reused := ports[p]; !reused && listening(p) {
			problems = append(problems, fmt.Sprintf("port %d of a clone that is gone still accepts connections", port))
		}
	}
	slices.Sort(problems)
	return problems
}

// checkNoLeftovers fails the test when leftovers finds anything.
func checkNoLeftovers(t *testing.T, when string, pool storage.Pool, clones []agentapi.Clone, goneClonePorts ...int) {
	t.Helper()
	if p := leftovers(t, pool, clones, goneClonePorts...); len(p) > 0 {
		t.Fatalf("%s: the host does not match the agent's clones:\n  %s", when, strings.Join(p, "\n  "))
	}
}

// cloneOf tells which clone of the clones directory dir path lies in.
func cloneOf(dir, path string) (string, bool) {
	rest, ok := strings.CutPrefix(filepath.Clean(path), dir+"/")
	if !ok {
		return "", false
	}
	id, _, _ := strings.Cut(rest, "/")
	return id, true
}

// mountsUnder lists the mount points inside dir (idmapped clone mounts).
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }() // read-only
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		// /proc/mounts escapes spaces as \040; test paths have none.
		if _, ok := cloneOf(dir, fields[1]); ok {
			out = append(out, fields[1])
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// listening reports whether something accepts TCP connections on the
// loopback port.
func listening(port string) bool {
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", port), 2*time.Second)
	if err != nil {
		return false
	}
	_ = c.Close() // only the accept mattered
	return true
}

// stateRecord is what the agent's state file (clone.StateFile) says of
// one clone: read as it is on disk, the way a restarted agent reads it.
type stateRecord struct {
	ID     string `json:"id"`
	Status string `json:"status"`
	Port   int    `json:"port"`
}

// cloneState reads the agent's clone state file in stateDir.
func cloneState(t *testing.T, stateDir string) map[string]stateRecord {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(stateDir, clone.StateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Clones []stateRecord `json:"clones"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("the agent's state file: %v\n%s", err, raw)
	}
	out := map[string]stateRecord{}
	for _, r := range doc.Clones {
		out[r.ID] = r
	}
	return out
}
