package cli

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/api"
	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/cli/clientconfig"
	"github.com/thinlab/thinlab/internal/pgcluster"
	"github.com/thinlab/thinlab/internal/testenv"
	"github.com/thinlab/thinlab/sdk/agentapi"
)

// itToken is the test agent's API token (random: short tokens are refused).
var itToken = config.GenerateToken()

const (
	itPassword = "Vx9-kq2!Lm7#pz4Rw8-cli"
)

// realPsql is the psql of the newest installed PostgreSQL.
func realPsql(t *testing.T) string {
	t.Helper()
	dir, err := pgcluster.NewestBinDir("")
	if err != nil {
		t.Fatal(err)
	}
	psql := filepath.Join(dir, "psql")
	if _, err := os.Stat(psql); err != nil {
		t.Fatalf("needs the PostgreSQL client binaries (make deps installs them): %v", err)
	}
	return psql
}

// startAgent runs the real agent API (agent/api over clone.Manager) on a
// real btrfs loop pool holding one snapshot per SQL list, behind httptest.
func startAgent(t *testing.T, snapshots ...[]string) (string, storage.Pool, []storage.Snapshot) {
	t.Helper()
	srv, _, p, snaps := startAgentServer(t, snapshots...)
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	return hs.URL, p, snaps
}

// startAgentServer builds the real agent API (agent/api over
// clone.Manager) on a real btrfs loop pool holding one snapshot per SQL
// list; the caller serves its handler (httptest, or the tunnel).
func startAgentServer(t *testing.T, snapshots ...[]string) (*api.Server, *clone.Manager, storage.Pool, []storage.Snapshot) {
	t.Helper()
	testenv.NeedsRoot(t, "root, for loop devices, mounts and the postgres OS user")
	realPsql(t)
	// Not t.Context(): that ends before the cleanups below, and the
	// manager built on ctx must still work while they close it.
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	p := clonetest.NewPool(t)
	var snaps []storage.Snapshot
	for _, sql := range snapshots {
		snaps = append(snaps, clonetest.Fill(t, p, sql...))
	}
	cfg := clonetest.Config(t, p, 5)
	cfg.Server.VerificationToken = itToken
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	m, err := clone.NewManager(ctx, clone.Options{Config: cfg, Pools: []storage.Pool{p}, Logger: logger, CheckInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	srv := api.New(api.Options{Config: cfg, Clones: m, Pools: []storage.Pool{p}, Logger: logger, Version: "test", InstanceID: "cli-it", StartedAt: time.Now()})
	// Last in, first out: the caller's HTTP server, the API, the manager,
	// then leftover clone processes and datasets, then (registered first)
	// the pool.
	t.Cleanup(func() { clonetest.KillClones(p) })
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("close the clone manager: %v", err)
		}
	})
	t.Cleanup(srv.Close)
	return srv, m, p, snaps
}

// mustRun runs the CLI and fails the test unless it exits 0.
func mustRun(t *testing.T, args ...string) (string, string) {
	t.Helper()
	code, out, errOut := runCLI(t, "", args...)
	if code != 0 {
		t.Fatalf("thinlab %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, out, errOut)
	}
	return out, errOut
}

func decode[T any](t *testing.T, s string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("decode %T: %v\n%s", v, err, s)
	}
	return v
}

