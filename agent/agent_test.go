package agent_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/runtime"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/storagetest"
	"github.com/thinlab/thinlab/internal/logtest"
	"github.com/thinlab/thinlab/internal/pgcluster"
	"github.com/thinlab/thinlab/internal/testenv"
	"github.com/thinlab/thinlab/sdk/agentapi"
)

// token is the agents' API token (random: short tokens are refused).
var token = config.GenerateToken()

const (
	password = "Vx9-kq2!Lm7#pz4Rw8"
)

// stampedVersion is what buildThinlab stamps into the binary, as make
// build does with its git version.
const stampedVersion = "v0.0.0-agent-test"

// buildThinlab builds the real binary into a temporary directory, with the
// version stamped the way make build stamps it.
func buildThinlab(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "thinlab")
	out, err := exec.Command("go", "build", "-ldflags", "-X github.com/thinlab/thinlab/internal/version.Version="+stampedVersion,
		"-o", bin, "github.com/thinlab/thinlab/cmd/thinlab").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return port
}

// agentProc is one `thinlab agent run` process.
type agentProc struct {
	cmd  *exec.Cmd
	logs *logtest.Buffer
	done chan error
}

func startAgent(t *testing.T, bin, cfgPath string, c *agentapi.Client, logs *logtest.Buffer) *agentProc {
	t.Helper()
	cmd := exec.Command(bin, "agent", "run", "--log-level", "debug")
	cmd.Env = append(os.Environ(), "THINLAB_AGENT_CONFIG="+cfgPath)
	cmd.Stdout = logs
	cmd.Stderr = logs
	// The agent dies with this test binary (a crash or -timeout would
	// otherwise leave it holding the pool's mounts). Pdeathsig follows the
	// OS thread that started the child, and pgcluster.AsUser ends
	// threads: StartOnLastingThread forks from one that lasts as long as
	// the binary. The clones' postgres, started by the agent in their own
	// sessions, are swept by storagetest on the next run.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := pgcluster.StartOnLastingThread(cmd); err != nil {
		t.Fatal(err)
	}
	p := &agentProc{cmd: cmd, logs: logs, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	// The exit status is checked where the test stops the agent itself;
	// here the agent may have been killed on purpose.
	t.Cleanup(func() { _ = p.stop(t) })
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	for {
		if h, err := c.Healthz(ctx); err == nil {
			if h.Version != stampedVersion {
				t.Fatalf("/healthz version = %q, want %q (stamped with -ldflags -X)", h.Version, stampedVersion)
			}
			return p
		}
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("agent exited during start: %v\n%s", err, logs.String())
		case <-ctx.Done():
			t.Fatalf("agent did not answer /healthz: %s", logs.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stop ends the agent with SIGTERM (no-op when it already exited) and
// returns its exit error.
func (p *agentProc) stop(t *testing.T) error {
	select {
	case err := <-p.done:
		p.done <- err
		return err
	default:
	}
	// An agent that exited meanwhile reports through p.done below.
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(time.Minute):
		_ = p.cmd.Process.Kill() // the test already fails; Wait below reaps it
		t.Errorf("agent did not stop within a minute of SIGTERM")
		return <-p.done
	}
}

func queryClone(ctx context.Context, c agentapi.Clone, sql string) (string, error) {
	cc, err := pgx.ParseConfig(c.DB.ConnStr + " sslmode=disable connect_timeout=10")
	if err != nil {
		return "", err
	}
	cc.Password = password
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return "", err
	}
	// The query's answer is the result; a failed goodbye changes nothing.
	defer func() { _ = conn.Close(ctx) }()
	var s string
	err = conn.QueryRow(ctx, sql).Scan(&s)
	return s, err
}

// TestAgentSurvivesKill9 runs the real binary on a btrfs loop pool,
// creates 5 clones through the API, kills the agent with SIGKILL and
// starts it again: every clone is listed OK and answers with its old
// credentials. Then SIGTERM stops the agent gracefully (exit 0) and the
// clones keep running.
// TestVersionStamped: the version given to the linker is what `thinlab
// version` prints (the agent's /healthz is checked by startAgent).
func TestVersionStamped(t *testing.T) {
	bin := buildThinlab(t)
	out, err := exec.CommandContext(t.Context(), bin, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("thinlab version: %v\n%s", err, out)
	}
	if got, want := strings.TrimSpace(string(out)), "thinlab "+stampedVersion; got != want {
		t.Fatalf("thinlab version printed %q, want %q", got, want)
	}
}

func TestAgentSurvivesKill9(t *testing.T) {
	testenv.NeedsRoot(t, "root, for loop devices, mounts and the postgres OS user")
	bin := buildThinlab(t)
	pool := storagetest.NewLoopPool(t, storage.ModeBtrfs)
	t.Cleanup(func() { clonetest.KillClones(pool) })
	clonetest.Fill(t, pool, "CREATE TABLE t (v text)", "INSERT INTO t VALUES ('before kill')")

	dir := t.TempDir()
	apiPort := freePort(t)
	from := 20000 + rand.IntN(120)*100
	// Clone uids of their own: other test agents may run on this host.
	uidFrom := 300000 + rand.IntN(100000)*100
	cfgPath := filepath.Join(dir, "agent.yml")
	cfgYAML := fmt.Sprintf(`server:
  host: 127.0.0.1
  port: %d
  verificationToken: %s
pools:
  - name: %s
    mode: btrfs
    path: %s
provision:
  portPool: {from: %d, to: %d}
  cloneUIDs: {from: %d, to: %d}
cloning:
  maxIdleMinutes: 0
stateDir: %s
`, apiPort, token, pool.Name(), filepath.Dir(pool.MainDir()), from, from+9, uidFrom, uidFrom+99, filepath.Join(dir, "state"))
	t.Cleanup(func() {
		if err := os.RemoveAll(runtime.RunDirFor(filepath.Join(dir, "state"))); err != nil {
			t.Errorf("remove the agent's run directory: %v", err)
		}
	})
	if err := os.WriteFile(cfgPath, []byte(cfgYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	c := &agentapi.Client{BaseURL: "http://127.0.0.1:" + strconv.Itoa(apiPort), Token: token, PollInterval: 50 * time.Millisecond}
	logs := &logtest.Buffer{}

	first := startAgent(t, bin, cfgPath, c, logs)
	want := map[string]agentapi.Clone{}
	for i := range 5 {
		id := "k" + strconv.Itoa(i)
		if _, err := c.CreateClone(ctx, agentapi.CreateCloneRequest{ID: id, DB: &agentapi.DatabaseRequest{Username: "dev" + strconv.Itoa(i), Password: password, Restricted: i%2 == 0}}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		cl, err := c.WaitClone(ctx, "k"+strconv.Itoa(i))
		if err != nil {
			t.Fatal(err)
		}
		want[cl.ID] = *cl
	}

	if err := first.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := <-first.done; err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("agent after SIGKILL: %v", err)
	}
	first.done <- fmt.Errorf("killed")

	second := startAgent(t, bin, cfgPath, c, logs)
	checkAll := func(stage string) {
		t.Helper()
		list, err := c.Clones(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != len(want) {
			t.Fatalf("%s: %d clones listed, want %d", stage, len(list), len(want))
		}
		for _, cl := range list {
			w, ok := want[cl.ID]
			if !ok || cl.Status.Code != agentapi.StatusOK {
				t.Fatalf("%s: clone %s is %s (%s)", stage, cl.ID, cl.Status.Code, cl.Status.Message)
			}
			if cl.DB.ConnStr != w.DB.ConnStr {
				t.Fatalf("%s: clone %s moved from %q to %q", stage, cl.ID, w.DB.ConnStr, cl.DB.ConnStr)
			}
			got, err := queryClone(ctx, w, "SELECT v FROM t")
			if err != nil || got != "before kill" {
				t.Fatalf("%s: clone %s with its old credentials: %q %v", stage, cl.ID, got, err)
			}
		}
	}
	checkAll("after kill -9 and restart")

	// Graceful stop: exit 0, clones keep serving.
	if err := second.stop(t); err != nil {
		t.Fatalf("agent after SIGTERM: %v\n%s", err, logs.String())
	}
	for id, w := range want {
		if got, err := queryClone(ctx, w, "SELECT v FROM t"); err != nil || got != "before kill" {
			t.Fatalf("clone %s after the agent stopped: %q %v", id, got, err)
		}
	}
	third := startAgent(t, bin, cfgPath, c, logs)
	checkAll("after graceful restart")
	for id := range want {
		if err := c.DestroyClone(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	for id := range want {
		if err := c.WaitCloneDestroyed(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := third.stop(t); err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	if strings.Contains(out, token) || strings.Contains(out, password) {
		t.Fatal("the agent logged its verification token or a clone password")
	}
	if !strings.Contains(out, "agent listening") {
		t.Fatalf("no start message in the log:\n%s", out)
	}
}
