package tunnele2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/agent/events"
	agenttunnel "github.com/thinlab/thinlab/agent/tunnel"
	"github.com/thinlab/thinlab/internal/logtest"
	"github.com/thinlab/thinlab/internal/pgtest"
	"github.com/thinlab/thinlab/internal/tlstest"
	"github.com/thinlab/thinlab/platform/hub"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

// balancer stands for the load balancer in front of several platform
// replicas: each new connection goes to the first backend that accepts
// it, so when the replica holding a tunnel is gone the agent's next dial
// lands on another one. Bytes are copied as they are; TLS ends at the
// replica.
type balancer struct {
	l        net.Listener
	backends []string

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func startBalancer(t *testing.T, backends ...string) *balancer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lb := &balancer{l: l, backends: backends, conns: map[net.Conn]struct{}{}}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		_ = l.Close()
		lb.mu.Lock()
		for c := range lb.conns {
			_ = c.Close()
		}
		lb.mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { lb.forward(c) })
		}
	})
	return lb
}

func (lb *balancer) URL() string { return "https://" + lb.l.Addr().String() }

func (lb *balancer) track(c net.Conn, on bool) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	if on {
		lb.conns[c] = struct{}{}
	} else {
		delete(lb.conns, c)
	}
}

func (lb *balancer) forward(c net.Conn) {
	lb.track(c, true)
	defer lb.track(c, false)
	defer func() { _ = c.Close() }()
	var up net.Conn
	for _, b := range lb.backends {
		var err error
		if up, err = net.DialTimeout("tcp", b, time.Second); err == nil {
			break
		}
	}
	if up == nil {
		return // no live backend: the client sees a closed connection
	}
	lb.track(up, true)
	defer lb.track(up, false)
	defer func() { _ = up.Close() }()
	var wg sync.WaitGroup
	wg.Go(func() {
		_, _ = io.Copy(up, c)
		_ = up.(*net.TCPConn).CloseWrite()
	})
	_, _ = io.Copy(c, up)
	_ = c.(*net.TCPConn).CloseWrite()
	wg.Wait()
}

// eventCounts is what the platform database holds of the events whose id
// starts with prefix: distinct ids and the deliveries beyond the first
// (redeliveries after a lost ack, which the database drops by id).
func (db *platformDB) eventCounts(prefix string) (distinct map[string]bool, redelivered int) {
	db.mu.Lock()
	defer db.mu.Unlock()
	distinct = map[string]bool{}
	for id, n := range db.deliveries {
		if strings.HasPrefix(id, prefix) {
			distinct[id] = true
			redelivered += n - 1
		}
	}
	return distinct, redelivered
}

func (db *platformDB) storedWithPrefix(prefix string) int {
	d, _ := db.eventCounts(prefix)
	return len(d)
}

// checkExactlyOnce fails unless the database holds exactly the ids
// want: nothing lost, nothing unknown. Redeliveries are reported: they
// are expected after an ack lost with the connection, and harmless
// because the database keeps one event per id.
func checkExactlyOnce(t *testing.T, db *platformDB, prefix string, want []string) {
	t.Helper()
	got, redelivered := db.eventCounts(prefix)
	for _, id := range want {
		if !got[id] {
			t.Errorf("event %s never reached the platform", id)
		}
		delete(got, id)
	}
	for id := range got {
		t.Errorf("the platform holds event %s that was never emitted", id)
	}
	t.Logf("%d events with prefix %q stored once each; %d redeliveries dropped by id", len(want), prefix, redelivered)
}

