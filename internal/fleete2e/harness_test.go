package fleete2e

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent"
	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/logtest"
	"github.com/thinlab/thinlab/internal/testenv"
)

// clonePassword is the clones' user password (strong enough for the
// agent's entropy check).
const clonePassword = "Vx9-kq2!Lm7#pz4Rw8"

// runningAgent is one in-process agent on a btrfs loop pool.
type runningAgent struct {
	agent  *agent.Agent
	cfg    *config.Config
	pool   storage.Pool
	logs   *logtest.Buffer
	cancel context.CancelFunc
	done   chan error
}

// startAgent runs a real agent whose pool holds one snapshot of a small
// database (table t with one row), enrolling into the platform at
// platformURL with enrollToken.
func startAgent(t testing.TB, platformURL, enrollToken, name string) *runningAgent {
	t.Helper()
	return startAgentWith(t, platformURL, enrollToken, name, nil)
}

// startAgentReporting is startAgent with usage samples every reportEvery
// (the agent's default when 0).
func startAgentReporting(t testing.TB, platformURL, enrollToken, name string, reportEvery time.Duration) *runningAgent {
	t.Helper()
	return startAgentWith(t, platformURL, enrollToken, name, func(o *agent.Options) { o.ReportInterval = reportEvery })
}

// startAgentWith is startAgent with the agent's options changed by opt.
func startAgentWith(t testing.TB, platformURL, enrollToken, name string, opt func(*agent.Options)) *runningAgent {
	t.Helper()
	testenv.NeedsRoot(t, "root, for loop devices, mounts and the postgres OS user")
	pool := clonetest.NewPool(t)
	t.Cleanup(func() { clonetest.KillClones(pool) })
	clonetest.Fill(t, pool, "CREATE TABLE t (v text)", "INSERT INTO t VALUES ('through the platform')")
	cfg := clonetest.Config(t, pool, 4)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Server.Port = l.Addr().(*net.TCPAddr).Port
	_ = l.Close() // the agent listens on it next
	cfg.Platform = config.Platform{URL: platformURL, EnrollToken: enrollToken, Name: name}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ra := &runningAgent{cfg: cfg, pool: pool, logs: &logtest.Buffer{}, done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background()) // ended at cleanup
	ra.cancel = cancel
	o := agent.Options{Config: cfg, Pools: []storage.Pool{pool}, Logger: ra.logs.Logger(), Version: "e2e"}
	if opt != nil {
		opt(&o)
	}
	a, err := agent.NewWithOptions(ctx, o)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	ra.agent = a
	go func() { ra.done <- a.Run(ctx) }()
	t.Cleanup(func() {
		ra.stop(t)
		if t.Failed() {
			t.Logf("agent log:\n%s", tail(ra.logs.String(), 6000))
		}
	})
	return ra
}

// stop ends the agent (idempotent); its clones are killed by the pool's
// cleanup.
func (ra *runningAgent) stop(t testing.TB) {
	if ra.cancel == nil {
		return
	}
	ra.cancel()
	ra.cancel = nil
	select {
	case err := <-ra.done:
		if err != nil {
			t.Errorf("agent.Run: %v", err)
		}
	case <-time.After(2 * time.Minute):
		t.Errorf("the agent did not stop within 2 minutes")
	}
}

// waitFor polls cond until it holds; the bound only keeps a broken test
// from hanging (no timing is asserted).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

func contains(s string, subs ...string) bool {
	for _, x := range subs {
		if !strings.Contains(s, x) {
			return false
		}
	}
	return true
}
