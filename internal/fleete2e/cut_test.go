package fleete2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent"
	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/runtime"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/logtest"
	"github.com/thinlab/thinlab/internal/testenv"
	"github.com/thinlab/thinlab/platform/hub"
	"github.com/thinlab/thinlab/platform/platformtest"
	"github.com/thinlab/thinlab/platform/server"
	"github.com/thinlab/thinlab/sdk/agentapi"
)

// createLine is the request line of a clone create as the agent
// receives it through the engine proxy.
var createLine = []byte("POST /clone HTTP/1.1\r\n")

// tunnelCutter stands between agents and the platform (their
// platform.url points at it) and passes bytes through, until it is armed:
// then, on the first request line of a clone create it sees going to the
// agent, it still delivers the request but drops everything the agent
// sends back on that connection, so the create is made on the agent and
// its answer never arrives; cut closes the connection. Later connections
// (the agent reconnecting) pass through again. The tunnel is plain http
// on loopback, so the request line is visible in the websocket frames.
type tunnelCutter struct {
	l      net.Listener
	target string

	mu        sync.Mutex
	conns     map[net.Conn]struct{}
	armed     bool
	triggered chan struct{} // closed when the armed cut saw the create
	wg        sync.WaitGroup
}

func startCutter(t *testing.T, target string) *tunnelCutter {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tc := &tunnelCutter{l: l, target: target, conns: map[net.Conn]struct{}{}}
	t.Cleanup(func() {
		_ = l.Close() // stops the accept loop
		tc.cut()
		tc.wg.Wait()
	})
	tc.wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			tc.wg.Go(func() { tc.forward(c) })
		}
	})
	return tc
}

func (tc *tunnelCutter) URL() string { return "http://" + tc.l.Addr().String() }

// arm makes the next clone create request the one cut; the returned
// channel is closed when it has been seen.
func (tc *tunnelCutter) arm() <-chan struct{} {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	tc.armed = true
	tc.triggered = make(chan struct{})
	return tc.triggered
}

// cut closes every connection passing through now.
func (tc *tunnelCutter) cut() {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	for c := range tc.conns {
		_ = c.Close() // the point is to break it
	}
}

func (tc *tunnelCutter) track(c net.Conn, on bool) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if on {
		tc.conns[c] = struct{}{}
	} else {
		delete(tc.conns, c)
	}
}

// fire reports whether this connection's data holds the armed create,
// disarming it.
func (tc *tunnelCutter) fire(window []byte) bool {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if !tc.armed || !bytes.Contains(window, createLine) {
		return false
	}
	tc.armed = false
	close(tc.triggered)
	return true
}

