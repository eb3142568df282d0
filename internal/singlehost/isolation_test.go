package singlehost_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/pgcluster"
	"github.com/thinlab/thinlab/platform/server"
)

const clonePassword = "Sh4red-Host-Attack-Pw-91"

// reachedMarker is what psql prints when an attack query ran.
const reachedMarker = "REACHED-AS-"

// attackClone is a superuser clone of a real agent engine on a btrfs pool.
type attackClone struct {
	ctx  context.Context
	pool storage.Pool
	c    clone.Clone
}

// startClone runs a clone.Manager over a fresh btrfs loop pool with one
// snapshot and creates a clone whose user is a superuser (the default).
// Everything is removed at cleanup, in reverse order: manager, clone
// processes and datasets, then the pool (unmount, loop detach).
func startClone(t *testing.T) *attackClone {
	t.Helper()
	// Not t.Context(): it ends before the cleanups that still use the
	// manager.
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	p := clonetest.NewPool(t)
	clonetest.Fill(t, p, "CREATE TABLE production_secret (v text)", "INSERT INTO production_secret VALUES ('card 4111')")
	cfg := clonetest.Config(t, p, 2)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	m, err := clone.NewManager(ctx, clone.Options{Config: cfg, Pools: []storage.Pool{p}, Logger: logger, CheckInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { clonetest.KillClones(p) })
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("close the clone manager: %v", err)
		}
	})
	if _, err := m.Create(ctx, clone.CreateRequest{ID: "hostile", Username: "mallory", Password: clonePassword}); err != nil {
		t.Fatalf("create the clone: %v", err)
	}
	c, err := m.Wait(ctx, "hostile")
	if err != nil || c.Status != clone.StatusOK {
		t.Fatalf("clone is %s (%s, %v), want OK", c.Status, c.StatusMessage, err)
	}
	return &attackClone{ctx: ctx, pool: p, c: c}
}

func (a *attackClone) connect(t *testing.T) *pgx.Conn {
	t.Helper()
	cc, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable", a.c.Host, a.c.Port, a.c.Username, a.c.DBName))
	if err != nil {
		t.Fatal(err)
	}
	cc.Password = clonePassword
	conn, err := pgx.ConnectConfig(a.ctx, cc)
	if err != nil {
		t.Fatalf("connect to the clone as %s: %v", a.c.Username, err)
	}
	return conn
}

