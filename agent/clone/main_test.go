package clone_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/btrfs"
)

// hibernateChildEnv, when set, makes the test binary act as an agent that
// hibernates one clone and then waits to be killed (see TestMain).
const hibernateChildEnv = "THINLAB_TEST_HIBERNATE_CHILD"

// hibernateChild is what the child agent needs, as JSON in one variable.
type hibernateChild struct {
	Config          *config.Config
	Path, Clones    string
	PoolName, Clone string
}

func TestMain(m *testing.M) {
	if spec := os.Getenv(hibernateChildEnv); spec != "" {
		os.Exit(runHibernateChild(spec))
	}
	os.Exit(m.Run())
}

// runHibernateChild opens the pool, restores the clones, hibernates one,
// says so on stdout and waits (for the parent's SIGKILL).
func runHibernateChild(spec string) int {
	var c hibernateChild
	if err := json.Unmarshal([]byte(spec), &c); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	ctx := context.Background()
	p, err := btrfs.Open(ctx, btrfs.Config{Name: c.PoolName, Path: c.Path, ClonesDir: c.Clones})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: open pool:", err)
		return 2
	}
	m, err := clone.NewManager(ctx, clone.Options{Config: c.Config, Pools: []storage.Pool{p}, CheckInterval: -1, WarmInterval: -1})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: manager:", err)
		return 2
	}
	if err := m.Hibernate(ctx, c.Clone); err != nil {
		fmt.Fprintln(os.Stderr, "child: hibernate:", err)
		return 1
	}
	fmt.Println("hibernated")
	time.Sleep(10 * time.Minute)
	return 3
}
