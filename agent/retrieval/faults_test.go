package retrieval

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/agent/retrieval/retrievaltest"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/btrfs"
	"github.com/thinlab/thinlab/internal/logtest"
	"github.com/thinlab/thinlab/internal/pgtest"
)

// childEnv, when set, makes the test binary act as an agent running one
// refresh (see TestMain): the parent kills it mid-refresh.
const childEnv = "THINLAB_TEST_RETRIEVAL_CHILD"

func TestMain(m *testing.M) {
	if spec := os.Getenv(childEnv); spec != "" {
		os.Exit(runChild(spec))
	}
	os.Exit(m.Run())
}

// childSpec is what the child agent needs, passed as one env variable.
type childSpec struct {
	PoolName, PoolPath, ClonesDir, StateDir string
	SourcePort                              int
}

func (c childSpec) String() string {
	return strings.Join([]string{c.PoolName, c.PoolPath, c.ClonesDir, c.StateDir, strconv.Itoa(c.SourcePort)}, "\x1f")
}

// faultConfig is the refresh both the child and the parent run: two
// databases in directory format (a dump directory on the pool).
func faultConfig(p storage.Pool, stateDir string, sourcePort int) *config.Config {
	cfg := config.Default()
	cfg.Pools = []config.Pool{{Name: p.Name(), Mode: p.Mode(), Path: p.MainDir()}}
	cfg.StateDir = stateDir
	cfg.Retrieval = config.Retrieval{Mode: "logical", Pool: p.Name(), Jobs: 2, Databases: []string{"app", "shop"},
		Source:  config.Source{Host: "127.0.0.1", Port: sourcePort, Username: "postgres", PasswordEnv: "THINLAB_TEST_SOURCE_PW", SSLMode: "disable"},
		Logical: config.Logical{Format: config.FormatDirectory}}
	return cfg
}

func runChild(spec string) int {
	f := strings.Split(spec, "\x1f")
	port, _ := strconv.Atoi(f[4])
	ctx := context.Background()
	p, err := btrfs.Open(ctx, btrfs.Config{Name: f[0], Path: f[1], ClonesDir: f[2]})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: open pool:", err)
		return 2
	}
	r, err := New(Options{Config: faultConfig(p, f[3], port), Pool: p})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: retrieval:", err)
		return 2
	}
	if _, err := r.Refresh(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "child: refresh:", err)
		return 1
	}
	return 0
}

// cutProxy forwards TCP to a source server and counts the bytes the
// server sends. Once more than cutAfter have passed it calls onCut once
// and drops every connection, new ones too, until heal.
type cutProxy struct {
	l        net.Listener
	target   string
	cutAfter int64
	onCut    func()

	sent  atomic.Int64
	cut   atomic.Bool
	once  sync.Once
	mu    sync.Mutex
	conns []net.Conn
}

func newCutProxy(t *testing.T, targetPort int, cutAfter int64, onCut func()) *cutProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{l: l, target: fmt.Sprintf("127.0.0.1:%d", targetPort), cutAfter: cutAfter, onCut: onCut}
	t.Cleanup(func() {
		_ = l.Close() // ends the accept loop
		p.dropAll()
	})
	go p.serve()
	return p
}

func (p *cutProxy) port() int { return p.l.Addr().(*net.TCPAddr).Port }

func (p *cutProxy) heal() {
	p.cutAfter = 1 << 62
	p.cut.Store(false)
}

func (p *cutProxy) dropAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.Close() // the point is to break it
	}
	p.conns = nil
}

func (p *cutProxy) serve() {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		if p.cut.Load() {
			_ = c.Close() // the source is "gone"
			continue
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		go func() { _, _ = io.Copy(s, c) }()
		go func() {
			buf := make([]byte, 32<<10)
			for {
				n, err := s.Read(buf)
				if n > 0 {
					if p.sent.Add(int64(n)) > p.cutAfter && !p.cut.Load() {
						p.cut.Store(true)
						p.once.Do(func() {
							if p.onCut != nil {
								p.onCut()
							}
						})
						p.dropAll()
						return
					}
					if _, werr := c.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					_ = c.Close()
					return
				}
			}
		}()
	}
}

// bigSource is a source whose dump takes several MiB on the wire, so a
// cut after 1 MiB lands in the middle of it.
func bigSource(t *testing.T) *pgtest.Server {
	src := retrievaltest.Source(t)
	src.Exec(t, "app", "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 200000) g")
	t.Setenv("THINLAB_TEST_SOURCE_PW", src.Password)
	return src
}