// shell runs script as the clone's OS user through COPY ... FROM PROGRAM,
// what a hostile clone superuser does, and returns its output (stdout and
// stderr) followed by "rc=<exit status>".
func (a *attackClone) shell(t *testing.T, script string) string {
	t.Helper()
	conn := a.connect(t)
	defer func() {
		if err := conn.Close(t.Context()); err != nil {
			t.Errorf("close the connection to the clone: %v", err)
		}
	}()
	// COPY's text format splits on tabs and unescapes backslashes: neither
	// may reach it, and the script travels base64-encoded.
	enc := base64.StdEncoding.EncodeToString([]byte("out=$( (\n" + script + "\n) 2>&1 ); rc=$?\nprintf '%s\\n' \"$out\" | tr '\\t\\\\' '  '\necho rc=$rc\n"))
	for _, q := range []string{
		"CREATE TEMP TABLE shell_out (line text)",
		fmt.Sprintf("COPY shell_out FROM PROGRAM 'echo %s | base64 -d | sh'", enc),
	} {
		if _, err := conn.Exec(a.ctx, q); err != nil {
			t.Fatalf("as the clone's superuser, %.60s: %v", q, err)
		}
	}
	var out string
	if err := conn.QueryRow(a.ctx, "SELECT coalesce(string_agg(line, E'\\n'), '') FROM shell_out").Scan(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

// psqlScript is the attack's psql line: never prompt, no psqlrc, no
// password in the environment, and a query that prints reachedMarker.
func psqlScript(psql, conninfo string) string {
	return fmt.Sprintf("unset PGPASSWORD PGPASSFILE PGSERVICE; PGCONNECT_TIMEOUT=5 %s -X -w -At -d '%s' -c \"SELECT '%s' || current_user\"", psql, conninfo, reachedMarker)
}

// startPlatform starts the platform with its embedded PostgreSQL (no
// database URL) as OS user osUser in a fresh data directory and returns
// that directory and the socket's port; the server is closed and the
// cluster killed at cleanup.
func startPlatform(t *testing.T, osUser string) (string, int) {
	t.Helper()
	dir, err := os.MkdirTemp("", "thinlab-singlehost-*")
	if err != nil {
		t.Fatal(err)
	}
	// Like /var/lib: every user may traverse it; the platform locks pg/.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	leftover := &pgcluster.Cluster{DataDir: filepath.Join(dir, "pg", "data")}
	t.Cleanup(func() {
		leftover.Kill()
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove the platform's data directory: %v", err)
		}
	})
	cfg := server.DefaultConfig()
	cfg.DataDir = dir
	cfg.Listen = "127.0.0.1:0"
	cfg.Database.OSUser = osUser
	srv, err := server.New(t.Context(), cfg, server.Options{Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatalf("start the platform with its embedded database as %s: %v", osUser, err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("close the platform: %v", err)
		}
	})
	entries, err := os.ReadDir(filepath.Join(dir, "pg", "run"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if p, ok := strings.CutPrefix(e.Name(), ".s.PGSQL."); ok && !strings.HasSuffix(p, ".lock") {
			port, err := strconv.Atoi(p)
			if err == nil {
				return dir, port
			}
		}
	}
	t.Fatalf("no socket of the embedded database in %s/pg/run: %v", dir, entries)
	return "", 0
}

// startOpenCluster starts what the attack must never find: a PostgreSQL
// with trust authentication on a socket every OS user can reach. The same
// psql line reaching it from the clone proves that the refusals below come
// from the platform's isolation, not from a broken attack.
func startOpenCluster(t *testing.T, binDir string) (string, int) {
	t.Helper()
	pg, err := pgcluster.LookupUser("postgres")
	if err != nil {
		t.Fatalf("the postgres OS user is missing (make deps installs postgresql-15): %v", err)
	}
	dir, err := os.MkdirTemp("", "thinlab-open-*")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Like Debian's /var/run/postgresql: postgres' own, open to everyone.
	sock := filepath.Join(dir, "run")
	c := &pgcluster.Cluster{DataDir: filepath.Join(dir, "data"), BinDir: binDir, User: pg, SocketDir: sock}
	t.Cleanup(func() {
		c.Kill()
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove the open cluster's directory: %v", err)
		}
	})
	if err := os.Mkdir(sock, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(sock, int(pg.UID), int(pg.GID)); err != nil {
		t.Fatal(err)
	}
	if err := c.Init(t.Context(), pgcluster.InitOptions{AuthLocal: "trust"}); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{"unix_socket_permissions": "0777"}
	maps.Copy(settings, pgcluster.FastSettings)
	if err := c.Start(t.Context(), port, "", settings); err != nil {
		t.Fatal(err)
	}
	return sock, port
}

// TestCloneCannotReachPlatformDatabase is issue 8's single-host attack: a
// clone superuser of a real agent, with a shell as its clone's OS user
// (COPY ... FROM PROGRAM), tries to read the embedded platform database's
// files and process environments, log into it over its Unix socket and
// TCP as every role it has, and read the agent pool's main dataset. Every
// attempt must fail for the expected reason; controls show that the same
// commands work where access is allowed.
func TestCloneCannotReachPlatformDatabase(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: loop devices, mounts, clone OS users and the platform's database user: run the tests as root (make test does)")
	}
	binDir, err := pgcluster.NewestBinDir("")
	if err != nil {
		t.Fatal(err)
	}
	psql := filepath.Join(binDir, "psql")
	a := startClone(t)

	var cloneUID int
	t.Run("control: the clone superuser runs shell commands as its own OS user", func(t *testing.T) {
		conn := a.connect(t)
		var super bool
		err := conn.QueryRow(a.ctx, "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user").Scan(&super)
		if cerr := conn.Close(t.Context()); cerr != nil {
			t.Errorf("close the connection to the clone: %v", cerr)
		}
		if err != nil || !super {
			t.Fatalf("the clone's user is superuser=%v (%v), want a superuser: the attack assumes the default", super, err)
		}
		out := a.shell(t, "cat PG_VERSION && id -u")
		lines := strings.Split(out, "\n")
		if !strings.Contains(out, "rc=0") || len(lines) < 3 {
			t.Fatalf("the clone cannot read its own PG_VERSION: %q", out)
		}
		cloneUID, _ = strconv.Atoi(lines[1])
		pg, _ := pgcluster.LookupUser("postgres")
		if cloneUID == 0 || cloneUID == int(pg.UID) {
			t.Fatalf("the clone's postgres runs as uid %d, want its own unprivileged uid (not root, not postgres %d)", cloneUID, pg.UID)
		}
	})
	if t.Failed() {
		return
	}

	t.Run("control: the attack's psql line reaches a trust cluster on an open socket", func(t *testing.T) {
		dir, port := startOpenCluster(t, binDir)
		out := a.shell(t, psqlScript(psql, fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres", dir, port)))
		if !strings.Contains(out, reachedMarker+"postgres") || !strings.Contains(out, "rc=0") {
			t.Fatalf("from the clone, psql did not reach an open trust cluster: %q; want %spostgres and rc=0 (the attack below would be vacuous)", out, reachedMarker)
		}
	})

	main := filepath.Join(a.pool.MainDir(), storage.DataSubdir)
	for _, osUser := range []string{server.DefaultEmbeddedOSUser, "postgres"} {
		t.Run("platform database as OS user "+osUser, func(t *testing.T) {
			dir, port := startPlatform(t, osUser)
			pgDir, run := filepath.Join(dir, "pg"), filepath.Join(dir, "pg", "run")
			pm := &pgcluster.Cluster{DataDir: filepath.Join(pgDir, "data")}
			pmPID, err := pm.PID()
			if err != nil || pmPID == 0 {
				t.Fatalf("no postmaster of the embedded database: %d %v", pmPID, err)
			}

			// Control: the socket path and port are right, and the
			// database answers the platform's own OS user (root, mapped
			// to its superuser by peer authentication).
			cmd := exec.CommandContext(t.Context(), "sh", "-c", psqlScript(psql, fmt.Sprintf("host=%s port=%d user=postgres dbname=thinlab", run, port)))
			if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), reachedMarker+"postgres") {
				t.Fatalf("control: root's psql to the platform's socket: %v: %q; want %spostgres", err, out, reachedMarker)
			}

			denied := regexp.MustCompile(`Permission denied`)
			type attempt struct {
				name, script string
				want         *regexp.Regexp
			}
			attempts := []attempt{
				{"list the platform's dataDir/pg", "ls -la " + pgDir, denied},
				{"list the data directory", "ls " + filepath.Join(pgDir, "data"), denied},
				{"read PG_VERSION", "cat " + filepath.Join(pgDir, "data", "PG_VERSION"), denied},
				{"read pg_control", "od -c " + filepath.Join(pgDir, "data", "global", "pg_control") + " >/dev/null", denied},
				{"read the server log", "cat " + filepath.Join(pgDir, "data", "thinlab-postgres.log"), denied},
				{"list the socket directory", "ls " + run, denied},
				{"the postmaster's environment", fmt.Sprintf("cat /proc/%d/environ", pmPID), denied},
				{"the platform process's environment (its DSNs live in memory)", fmt.Sprintf("cat /proc/%d/environ", os.Getpid()), denied},
				{"the agent pool's main dataset", "cat " + filepath.Join(main, "PG_VERSION"), denied},
				{"the agent pool's main dataset listing", "ls " + main, denied},
			}
			// Every role the cluster has or might map: its bootstrap
			// superuser, the platform's two roles, its OS user's and
			// root's names, and the clone's own user name.
			roles := []string{"postgres", "thinlab_owner", "thinlab_app", "root", "mallory"}
			if !slices.Contains(roles, osUser) {
				roles = append(roles, osUser)
			}
			for _, role := range roles {
				attempts = append(attempts,
					attempt{"socket as " + role, psqlScript(psql, fmt.Sprintf("host=%s port=%d user=%s dbname=thinlab", run, port, role)), denied},
					// Socket only: nothing listens; were it to listen, a
					// password would be required.
					attempt{"TCP 127.0.0.1 as " + role, psqlScript(psql, fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=thinlab sslmode=disable", port, role)),
						regexp.MustCompile(`Connection refused|no password supplied|password authentication failed`)},
				)
			}
			for _, at := range attempts {
				t.Run(at.name, func(t *testing.T) {
					out := a.shell(t, at.script)
					t.Logf("%s\n%s", at.script, out)
					if strings.Contains(out, "rc=0") || strings.Contains(out, reachedMarker) || !at.want.MatchString(out) {
						t.Errorf("as the clone's OS user (uid %d), %q: %q; want a non-zero rc and %q", cloneUID, at.script, out, at.want)
					}
				})
			}
		})
	}
}
