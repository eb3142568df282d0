package clone_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/storage"
)

// TestManagerRefusesLimitsItCannotApply: with provision.resources set and
// no usable cgroup filesystem, the clone manager (and so the agent) does
// not start; it used to log a warning and run every clone unlimited.
func TestManagerRefusesLimitsItCannotApply(t *testing.T) {
	p := clonetest.NewPool(t)
	cfg := clonetest.Config(t, p, 2)
	cfg.Provision.Resources.CPU = "1"
	cfg.Provision.Resources.Memory = "256Mi"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(t.TempDir(), "no-cgroups")
	m, err := clone.NewManager(t.Context(), clone.Options{Config: cfg, Pools: []storage.Pool{p}, CheckInterval: -1, CgroupRoot: root})
	if err == nil {
		closeManager(t, m)
		t.Fatal("the manager started with limits configured and no cgroups to apply them")
	}
	for _, want := range []string{"provision.resources", root} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	// Refused before anything was written.
	if _, err := os.Stat(filepath.Join(cfg.StateDir, "clones.json")); !os.IsNotExist(err) {
		t.Errorf("state file written by a refused start: %v", err)
	}
}