// TestAgentFailsOverToAnotherReplica: two replicas behind one address,
// the agent's tunnel on the first. The first is stopped while the agent
// emits events: the agent reconnects through the balancer to the second,
// API calls and clone streams work again, and every event emitted before,
// during and after the failover is stored exactly once.
func TestAgentFailsOverToAnotherReplica(t *testing.T) {
	pg := pgtest.Start(t)
	files := tlstest.New(t)
	db := newPlatformDB()
	secret := []byte(strings.Repeat("f", 32))
	rs := &replicaSet{}
	withRelay := func(o *hub.Options) {
		o.Locate = rs.locate
		o.RelaySecret = secret
		o.RelayTLS = relayTLS(t, files)
	}
	a := startPlatform(t, db, files, "", withRelay)
	b := startPlatform(t, db, files, "", withRelay)
	rs.mu.Lock()
	rs.replicas = []*platform{a, b}
	rs.mu.Unlock()
	lb := startBalancer(t, a.addr, b.addr)

	ag := startAgent(t, agentConfig{url: lb.URL(), stateDir: t.TempDir(), caFile: files.CA, target: func(port int) bool { return port == pg.Port }})
	waitFor(t, "enrollment", func() bool { db.mu.Lock(); defer db.mu.Unlock(); return len(db.creds) == 1 })
	id := db.agentID(t)
	waitFor(t, "the session on A", func() bool { return connected(a, id) })

	var mu sync.Mutex
	var emitted []string
	emit := func(phase string, n int) {
		for i := range n {
			evID := fmt.Sprintf("ev-%s-%04d", phase, i)
			ag.bus.Emit(events.Event{ID: evID, Kind: events.CloneReady, Clone: phase})
			mu.Lock()
			emitted = append(emitted, evID)
			mu.Unlock()
		}
	}
	works := func(p *platform, round string) {
		t.Helper()
		if code, got := callAPI(t, p, id, "/status/"+round); code != http.StatusOK || got["path"] != "/status/"+round {
			t.Fatalf("API call %s: %d %v", round, code, got)
		}
		queryThrough(t, p, id, pg)
	}

	emit("before", 250)
	works(a, "before-on-a")
	works(b, "before-relayed-by-b")
	waitFor(t, "the first events stored", func() bool { return db.storedWithPrefix("ev-before-") == 250 })

	// Events keep coming while A goes away and the agent moves to B.
	stopEmitting := make(chan struct{})
	var emitter sync.WaitGroup
	emitter.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stopEmitting:
				return
			case <-time.After(2 * time.Millisecond):
			}
			evID := fmt.Sprintf("ev-during-%05d", i)
			ag.bus.Emit(events.Event{ID: evID, Kind: events.Usage})
			mu.Lock()
			emitted = append(emitted, evID)
			mu.Unlock()
		}
	})
	waitFor(t, "events flowing", func() bool { return db.storedWithPrefix("ev-during-") >= 50 })
	a.stop()
	waitFor(t, "the session on B", func() bool { return connected(b, id) })
	waitFor(t, "more events after the move", func() bool {
		mu.Lock()
		n := len(emitted)
		mu.Unlock()
		return db.storedWithPrefix("ev-") >= n-10 && db.storedWithPrefix("ev-during-") >= 150
	})
	close(stopEmitting)
	emitter.Wait()

	emit("after", 250)
	works(b, "after-on-b")
	if connected(a, id) {
		t.Fatal("the stopped replica still holds the agent")
	}

	mu.Lock()
	want := append([]string(nil), emitted...)
	mu.Unlock()
	waitFor(t, "every event stored", func() bool { return db.storedWithPrefix("ev-") == len(want) })
	waitFor(t, "the journal acked", func() bool {
		evs, _, err := ag.client.Journal().Pending(10)
		return err == nil && len(evs) == 0
	})
	checkExactlyOnce(t, db, "ev-", want)
	if strings.Contains(ag.logs.String(), "events dropped") {
		t.Fatalf("the agent dropped events:\n%s", ag.logs.String())
	}
}

// queryThrough runs a query on postgres through a clone stream that p
// opens (itself or relayed).
func queryThrough(t *testing.T, p *platform, agentID string, pg *pgtest.Server) {
	t.Helper()
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=%s dbname=postgres sslmode=disable", pg.Port, pg.Password))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DialFunc = func(ctx context.Context, _, _ string) (net.Conn, error) {
		return p.hub.DialClone(ctx, agentID, pg.Port)
	}
	conn, err := pgx.ConnectConfig(t.Context(), cfg)
	if err != nil {
		t.Fatalf("postgres through the tunnel: %v", err)
	}
	defer func() { _ = conn.Close(context.Background()) }() // the test's session
	var n int
	if err := conn.QueryRow(t.Context(), "SELECT count(*) FROM generate_series(1, 20000)").Scan(&n); err != nil || n != 20000 {
		t.Fatalf("query through the tunnel: %d %v", n, err)
	}
}

