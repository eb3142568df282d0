package clone_test

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"testing"

	"github.com/thinlab/thinlab/agent/clone"
)

// TestRestoreRebuildsOnOwnPorts restores, on a real pool, a state in
// which several clones were interrupted in CREATING without a port or OS
// uid and with half-made datasets: each must be rebuilt on a port of its
// own and work. (TestRestoreAllocatesPortsUnderLock is the -race check of
// the same path.)
func TestRestoreRebuildsOnOwnPorts(t *testing.T) {
	const n = 3
	e := newEnv(t, n+2)
	m1 := e.manager()
	keep := e.create(m1, e.req("keep"))
	if err := m1.Close(); err != nil {
		t.Fatal(err)
	}

	statePath := filepath.Join(e.cfg.StateDir, clone.StateFile)
	raw, err := os.ReadFile(statePath)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	recs := doc["clones"].([]any)
	var tmpl map[string]any
	for _, x := range recs {
		rec := x.(map[string]any)
		if rec["id"] == "keep" {
			tmpl = rec
		}
	}
	if tmpl == nil {
		t.Fatalf("state file has no record of clone keep: %s", raw)
	}
	for i := range n {
		id := fmt.Sprintf("rebuild%d", i)
		rec := map[string]any{}
		maps.Copy(rec, tmpl)
		rec["id"] = id
		rec["status"] = "CREATING"
		rec["port"] = 0 // needs a new port
		rec["uid"] = 0  // and a new OS uid
		rec["mountpoint"] = ""
		recs = append(recs, rec)
		if _, err := e.pool.Clone(e.ctx, e.snaps[0].ID, id); err != nil { // the half-made dataset
			t.Fatal(err)
		}
	}
	doc["clones"] = recs
	raw, err = json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(statePath, raw, 0o600); err != nil {
		t.Fatal(err)
	}

	m2 := e.manager()
	defer closeManager(t, m2)
	ports := map[int]string{keep.Port: "keep"}
	for i := range n {
		id := fmt.Sprintf("rebuild%d", i)
		c := e.wait(m2, id, clone.StatusOK)
		if c.Port < e.cfg.Provision.PortPool.From || c.Port > e.cfg.Provision.PortPool.To {
			t.Errorf("clone %s got port %d, want one of provision.portPool %d-%d", id, c.Port, e.cfg.Provision.PortPool.From, e.cfg.Provision.PortPool.To)
		}
		if other, dup := ports[c.Port]; dup {
			t.Errorf("clone %s got port %d, already held by %s; want a port of its own", id, c.Port, other)
		}
		ports[c.Port] = id
		if got := e.query(c, "SELECT current_user"); got != "alice" {
			t.Errorf("clone %s: current_user is %q, want alice", id, got)
		}
	}
	for _, c := range m2.List() {
		e.destroy(m2, c.ID)
	}
	e.assertNoLeaks(m2)
}