func (tc *tunnelCutter) forward(agentSide net.Conn) {
	tc.track(agentSide, true)
	defer tc.track(agentSide, false)
	defer func() { _ = agentSide.Close() }()
	platformSide, err := net.DialTimeout("tcp", tc.target, 5*time.Second)
	if err != nil {
		return // the agent sees a closed connection and tries again
	}
	tc.track(platformSide, true)
	defer tc.track(platformSide, false)
	defer func() { _ = platformSide.Close() }()
	var dropAnswers atomic.Bool
	var wg sync.WaitGroup
	// The agent's side: its answers, dropped once the create was seen.
	wg.Go(func() {
		defer func() { _ = platformSide.Close() }()
		buf := make([]byte, 32<<10)
		for {
			n, err := agentSide.Read(buf)
			if n > 0 && !dropAnswers.Load() {
				if _, werr := platformSide.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	})
	// The platform's side: requests, looked at for the create (with the
	// end of the previous read, for a line split across reads).
	buf := make([]byte, 32<<10)
	var tail []byte
	for {
		n, err := platformSide.Read(buf)
		if n > 0 {
			window := slices.Concat(tail, buf[:n])
			if tc.fire(window) {
				dropAnswers.Store(true)
			}
			tail = append([]byte(nil), window[max(0, len(window)-len(createLine)):]...)
			if _, werr := agentSide.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	_ = agentSide.Close()
	wg.Wait()
}

// agentChild is a real agent in its own process (this test binary run
// with agentChildEnv), so that it can be killed with SIGKILL.
type agentChild struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *logtest.Buffer
	done  chan struct{}
}

// startAgentChild runs an agent from the JSON configuration at cfgPath.
// Cleanup kills it by its PID.
func startAgentChild(t *testing.T, cfgPath string) *agentChild {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$") //nolint:gosec // G702: os.Args[0] is this test binary, run again as the agent
	cmd.Env = append(os.Environ(), agentChildEnv+"="+cfgPath)
	// Should a process the agent started keep its output pipe open, Wait
	// still returns once the agent itself is gone.
	cmd.WaitDelay = 10 * time.Second
	c := &agentChild{cmd: cmd, out: &logtest.Buffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = c.out, c.out
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	c.stdin = stdin
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = cmd.Wait() // killed or ended; the test looks at what it left
		close(c.done)
	}()
	t.Cleanup(func() {
		c.kill()
		if t.Failed() {
			t.Logf("agent process %d output:\n%s", cmd.Process.Pid, tail(c.out.String(), 8000))
		}
	})
	return c
}

// kill sends SIGKILL and waits until the process is gone.
func (c *agentChild) kill() {
	select {
	case <-c.done:
		return
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGKILL) // it may have just exited; done tells
	<-c.done
	_ = c.stdin.Close() // its reader is dead
}

// stop asks the agent to shut down gracefully (its context ends, as on
// SIGTERM) and waits for it.
func (c *agentChild) stop(t *testing.T) {
	t.Helper()
	_ = c.stdin.Close() // the child ends its context on EOF
	select {
	case <-c.done:
	case <-time.After(3 * time.Minute):
		t.Fatalf("the agent did not stop within 3 minutes")
	}
	if code := c.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("the agent exited with %d", code)
	}
}

// runAgentChild is the agent process: agent.New from the configuration
// file (opening its pools as a restarted agent does) and Run until stdin
// closes or SIGTERM.
func runAgentChild(path string) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	raw, err := os.ReadFile(path)
	if err != nil {
		log.Error("agent child", "err", err)
		return 2
	}
	var cfg config.Config
	if err := json.Unmarshal(raw, &cfg); err != nil {
		log.Error("agent child: configuration", "err", err)
		return 2
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer cancel()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	a, err := agent.NewWithOptions(ctx, agent.Options{Config: &cfg, Logger: log, Version: "e2e"})
	if err != nil {
		log.Error("agent child: start", "err", err)
		return 1
	}
	if err := a.Run(ctx); err != nil {
		log.Error("agent child: run", "err", err)
		return 1
	}
	return 0
}

// pollFast is waitFor for short windows: the cut must land while the
// agent is still building the clone.
func pollFast(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestCreateCutMidwayLeavesNoHalfMadeClone: clone creates through the
// platform's engine proxy, each cut in the middle, on a real agent (its
// own process, real btrfs pool and PostgreSQL) enrolled into a real
// platform:
//
//   - the tunnel breaks after the agent took the create and before its
//     answer reached the platform (the caller gets an error, not 201);
//   - the platform drops the tunnel right after the create's 201, with
//     the clone still being built;
//   - the agent is killed with SIGKILL once the clone's dataset exists;
//   - the agent is killed with SIGKILL while the clone's PostgreSQL is
//     starting;
//   - the agent is stopped gracefully (its context ends) while the clone
//     is being created.
//
// After each, once the agent is back (reconnected, or restarted on the
// same state directory), the clone ends OK and answers, and the host
// matches the agent's clone list exactly: no dataset, postgres process,
// mount or open port without a clone record, no clone stuck in CREATING.
// At the end every clone is destroyed through the platform and nothing
// is left.
func TestCreateCutMidwayLeavesNoHalfMadeClone(t *testing.T) {
	testenv.NeedsRoot(t, "root, for loop devices, mounts and the postgres OS user")
	env := platformtest.New(t, platformtest.WithConfig(func(c *server.Config) { c.Tunnel.HeartbeatInterval = 200 * time.Millisecond }))
	ctx := t.Context()
	owner := env.User("owner@acme.example")
	org := env.Org("acme", owner)
	tok := env.Token(org, owner)
	_, secret, err := env.Store.CreateEnrollmentToken(ctx, org.ID, owner.ID, "hosts", time.Now().Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	cutter := startCutter(t, env.HTTP.Listener.Addr().String())

	pool := clonetest.NewPool(t)
	t.Cleanup(func() { clonetest.KillClones(pool) }) // after the agent process is killed (registered later)
	clonetest.Fill(t, pool, "CREATE TABLE t (v text)", "INSERT INTO t VALUES ('through the platform')")
	dir := clonesDir(t, pool)
	cfg := clonetest.Config(t, pool, 8)
	// The agent process opens the pool itself, from the mountpoint of
	// the btrfs filesystem, as the agent binary does.
	cfg.Pools[0].Path = filepath.Dir(pool.MainDir())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Server.Port = l.Addr().(*net.TCPAddr).Port
	_ = l.Close() // the agent listens on it next
	cfg.Platform = config.Platform{URL: cutter.URL(), EnrollToken: secret, Name: "cut-db"}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(t.TempDir(), "agent.json")
	if err := os.WriteFile(cfgPath, raw, 0o600); err != nil {
		t.Fatal(err)
	}

	h := env.Server.Hub()
	proc := startAgentChild(t, cfgPath)
	var agentID string
	waitFor(t, "the agent to enroll and connect", func() bool {
		agents, err := env.Store.ListAgents(ctx, org.ID)
		if err != nil || len(agents) != 1 || !agents[0].Connected() {
			return false
		}
		agentID = agents[0].ID
		_, _, ok := h.Connected(agentID)
		return ok
	})
	c := engineClient(env, "acme", agentID, tok)
	create := func(id string) (*agentapi.Clone, error) {
		return c.CreateClone(ctx, agentapi.CreateCloneRequest{ID: id, DB: &agentapi.DatabaseRequest{Username: "dev", Password: clonePassword}})
	}
	// settled waits until the agent is back on the platform after since
	// and clone id has left CREATING, then checks the clone and the host.
	settled := func(when, id string, since time.Time) {
		t.Helper()
		waitReconnected(t, h, agentID, since)
		waitFor(t, "clone "+id+" to finish or go after "+when, func() bool {
			cl, err := c.Clone(ctx, id)
			return agentapi.IsNotFound(err) || (err == nil && cl.Status.Code != agentapi.StatusCreating)
		})
		clones, err := c.Clones(ctx)
		if err != nil {
			t.Fatalf("list the clones after %s: %v", when, err)
		}
		checkNoLeftovers(t, "after "+when, pool, clones)
		for _, cl := range clones {
			if v := queryClone(t, "host=127.0.0.1 port="+cl.DB.Port+" user=dev dbname=postgres", "SELECT v FROM t"); v != "through the platform" {
				t.Fatalf("clone %s answers %q after %s", cl.ID, v, when)
			}
		}
	}

	// 1. The tunnel breaks with the create on the agent and its answer
	// on the way back.
	seen := cutter.arm()
	answer := make(chan error, 1)
	go func() {
		_, err := create("cut-tunnel")
		answer <- err
	}()
	select {
	case <-seen:
	case err := <-answer:
		t.Fatalf("the create was answered (%v) before the cutter saw it", err)
	case <-time.After(2 * time.Minute):
		t.Fatal("the cutter never saw the create")
	}
	waitFor(t, "the agent to record cut-tunnel", func() bool {
		_, ok := cloneState(t, cfg.StateDir)["cut-tunnel"]
		return ok
	})
	cutAt := time.Now()
	cutter.cut()
	if err := <-answer; err == nil {
		t.Fatal("the create succeeded for the caller although the agent's answer never reached the platform")
	}
	settled("the tunnel was cut during the create", "cut-tunnel", cutAt)

	// 1b. The platform drops the tunnel right after the 201, with the
	// clone still being built.
	if _, err := create("cut-after-201"); err != nil {
		t.Fatalf("create cut-after-201: %v", err)
	}
	h.Disconnect(agentID)
	droppedAt := time.Now()
	if st := cloneState(t, cfg.StateDir)["cut-after-201"]; st.Status != string(agentapi.StatusCreating) {
		t.Logf("cut-after-201 was already %s when the tunnel was dropped", st.Status) // a fast build; the checks below hold either way
	}
	settled("the tunnel was dropped after the create's answer", "cut-after-201", droppedAt)

	// 2. SIGKILL once the clone's dataset exists.
	if _, err := create("cut-dataset"); err != nil {
		t.Fatalf("create cut-dataset: %v", err)
	}
	pollFast(t, "cut-dataset's dataset", func() bool {
		_, err := os.Stat(filepath.Join(dir, "cut-dataset", storage.DataSubdir))
		return err == nil
	})
	proc.kill()
	killedAt := time.Now()
	if st := cloneState(t, cfg.StateDir)["cut-dataset"]; st.Status != string(agentapi.StatusCreating) {
		t.Fatalf("the agent was killed with cut-dataset %q, want it killed mid-create (CREATING)", st.Status)
	}
	proc = startAgentChild(t, cfgPath)
	settled("a SIGKILL with the dataset made", "cut-dataset", killedAt)

	// 3. SIGKILL while the clone's PostgreSQL is starting.
	if _, err := create("cut-postgres"); err != nil {
		t.Fatalf("create cut-postgres: %v", err)
	}
	dataDir := filepath.Join(dir, "cut-postgres", storage.DataSubdir)
	pollFast(t, "cut-postgres's postgres", func() bool {
		procs, _ := runtime.Postmasters() // an unreadable /proc shows up as the wait giving up
		for _, p := range procs {
			if filepath.Clean(p.DataDir) == dataDir {
				return true
			}
		}
		return false
	})
	proc.kill()
	killedAt = time.Now()
	if st := cloneState(t, cfg.StateDir)["cut-postgres"]; st.Status != string(agentapi.StatusCreating) {
		t.Fatalf("the agent was killed with cut-postgres %q, want it killed mid-create (CREATING)", st.Status)
	}
	proc = startAgentChild(t, cfgPath)
	settled("a SIGKILL with postgres starting", "cut-postgres", killedAt)

	// 4. A graceful stop in the middle of a create: the agent finishes
	// it before it exits.
	if _, err := create("cut-stop"); err != nil {
		t.Fatalf("create cut-stop: %v", err)
	}
	if st := cloneState(t, cfg.StateDir)["cut-stop"]; st.Status != string(agentapi.StatusCreating) {
		t.Fatalf("cut-stop is %q before the stop, want CREATING", st.Status)
	}
	proc.stop(t)
	stoppedAt := time.Now()
	if st := cloneState(t, cfg.StateDir)["cut-stop"]; st.Status != string(agentapi.StatusOK) {
		t.Errorf("after a graceful stop the state file says cut-stop is %q, want OK (the running create finishes)", st.Status)
	}
	proc = startAgentChild(t, cfgPath)
	settled("a graceful stop during the create", "cut-stop", stoppedAt)

	// Everything destroyed through the platform: nothing is left, and
	// the ports are closed.
	var ports []int
	for id, st := range cloneState(t, cfg.StateDir) {
		if err := c.DestroyClone(ctx, id); err != nil {
			t.Fatalf("destroy %s: %v", id, err)
		}
		if err := c.WaitCloneDestroyed(ctx, id); err != nil {
			t.Fatalf("clone %s not destroyed: %v", id, err)
		}
		ports = append(ports, st.Port)
	}
	if len(ports) != 5 {
		t.Errorf("the agent had %d clones at the end, want the 5 made", len(ports))
	}
	checkNoLeftovers(t, "after destroying every clone", pool, nil, ports...)
	// The platform heard of each clone's readiness and end exactly once,
	// the cuts notwithstanding (the agent's event journal survives them).
	var counts map[string]int
	ok := false
	deadline := time.Now().Add(90 * time.Second)
	for !ok && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		evs, err := env.Store.ListAgentEvents(ctx, org.ID, agentID, 1000)
		if err != nil {
			t.Fatal(err)
		}
		counts = map[string]int{}
		for _, e := range evs {
			if e.Kind == "clone.ready" || e.Kind == "clone.destroyed" {
				counts[e.CloneID+" "+e.Kind]++
			}
		}
		ok = len(counts) == 2*len(ports)
		for _, n := range counts {
			ok = ok && n == 1
		}
	}
	if !ok {
		t.Errorf("clone events on the platform %v, want clone.ready and clone.destroyed once for each of the %d clones", counts, len(ports))
	}
	proc.stop(t)
	if st := cloneState(t, cfg.StateDir); len(st) != 0 {
		t.Errorf("the agent's state file still lists clones: %+v", st)
	}
}

// waitReconnected waits until the hub holds a session of the agent that
// started after since.
func waitReconnected(t *testing.T, h *hub.Hub, agentID string, since time.Time) {
	t.Helper()
	waitFor(t, "the agent to connect again", func() bool {
		at, _, ok := h.Connected(agentID)
		return ok && at.After(since)
	})
}