// Environment of the "agent" child (see childModeEnv).
const (
	childURLEnv    = "THINLAB_TUNNELE2E_URL"
	childCAEnv     = "THINLAB_TUNNELE2E_CA"
	childStateEnv  = "THINLAB_TUNNELE2E_STATE"
	childPrefixEnv = "THINLAB_TUNNELE2E_PREFIX"
	childCountEnv  = "THINLAB_TUNNELE2E_COUNT"
)

// child is a re-executed copy of this test binary.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *logtest.Buffer
	done  chan struct{}
}

// startChild runs this test binary in child mode with env; the child's
// output goes to a buffer shown on failure. Cleanup kills it by its PID.
func startChild(t testing.TB, mode string, env ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$") //nolint:gosec // G702: os.Args[0] is this test binary, re-run as the child
	cmd.Env = append(os.Environ(), append([]string{childModeEnv + "=" + mode}, env...)...)
	c := &child{cmd: cmd, out: &logtest.Buffer{}, done: make(chan struct{})}
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
		_ = cmd.Wait() // killed or ended; the test looks at what it did
		close(c.done)
	}()
	t.Cleanup(func() {
		c.kill()
		if t.Failed() {
			t.Logf("child %s output:\n%s", mode, c.out.String())
		}
	})
	return c
}

// kill sends SIGKILL and waits until the child is gone.
func (c *child) kill() {
	select {
	case <-c.done:
		return
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.done
	_ = c.stdin.Close()
}

// untilStdinCloses returns a context that ends when the parent closes our
// stdin (or dies), or on SIGTERM.
func untilStdinCloses() (context.Context, context.CancelFunc) {
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	return ctx, cancel
}

// runEmittingAgentChild is the "agent" child: one real agent tunnel
// client from the state directory given, emitting events PREFIX-000000,
// PREFIX-000001, ... (COUNT of them, or until stopped when 0) every
// millisecond.
func runEmittingAgentChild() int {
	ctx, cancel := untilStdinCloses()
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	bus := events.NewBus()
	c, err := agenttunnel.New(agenttunnel.Options{
		URL:               os.Getenv(childURLEnv),
		CAFile:            os.Getenv(childCAEnv),
		EnrollToken:       enrollToken,
		StateDir:          os.Getenv(childStateEnv),
		API:               echoAPI(),
		APIToken:          agentAPIToken,
		Facts:             func() tunnel.AgentFacts { return tunnel.AgentFacts{Name: "child-agent", Version: "test"} },
		Events:            bus,
		Logger:            log,
		Backoff:           testBackoff,
		HeartbeatInterval: testHeartbeat,
	})
	if err != nil {
		log.Error("child agent", "err", err)
		return 1
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = c.Run(ctx) })
	prefix := os.Getenv(childPrefixEnv)
	count, _ := strconv.Atoi(os.Getenv(childCountEnv))
	for i := 0; count == 0 || i < count; i++ {
		select {
		case <-ctx.Done():
		case <-time.After(time.Millisecond):
			bus.Emit(events.Event{ID: fmt.Sprintf("%s-%06d", prefix, i), Kind: events.Usage})
			continue
		}
		break
	}
	wg.Wait()
	_ = c.Close()
	return 0
}