// leftovers lists what a refresh must not leave behind in p: a postgres
// on the main dataset, the dump directory, processes mentioning the pool.
func leftovers(t *testing.T, p storage.Pool) []string {
	t.Helper()
	var out []string
	if mainRunning(t, p) {
		out = append(out, "a postgres on the main dataset")
	}
	if _, err := os.Stat(filepath.Join(p.MainDir(), "retrieval-dump")); err == nil {
		out = append(out, "the dump directory")
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range procs {
		b, err := os.ReadFile(f)
		if err == nil && strings.Contains(string(b), p.MainDir()) {
			out = append(out, "process "+f+": "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return out
}

// waitNoLeftovers waits (bounded) for killed processes to be gone.
func waitNoLeftovers(t *testing.T, p storage.Pool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		left := leftovers(t, p)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("left behind: %v", left)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestSourceGoesAwayMidDump: the connection to the source breaks after
// 1 MiB of the dump: the refresh fails with pg_dump's reason in the status,
// the previous snapshot is intact, nothing is left running or on disk, and
// once the source is back the next refresh succeeds.
func TestSourceGoesAwayMidDump(t *testing.T) {
	src := bigSource(t)
	p := clonetest.NewPool(t)
	old := clonetest.Fill(t, p, "CREATE TABLE old_data AS SELECT 7 AS v")
	proxy := newCutProxy(t, src.Port, 1<<20, nil)
	cfg := faultConfig(p, t.TempDir(), proxy.port())
	cfg.Retrieval.Logical.Format = config.FormatPiped
	log := &logtest.Buffer{}
	r, err := New(Options{Config: cfg, Pool: p, Logger: log.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() }) // nothing runs by then
	if _, err := r.Refresh(t.Context()); err == nil {
		t.Fatal("a refresh whose source went away succeeded")
	}
	if !proxy.cut.Load() {
		t.Fatal("the proxy never cut: the dump was smaller than 1 MiB")
	}
	st := r.Status()
	if a := st.Alerts[AlertRefreshFailed]; st.Status != StatusFailed || !strings.Contains(a.Message, "pg_dump") {
		t.Fatalf("status %+v, want failed with pg_dump's reason", st)
	}
	waitNoLeftovers(t, p)
	snaps, err := p.Snapshots(t.Context())
	if err != nil || len(snaps) != 1 || snaps[0].ID != old.ID {
		t.Fatalf("snapshots %v (%v), want only %s", snaps, err, old.ID)
	}
	if got := retrievaltest.Query(t, p, old.ID, "postgres", "SELECT v::text FROM old_data"); got != "7" {
		t.Fatalf("previous snapshot: %s", got)
	}

	proxy.heal()
	res, err := r.Refresh(t.Context())
	if err != nil {
		t.Fatalf("the refresh after the source came back: %v", err)
	}
	if got := retrievaltest.Query(t, p, res.Snapshot.ID, "app", "SELECT count(*)::text FROM big"); got != "200000" {
		t.Fatalf("big rows %s", got)
	}
	if st := r.Status(); st.Status != StatusFinished || len(st.Alerts) != 0 {
		t.Fatalf("status after the good refresh %+v", st)
	}
}

// TestAgentKilledMidRefresh: an agent (this test binary in a child
// process) is SIGKILLed while pg_dump writes the dump directory. Its
// tools and the pool's postgres die with it; the next agent start reports
// the interrupted refresh as failed with the reason, removes the dump
// directory, keeps the previous snapshot, and its next refresh succeeds.
func TestAgentKilledMidRefresh(t *testing.T) {
	src := bigSource(t)
	p := clonetest.NewPool(t)
	bp, ok := p.(interface {
		Path() string
		ClonesDir() string
	})
	if !ok {
		t.Fatalf("pool %T does not tell its path", p)
	}
	old := clonetest.Fill(t, p, "CREATE TABLE old_data AS SELECT 7 AS v")
	stateDir := t.TempDir()
	// started hands the child's process to the proxy's goroutine (which
	// kills it) once it runs.
	var started atomic.Pointer[os.Process]
	killed := make(chan struct{})
	proxy := newCutProxy(t, src.Port, 1<<20, func() {
		// The agent dies first; dropping the source connections after
		// it only makes sure no orphan could finish the dump. killed is
		// closed before the signal, so that it is closed when Wait returns.
		close(killed)
		if pr := started.Load(); pr != nil {
			_ = pr.Signal(syscall.SIGKILL)
		}
	})
	spec := childSpec{PoolName: p.Name(), PoolPath: bp.Path(), ClonesDir: bp.ClonesDir(), StateDir: stateDir, SourcePort: proxy.port()}
	child := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^$") //nolint:gosec // G702: this test binary itself, re-run as the child agent
	child.Env = append(os.Environ(), childEnv+"="+spec.String())
	var childOut strings.Builder
	child.Stdout, child.Stderr = &childOut, &childOut
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	started.Store(child.Process)
	werr := child.Wait()
	select {
	case <-killed:
	default:
		t.Fatalf("the child agent ended before the dump was 1 MiB in (%v):\n%s", werr, childOut.String())
	}

	proxy.heal()
	cfg := faultConfig(p, stateDir, proxy.port())
	log := &logtest.Buffer{}
	r, err := New(Options{Config: cfg, Pool: p, Logger: log.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() }) // nothing runs by then
	st := r.Status()
	if a := st.Alerts[AlertRefreshFailed]; st.Status != StatusFailed || !strings.Contains(a.Message, "interrupted") || !strings.Contains(a.Message, p.Name()) {
		t.Fatalf("status after the restart %+v, want the interrupted refresh as failed", st)
	}
	r.Start(t.Context())
	waitNoLeftovers(t, p)
	snaps, err := p.Snapshots(t.Context())
	if err != nil || len(snaps) != 1 || snaps[0].ID != old.ID {
		t.Fatalf("snapshots %v (%v), want only %s", snaps, err, old.ID)
	}
	if got := retrievaltest.Query(t, p, old.ID, "postgres", "SELECT v::text FROM old_data"); got != "7" {
		t.Fatalf("previous snapshot: %s", got)
	}
	res, err := r.Refresh(t.Context())
	if err != nil {
		t.Fatalf("the refresh after the restart: %v", err)
	}
	if got := retrievaltest.Query(t, p, res.Snapshot.ID, "shop", "SELECT count(*)::text FROM orders"); got != "500" {
		t.Fatalf("orders rows %s", got)
	}
	if st := r.Status(); st.Status != StatusFinished || len(st.Alerts) != 0 {
		t.Fatalf("status after the good refresh %+v", st)
	}
	waitNoLeftovers(t, p)
}

// TestPreprocessFailureInStatus: a pre-processing script that fails
// fails the refresh: the status is failed with the step and its output in
// the refresh_failed alert, a retrieval.failed event carries it, no
// snapshot is made and nothing is left running.
func TestPreprocessFailureInStatus(t *testing.T) {
	src := retrievaltest.Source(t)
	t.Setenv("THINLAB_TEST_SOURCE_PW", src.Password)
	p := clonetest.NewPool(t)
	old := clonetest.Fill(t, p, "SELECT 1")
	dir := t.TempDir()
	script := filepath.Join(dir, "mask.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho 'column users.ssn does not exist' >&2\nexit 4\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cfg := faultConfig(p, t.TempDir(), src.Port)
	cfg.Retrieval.Preprocess = config.Preprocess{Scripts: []string{script}}
	bus := events.NewBus()
	var failed []events.Event
	var mu sync.Mutex
	bus.Subscribe(func(e events.Event) {
		if e.Kind == events.RetrievalFailed {
			mu.Lock()
			failed = append(failed, e)
			mu.Unlock()
		}
	})
	r, err := New(Options{Config: cfg, Pool: p, Logger: (&logtest.Buffer{}).Logger(), Events: bus})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() }) // nothing runs by then
	if _, err := r.Refresh(t.Context()); err == nil {
		t.Fatal("a refresh with a failing pre-processing script succeeded")
	}
	st := r.Status()
	a := st.Alerts[AlertRefreshFailed]
	if st.Status != StatusFailed || !strings.Contains(a.Message, "mask.sh") || !strings.Contains(a.Message, "column users.ssn does not exist") {
		t.Fatalf("status %+v", st)
	}
	mu.Lock()
	if len(failed) != 1 || !strings.Contains(failed[0].Message, "column users.ssn does not exist") {
		t.Fatalf("retrieval.failed events %+v", failed)
	}
	mu.Unlock()
	waitNoLeftovers(t, p)
	if snaps, err := p.Snapshots(t.Context()); err != nil || len(snaps) != 1 || snaps[0].ID != old.ID {
		t.Fatalf("snapshots %v (%v), want only %s", snaps, err, old.ID)
	}
}