// TestCLIAgainstRealAgent drives every client command in-process against a
// real agent: real pool, real postgres clones, and the real psql for
// `connect`.
func TestCLIAgainstRealAgent(t *testing.T) {
	cfgPath := isolate(t)
	url, pool, snaps := startAgent(t,
		[]string{"CREATE TABLE t (v text)", "INSERT INTO t VALUES ('one')"},
		[]string{"INSERT INTO t VALUES ('two')"},
	)
	older, newer := snaps[0].ID, snaps[1].ID
	t.Setenv("THINLAB_PSQL", realPsql(t))

	// A context holds the URL and token; nothing else is configured.
	mustRun(t, "context", "add", "it", "--url", url, "--token", itToken)

	// With a wrong token the agent refuses, and the CLI says what to set.
	code, _, errOut := runCLI(t, "", "clone", "list", "--token", "wrong")
	if code != 1 || !strings.Contains(errOut, "Check your verification token.") {
		t.Fatalf("no token: exit %d, %q", code, errOut)
	}

	out, _ := mustRun(t, "snapshot", "list", "-o", "json")
	list := decode[[]agentapi.Snapshot](t, out)
	if len(list) != 2 || list[0].ID != newer || list[1].ID != older {
		t.Fatalf("snapshot list: %s", out)
	}
	out, _ = mustRun(t, "snapshot", "list")
	if !strings.Contains(out, older) || !strings.HasPrefix(out, "ID ") {
		t.Errorf("snapshot table:\n%s", out)
	}

	// A weak password is the server's message naming the field.
	code, _, errOut = runCLI(t, "", "clone", "create", "--id", "cli1", "--username", "alice", "--password", "abc")
	if code != 1 || !strings.Contains(errOut, "db.password") {
		t.Errorf("weak password: exit %d, %q", code, errOut)
	}

	t.Setenv(envClonePassword, itPassword)
	out, errOut = mustRun(t, "clone", "create", "--id", "cli1", "--username", "alice",
		"--snapshot", older, "--extra-conf", "work_mem=8MB", "-o", "json")
	cl := decode[agentapi.Clone](t, out)
	if cl.ID != "cli1" || cl.Status.Code != agentapi.StatusOK || cl.DB.Port == "" || cl.Snapshot == nil || cl.Snapshot.ID != older {
		t.Fatalf("create: %+v", cl)
	}
	// stderr is not a terminal here: plain progress lines, no spinner.
	if !strings.Contains(errOut, "Creating clone cli1: ready in") || strings.Contains(errOut, "\r") {
		t.Errorf("create progress:\n%q", errOut)
	}
	// The password was saved for connect, in a 0600 file.
	file, err := clientconfig.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if pw, ok := file.ClonePassword(url, "cli1"); !ok || pw != itPassword {
		t.Errorf("saved password missing")
	}
	if st, _ := os.Stat(cfgPath); st.Mode().Perm() != 0o600 {
		t.Errorf("config mode %v", st.Mode().Perm())
	}
	t.Setenv(envClonePassword, "")

	out, _ = mustRun(t, "clone", "list")
	if !strings.Contains(out, "cli1") || !strings.Contains(out, " OK ") {
		t.Errorf("clone list:\n%s", out)
	}
	out, _ = mustRun(t, "clone", "status", "cli1", "-o", "json")
	if got := decode[agentapi.Clone](t, out); got.Status.Code != agentapi.StatusOK || got.DB.Username != "alice" {
		t.Errorf("clone status: %+v", got)
	}

	// connect runs the real psql with the saved password (PGPASSWORD).
	psql := func(sql string) string {
		t.Helper()
		out, _ := mustRun(t, "connect", "cli1", "--", "-XAtc", sql)
		return strings.TrimSpace(out)
	}
	if got := psql("select count(*) from t"); got != "1" {
		t.Errorf("rows in the older snapshot's clone: %q", got)
	}
	if got := psql("show work_mem"); got != "8MB" {
		t.Errorf("--extra-conf work_mem: %q", got)
	}
	if got := psql("select current_user"); got != "alice" {
		t.Errorf("user: %q", got)
	}
	// port-forward with an agent context forwards straight to the clone.
	port, stopPF := startPortForward(t, "cli1")
	if got := queryThroughForward(t, port, "select current_user::text"); got != "alice" {
		t.Errorf("user through port-forward: %q", got)
	}
	stopPF()
	// A wrong password fails with psql's own exit code, not 0.
	code, _, errOut = runCLI(t, "", "connect", "cli1", "--password", "wrong-password", "--", "-XAtc", "select 1")
	if code != 2 || !strings.Contains(errOut, "password authentication failed") {
		t.Errorf("wrong password: exit %d, %q", code, errOut)
	}

	out, _ = mustRun(t, "clone", "reset", "cli1", "--latest", "-o", "json")
	if got := decode[agentapi.Clone](t, out); got.Status.Code != agentapi.StatusOK || got.Snapshot == nil || got.Snapshot.ID != newer {
		t.Errorf("reset: %s", out)
	}
	if got := psql("select count(*) from t"); got != "2" {
		t.Errorf("rows after reset to the latest snapshot: %q", got)
	}

	out, _ = mustRun(t, "clone", "protect", "cli1", "-o", "json")
	if got := decode[agentapi.Clone](t, out); !got.Protected {
		t.Errorf("protect: %s", out)
	}
	code, _, errOut = runCLI(t, "", "clone", "destroy", "cli1")
	if code != 1 || !strings.Contains(errOut, "protected") {
		t.Errorf("destroy protected: exit %d, %q", code, errOut)
	}
	out, _ = mustRun(t, "clone", "protect", "cli1", "--off", "-o", "json")
	if got := decode[agentapi.Clone](t, out); got.Protected {
		t.Errorf("protect --off: %s", out)
	}

	out, _ = mustRun(t, "status", "-o", "json")
	st := decode[agentapi.InstanceStatus](t, out)
	if st.Cloning.NumClones != 1 || len(st.Pools) != 1 || st.Pools[0].Name != pool.Name() {
		t.Errorf("status: %s", out)
	}
	out, _ = mustRun(t, "status")
	if !strings.Contains(out, pool.Name()) || !strings.Contains(out, "Instance:") {
		t.Errorf("status table:\n%s", out)
	}

	out, _ = mustRun(t, "clone", "destroy", "cli1")
	if !strings.Contains(out, "Clone cli1 destroyed") {
		t.Errorf("destroy: %q", out)
	}
	code, _, errOut = runCLI(t, "", "clone", "status", "cli1")
	if code != 1 || !strings.Contains(errOut, "not found") {
		t.Errorf("status after destroy: exit %d, %q", code, errOut)
	}
	file, _ = clientconfig.Load(cfgPath)
	if _, ok := file.ClonePassword(url, "cli1"); ok {
		t.Error("destroy left the saved password behind")
	}

	// --no-wait returns while the clone is still being created.
	t.Setenv(envClonePassword, itPassword)
	out, _ = mustRun(t, "clone", "create", "--id", "cli2", "--username", "bob", "--no-wait", "-o", "json")
	if got := decode[agentapi.Clone](t, out); got.Status.Code != agentapi.StatusCreating {
		t.Errorf("--no-wait create: %s", out)
	}
	api := &agentapi.Client{BaseURL: url, Token: itToken, PollInterval: 100 * time.Millisecond}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if _, err := api.WaitClone(ctx, "cli2"); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "clone", "destroy", "cli2", "--no-wait")
	if err := api.WaitCloneDestroyed(ctx, "cli2"); err != nil {
		t.Fatal(err)
	}

	// A manual snapshot of the pool, then its deletion.
	out, _ = mustRun(t, "snapshot", "create", "-o", "json")
	ps := decode[agentapi.PoolSnapshot](t, out)
	if ps.Pool != pool.Name() || !strings.HasPrefix(ps.ID, pool.Name()+"@") {
		t.Fatalf("snapshot create: %s", out)
	}
	out, _ = mustRun(t, "snapshot", "delete", ps.ID)
	if !strings.Contains(out, "Deleted snapshot "+ps.ID) {
		t.Errorf("snapshot delete: %q", out)
	}
}