// journaledIndexes reads the journal files the way they are on disk and
// returns the highest index of PREFIX-NNNNNN events recorded there (-1
// when none); a torn last record is skipped.
func journaledIndexes(t *testing.T, stateDir, prefix string) int {
	t.Helper()
	dir := filepath.Join(stateDir, agenttunnel.JournalDir)
	segs, err := filepath.Glob(filepath.Join(dir, "seg-*.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	highest := -1
	for _, seg := range segs {
		raw, err := os.ReadFile(seg)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(bytes.NewReader(raw))
		sc.Buffer(nil, tunnel.MaxLineBytes)
		for sc.Scan() {
			var r struct {
				Event tunnel.Event `json:"event"`
			}
			if json.Unmarshal(sc.Bytes(), &r) != nil {
				continue
			}
			if n, ok := strings.CutPrefix(r.Event.ID, prefix+"-"); ok {
				if i, err := strconv.Atoi(n); err == nil {
					highest = max(highest, i)
				}
			}
		}
	}
	return highest
}

// highestStored is the highest index of PREFIX-NNNNNN events the platform
// holds (-1 when none).
func (db *platformDB) highestStored(prefix string) int {
	got, _ := db.eventCounts(prefix + "-")
	highest := -1
	for id := range got {
		if i, err := strconv.Atoi(strings.TrimPrefix(id, prefix+"-")); err == nil {
			highest = max(highest, i)
		}
	}
	return highest
}

// TestAgentKilledWithSIGKILLDeliversJournaledEventsOnce: the agent tunnel
// client runs in a child process emitting events; it is killed with
// SIGKILL mid-stream (nothing of its own shutdown runs) and started again
// from the same state directory. Every event that reached the journal
// before the kill is then stored exactly once; the events emitted by the
// restarted agent too.
func TestAgentKilledWithSIGKILLDeliversJournaledEventsOnce(t *testing.T) {
	files := tlstest.New(t)
	db := newPlatformDB()
	p := startPlatform(t, db, files, "")
	state := t.TempDir()
	env := []string{childURLEnv + "=" + p.URL, childCAEnv + "=" + files.CA, childStateEnv + "=" + state}

	first := startChild(t, "agent", append(env, childPrefixEnv+"=k1", childCountEnv+"=0")...)
	waitFor(t, "the child's events flowing", func() bool { return db.storedWithPrefix("k1-") >= 300 })
	first.kill()
	storedAtKill := db.highestStored("k1")
	journaled := journaledIndexes(t, state, "k1")
	last := max(storedAtKill, journaled)
	t.Logf("killed: platform holds up to k1-%06d, journal up to k1-%06d", storedAtKill, journaled)
	if journaled <= storedAtKill {
		// The kill came between two appends with everything acked: still
		// a valid run, but the interesting case is unacked events.
		t.Logf("nothing unacked at the kill")
	}

	startChild(t, "agent", append(env, childPrefixEnv+"=k2", childCountEnv+"=100")...)
	waitFor(t, "the journaled events and the new ones stored", func() bool {
		return db.storedWithPrefix("k1-") >= last+1 && db.storedWithPrefix("k2-") == 100
	})

	var want []string
	for i := 0; i <= last; i++ {
		want = append(want, fmt.Sprintf("k1-%06d", i))
	}
	checkExactlyOnce(t, db, "k1-", want)
	want = want[:0]
	for i := range 100 {
		want = append(want, fmt.Sprintf("k2-%06d", i))
	}
	checkExactlyOnce(t, db, "k2-", want)
	db.mu.Lock()
	defer db.mu.Unlock()
	if len(db.creds) != 1 {
		t.Fatalf("%d enrollments, want 1: the restarted agent must reuse its credential", len(db.creds))
	}
}

// TestClosedReplicaTakesNoNewTunnels: a replica being stopped closes its
// hub before its server. An agent that reconnects in between (the
// balancer still sends it there) must be turned away, not given a
// session on a hub that nobody serves any more: http.Server.Close does
// not close hijacked connections, so such a session would live on,
// unreachable, and keep the agent from moving to a live replica.
func TestClosedReplicaTakesNoNewTunnels(t *testing.T) {
	files := tlstest.New(t)
	db := newPlatformDB()
	p := startPlatform(t, db, files, "")
	a := startAgent(t, agentConfig{url: p.URL, stateDir: t.TempDir(), caFile: files.CA})
	waitFor(t, "enrollment", func() bool { db.mu.Lock(); defer db.mu.Unlock(); return len(db.creds) == 1 })
	id := db.agentID(t)
	waitFor(t, "the session", func() bool { return connected(p, id) })

	p.hub.Close() // the server still accepts connections
	waitFor(t, "the agent turned away or taken back", func() bool {
		return strings.Contains(a.logs.String(), "503 Service Unavailable") || connected(p, id)
	})
	if connected(p, id) {
		t.Fatal("a closed hub took a new session")
	}
}
