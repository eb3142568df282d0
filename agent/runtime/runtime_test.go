package runtime

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/internal/pgtest"
)

func randName(prefix string) string {
	b := make([]byte, 4)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

func newRuntime(t testing.TB, opt Options) *Runtime {
	t.Helper()
	rt, err := New(opt)
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

// runDir is a root-owned runtime directory reachable by postgres (unlike
// t.TempDir(), whose parent is 0700).
func runDir(t *testing.T) string {
	d, err := os.MkdirTemp("", "thinlab-run-*")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(d); err != nil {
			t.Errorf("remove %s: %v", d, err)
		}
	})
	return d
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestStartAppliesSettingsAndHBA(t *testing.T) {
	ctx := ctxT(t)
	dir := pgtest.InitDataDir(t)
	rt := newRuntime(t, Options{User: pgtest.OSUser(t), RunDir: runDir(t), ListenAddresses: "127.0.0.1"})
	inst := Instance{
		Name:    randName("rt-"),
		DataDir: dir,
		Port:    pgtest.FreePort(t),
		Settings: MergeSettings(DefaultSettings, map[string]string{
			"statement_timeout": "1234",
			"application_name":  `it's a \ test`,
		}),
	}
	if err := rt.Start(ctx, inst); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Kill(inst) })
	if err := rt.Start(ctx, inst); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Fatalf("second start: %v", err)
	}

	conn, err := pgx.Connect(ctx, rt.SocketConnString(dir, inst.Port, "postgres", "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	for setting, want := range map[string]string{
		"statement_timeout": "1234ms",
		"application_name":  `it's a \ test`,
		"shared_buffers":    "32MB",
		"max_connections":   "40",
		"listen_addresses":  "127.0.0.1",
		"archive_mode":      "off",
	} {
		var got string
		if err := conn.QueryRow(ctx, "SELECT current_setting($1)", setting).Scan(&got); err != nil || got != want {
			t.Errorf("%s = %q (%v), want %q", setting, got, err, want)
		}
	}
	if _, err := conn.Exec(ctx, "CREATE ROLE tcpuser LOGIN PASSWORD 'Right-Horse-Battery-9'"); err != nil {
		t.Fatal(err)
	}
	_ = conn.Close(ctx) // a failed goodbye loses nothing

	// pg_hba: password (SCRAM) over TCP, wrong password refused.
	tcp := func(pw string) error {
		c, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=tcpuser dbname=postgres password=%s sslmode=disable", inst.Port, pw))
		if err == nil {
			_ = c.Close(ctx) // a failed goodbye loses nothing
		}
		return err
	}
	if err := tcp("Right-Horse-Battery-9"); err != nil {
		t.Fatalf("TCP login with the password: %v", err)
	}
	if err := tcp("wrong"); err == nil || !strings.Contains(err.Error(), "password authentication failed") {
		t.Fatalf("TCP login with a wrong password: %v", err)
	}

	procs, err := Postmasters()
	if err != nil {
		t.Fatal(err)
	}
	pid, running := rt.Running(dir)
	found := false
	for _, p := range procs {
		if p.DataDir == filepath.Clean(dir) && p.PID == pid {
			found = true
		}
	}
	if !running || !found {
		t.Fatalf("running=%v pid=%d not found among postmasters %v", running, pid, procs)
	}

	if err := rt.Stop(ctx, inst, "fast"); err != nil {
		t.Fatal(err)
	}
	if _, running := rt.Running(dir); running {
		t.Fatal("still running after Stop")
	}
	if err := rt.Stop(ctx, inst, "fast"); err != nil {
		t.Fatalf("stopping a stopped instance: %v", err)
	}
	// Settings are arguments: the agent writes nothing into the data
	// directory's configuration.
	before, _ := os.ReadFile(filepath.Join(dir, "postgresql.conf"))
	if err := rt.Start(ctx, inst); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, "postgresql.conf"))
	if string(before) != string(after) {
		t.Fatalf("Start changed postgresql.conf:\n%s", after)
	}
	for _, name := range []string{"postgresql.thinlab.conf", "pg_hba.conf.thinlab", "thinlab-postgres.log"} {
		if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
			t.Errorf("Start wrote %s into the data directory", name)
		}
	}
	rt.Kill(inst)
	if _, running := rt.Running(dir); running {
		t.Fatal("still running after Kill")
	}
}

func TestStartFailureLeavesNoProcess(t *testing.T) {
	ctx := ctxT(t)
	dir := pgtest.InitDataDir(t)
	rt := newRuntime(t, Options{User: pgtest.OSUser(t), RunDir: runDir(t), ListenAddresses: "127.0.0.1"})
	inst := Instance{Name: randName("rt-"), DataDir: dir, Port: pgtest.FreePort(t),
		Settings: map[string]string{"no_such_setting": "1"}}
	err := rt.Start(ctx, inst)
	if err == nil || !strings.Contains(err.Error(), "no_such_setting") {
		t.Fatalf("err = %v, want it to name the bad setting", err)
	}
	if _, running := rt.Running(dir); running {
		t.Fatal("postgres left running after a failed start")
	}
}
