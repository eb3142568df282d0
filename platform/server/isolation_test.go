package server

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/internal/pgcluster"
)

// auditTamperAttacks are what a compromised application role would try
// on the append-only audit log.
var auditTamperAttacks = []string{
	"ALTER TABLE audit_events DISABLE TRIGGER ALL",
	"ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update_delete",
	"DROP TRIGGER audit_events_no_update_delete ON audit_events",
	"DROP TRIGGER audit_events_no_truncate ON audit_events",
	"UPDATE audit_events SET action = 'nothing.happened'",
	"DELETE FROM audit_events",
	"TRUNCATE audit_events",
	"DROP TABLE audit_events",
	"ALTER TABLE audit_events OWNER TO thinlab_app",
	"DROP FUNCTION audit_events_append_only() CASCADE",
	"SET session_replication_role = replica",
}

// TestEmbeddedDatabaseIsolation starts the platform with its embedded
// PostgreSQL and attacks it: the runtime role the platform uses cannot
// tamper with the audit log; no role logs in without a password; the
// shared postgres OS user (clones run as it) can neither read the data
// directory nor reach the socket.
func TestEmbeddedDatabaseIsolation(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("needs root to run PostgreSQL as another user: run the tests as root")
	}
	dir, err := os.MkdirTemp("", "platform-iso-*")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cluster := &pgcluster.Cluster{DataDir: filepath.Join(dir, "pg", "data")}
	t.Cleanup(func() {
		cluster.Kill()
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
	})
	cfg := DefaultConfig()
	cfg.DataDir = dir
	cfg.Listen = "127.0.0.1:0"
	ctx := t.Context()
	srv, err := New(ctx, cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("close the server: %v", err)
		}
	})
	e := srv.embedded

	pu, err := pgcluster.LookupUser(DefaultEmbeddedOSUser)
	if err != nil {
		t.Fatalf("the embedded database's OS user was not created: %v", err)
	}
	for _, d := range []string{filepath.Join(dir, "pg"), filepath.Join(dir, "pg", "data"), filepath.Join(dir, "pg", "run")} {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != pu.UID || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: uid %d mode %04o, want uid %d (%s) mode 0700", d, st.Uid, fi.Mode().Perm(), pu.UID, DefaultEmbeddedOSUser)
		}
	}

	t.Run("runtime role cannot tamper with the audit log", func(t *testing.T) {
		conn, err := pgx.Connect(ctx, e.runtimeDSN)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = conn.Close(t.Context()) }()
		if _, err := conn.Exec(ctx, "INSERT INTO audit_events (action, result) VALUES ('probe', 'success')"); err != nil {
			t.Fatalf("runtime role cannot append: %v", err)
		}
		var n int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM audit_events").Scan(&n); err != nil || n == 0 {
			t.Fatalf("runtime role cannot read: %d %v", n, err)
		}
		for _, q := range auditTamperAttacks {
			_, err := conn.Exec(ctx, q)
			if err == nil {
				t.Errorf("as the runtime role, %q succeeded; want refused", q)
			}
			t.Logf("%s: %v", q, err)
		}
		var super bool
		if err := conn.QueryRow(ctx, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user").Scan(&super); err != nil {
			t.Fatalf("read rolsuper: %v", err)
		}
		if super {
			t.Error("the runtime role is a superuser")
		}
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM audit_events WHERE action = 'probe'").Scan(&n); err != nil || n != 1 {
			t.Errorf("audit events after the attacks: %d probes (%v), want 1", n, err)
		}
	})

	t.Run("no trust authentication", func(t *testing.T) {
		for _, role := range []string{embeddedRuntime, embeddedOwner} {
			conn, err := pgx.Connect(ctx, e.cluster.SocketConnString(e.port, role, embeddedDatabase))
			if err == nil {
				_ = conn.Close(t.Context()) // the login should not have happened at all; that is the failure
				t.Errorf("role %s logged in without a password", role)
			}
		}
	})

	t.Run("the postgres OS user cannot reach it", func(t *testing.T) {
		pg, err := pgcluster.LookupUser("postgres")
		if err != nil {
			t.Fatalf("the postgres OS user is missing (make deps installs postgresql-15): %v", err)
		}
		psql := filepath.Join(e.cluster.BinDir, "psql")
		attempts := [][]string{
			{"cat", filepath.Join(dir, "pg", "data", "PG_VERSION")},
			{"ls", filepath.Join(dir, "pg", "data")},
			{"ls", filepath.Join(dir, "pg", "run")},
			{psql, "-h", filepath.Join(dir, "pg", "run"), "-p", strconv.Itoa(e.port), "-U", "postgres", "-d", embeddedDatabase, "-w", "-c", "SELECT 1"},
			{psql, "-h", filepath.Join(dir, "pg", "run"), "-p", strconv.Itoa(e.port), "-U", embeddedRuntime, "-d", embeddedDatabase, "-w", "-c", "SELECT 1"},
		}
		for _, a := range attempts {
			cmd := exec.CommandContext(ctx, a[0], a[1:]...)
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: pg.Credential()}
			cmd.Dir = "/"
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Errorf("as OS user postgres, %s succeeded: %s", strings.Join(a, " "), out)
			}
			t.Logf("%s: %s", a[0], strings.TrimSpace(string(out)))
		}
	})
}
