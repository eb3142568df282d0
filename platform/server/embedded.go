package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/internal/pgcluster"
)

// embeddedDB is the PostgreSQL cluster the server runs itself when no
// database URL is configured: DataDir/pg/data, reachable only through a
// Unix socket in DataDir/pg/run, run as its own OS user (not the shared
// postgres user that clones and other servers run as), with both
// directories 0700 for that user. Authentication is never trust: the
// bootstrap superuser "postgres" is reachable only by peer authentication
// mapped from the platform process's and the cluster's OS users, and the
// two application roles log in with SCRAM passwords that are generated
// afresh at every start and kept only in memory:
//   - thinlab_owner owns the database and its tables and runs migrations;
//   - thinlab_app is what the platform runs as: no superuser, no ownership,
//     only SELECT and INSERT on the audit log.
type embeddedDB struct {
	cluster    *pgcluster.Cluster
	port       int
	ownerDSN   string
	runtimeDSN string
}

// Names inside the embedded cluster.
const (
	embeddedDatabase = "thinlab"
	embeddedOwner    = "thinlab_owner"
	embeddedRuntime  = "thinlab_app"
	// DefaultEmbeddedOSUser runs the embedded cluster; created when missing.
	DefaultEmbeddedOSUser = "thinlab-platform"
)

// embeddedOSUser returns the configured OS user, creating the default one
// (a system account without login) when it does not exist yet.
func embeddedOSUser(name string, logger *slog.Logger) (pgcluster.OSUser, error) {
	u, err := pgcluster.LookupUser(name)
	if err == nil || name != DefaultEmbeddedOSUser {
		return u, err
	}
	//nolint:gosec // G204: a fixed program with separate arguments, no shell; the name is database.osUser from the operator's config
	out, cerr := exec.Command("useradd", "--system", "--user-group", "--no-create-home",
		"--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name).CombinedOutput()
	if cerr != nil {
		return u, fmt.Errorf("create OS user %s for the embedded database (useradd: %v: %s); create it yourself or set database.osUser", name, cerr, strings.TrimSpace(string(out)))
	}
	logger.Info("created the OS user of the embedded platform database", "user", name)
	return pgcluster.LookupUser(name)
}

func startEmbedded(ctx context.Context, cfg Config, logger *slog.Logger) (*embeddedDB, error) {
	u, err := embeddedOSUser(cfg.Database.OSUser, logger)
	if err != nil {
		return nil, fmt.Errorf("database.osUser: %w", err)
	}
	me, err := user.Current()
	if err != nil {
		return nil, fmt.Errorf("who runs the platform: %w", err)
	}
	root := filepath.Join(cfg.DataDir, "pg")
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil { //nolint:gosec // G301: database.osUser must traverse dataDir to reach dataDir/pg (checked by reachable below); the data itself is in 0700 directories
		return nil, fmt.Errorf("dataDir %s: %w", cfg.DataDir, err)
	}
	if err := reachable(cfg.DataDir, u); err != nil {
		return nil, err
	}
	runDir := filepath.Join(root, "run")
	dataDir := filepath.Join(root, "data")
	// A cluster from an older version ran as another OS user (postgres):
	// hand it over once.
	if fi, err := os.Stat(dataDir); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != u.UID {
			logger.Warn("the embedded database belongs to another OS user: handing it to "+u.Name, "dir", dataDir, "uid", st.Uid)
			if err := u.ChownR(root); err != nil {
				return nil, fmt.Errorf("hand %s to OS user %s: %w", root, u.Name, err)
			}
		}
	}
	for _, dir := range []string{root, runDir} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("dataDir %s: %w", cfg.DataDir, err)
		}
		if err := os.Chown(dir, int(u.UID), int(u.GID)); err != nil {
			return nil, fmt.Errorf("hand %s to OS user %s: %w", dir, u.Name, err)
		}
		if err := os.Chmod(dir, 0o700); err != nil { //nolint:gosec // G302: a directory, 0700 is owner-only (G302 expects file modes)
			return nil, err
		}
	}
	// The socket path must fit sun_path (108 bytes).
	if len(runDir)+len("/.s.PGSQL.65535") >= 108 {
		return nil, fmt.Errorf("dataDir %s is too long for a Unix socket path: use a shorter directory", cfg.DataDir)
	}
	// Authentication files live outside the data directory, owned by the
	// platform's own user, so the database's OS user cannot loosen them.
	confDir := filepath.Join(cfg.DataDir, "pg-auth")
	if err := writeAuthConfig(confDir, u, me.Username); err != nil {
		return nil, err
	}
	c := &pgcluster.Cluster{
		DataDir: dataDir, BinDir: cfg.Database.PostgresBinDir,
		User: u, SocketDir: runDir, Logger: logger,
	}
	if _, err := os.Stat(filepath.Join(c.DataDir, "PG_VERSION")); os.IsNotExist(err) {
		logger.Info("initializing the embedded platform database", "dir", c.DataDir)
		if err := c.Init(ctx, pgcluster.InitOptions{AuthLocal: "peer", AuthHost: "scram-sha-256"}); err != nil {
			_ = os.RemoveAll(c.DataDir) // a half-made data directory; the initdb error is what is returned
			return nil, fmt.Errorf("initialize the embedded database: %w", err)
		}
	}
	if c.Running() {
		return nil, fmt.Errorf("the embedded database in %s is already running: is another thinlab platform using dataDir %s?", c.DataDir, cfg.DataDir)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	// Socket only: the port number just names the socket file.
	//nolint:gosec // G101: postgres setting names (password_encryption), no credentials
	settings := map[string]string{
		"hba_file":                filepath.Join(confDir, "pg_hba.conf"),
		"ident_file":              filepath.Join(confDir, "pg_ident.conf"),
		"unix_socket_permissions": "0700",
		"password_encryption":     "scram-sha-256",
	}
	if err := c.Start(ctx, port, "", settings); err != nil {
		return nil, fmt.Errorf("start the embedded database: %w", err)
	}
	e := &embeddedDB{cluster: c, port: port}
	if err := e.setupRoles(ctx); err != nil {
		return nil, errors.Join(err, e.stop(context.Background()))
	}
	logger.Info("embedded platform database running", "dir", c.DataDir, "socket", runDir, "port", port, "os_user", u.Name)
	return e, nil
}

// writeAuthConfig writes pg_hba.conf (peer for the bootstrap superuser
// through the "platform" map, SCRAM for every other role, nothing over
// TCP) and pg_ident.conf (the platform's and the cluster's OS users may be
// the superuser).
func writeAuthConfig(dir string, u pgcluster.OSUser, processUser string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil { //nolint:gosec // G301: the database OS user reads pg_hba.conf and pg_ident.conf in it; it is owned by the platform's user, so the database cannot loosen them
		return fmt.Errorf("dataDir: %w", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil { //nolint:gosec // the database OS user reads the files in it; they are owned by the platform's user, so it cannot change them
		return fmt.Errorf("dataDir: %w", err)
	}
	hba := "# Written by thinlab at every start; edits are lost.\n" +
		"local all postgres peer map=platform\n" +
		"local all all scram-sha-256\n"
	ident := "# Written by thinlab at every start; edits are lost.\n" +
		"platform " + processUser + " postgres\n" +
		"platform " + u.Name + " postgres\n"
	for name, body := range map[string]string{"pg_hba.conf": hba, "pg_ident.conf": ident} {
		p := filepath.Join(dir, name)
		// Replace, never follow, whatever is at the path.
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("replace %s: %w", p, err)
		}
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o644) //nolint:gosec // G302, G304: a fixed name under dataDir, never following a link; 0644 so the database OS user can read it, not write it
		if err != nil {
			return fmt.Errorf("write %s: %w", p, err)
		}
		_, err = f.WriteString(body)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write %s: %w", p, err)
		}
	}
	return nil
}

func randomPassword() string {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return hex.EncodeToString(b)
}

// setupRoles creates (or refreshes) the owner and runtime roles with new
// passwords, the database owned by the owner, and hands objects an older
// version created as the superuser to the owner.
func (e *embeddedDB) setupRoles(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, e.cluster.SocketConnString(e.port, "postgres", "postgres"))
	if err != nil {
		return fmt.Errorf("connect to the embedded database as its superuser: %w", err)
	}
	defer func() { _ = conn.Close(context.Background()) }()
	ownerPW, runtimePW := randomPassword(), randomPassword()
	for role, pw := range map[string]string{embeddedOwner: ownerPW, embeddedRuntime: runtimePW} {
		var exists bool
		if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", role).Scan(&exists); err != nil {
			return err
		}
		verb := "ALTER"
		if !exists {
			verb = "CREATE"
		}
		// Passwords are hex, so quoting them is safe; statements are not logged.
		q := fmt.Sprintf("%s ROLE %s LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD '%s'", verb, role, pw)
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("set up role %s in the embedded database: %w", role, err)
		}
	}
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", embeddedDatabase).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		if _, err := conn.Exec(ctx, "CREATE DATABASE "+embeddedDatabase+" OWNER "+embeddedOwner); err != nil {
			return fmt.Errorf("create the embedded platform database: %w", err)
		}
	} else if _, err := conn.Exec(ctx, "ALTER DATABASE "+embeddedDatabase+" OWNER TO "+embeddedOwner); err != nil {
		return err
	}
	// Objects made by an older version as the superuser go to the owner.
	db, err := pgx.Connect(ctx, e.cluster.SocketConnString(e.port, "postgres", embeddedDatabase))
	if err != nil {
		return fmt.Errorf("connect to the embedded platform database: %w", err)
	}
	defer func() { _ = db.Close(context.Background()) }()
	_, err = db.Exec(ctx, `DO $$
DECLARE r record;
BEGIN
  FOR r IN SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v') AND pg_get_userbyid(c.relowner) <> '`+embeddedOwner+`' LOOP
    EXECUTE format('ALTER TABLE public.%I OWNER TO `+embeddedOwner+`', r.relname);
  END LOOP;
  FOR r IN SELECT p.oid::regprocedure AS fn FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
           WHERE n.nspname = 'public' AND pg_get_userbyid(p.proowner) <> '`+embeddedOwner+`' LOOP
    EXECUTE format('ALTER FUNCTION %s OWNER TO `+embeddedOwner+`', r.fn);
  END LOOP;
END $$`)
	if err != nil {
		return fmt.Errorf("hand the platform's tables to %s: %w", embeddedOwner, err)
	}
	dsn := func(role, pw string) string {
		return e.cluster.SocketConnString(e.port, role, embeddedDatabase) + " password=" + pw
	}
	e.ownerDSN, e.runtimeDSN = dsn(embeddedOwner, ownerPW), dsn(embeddedRuntime, runtimePW)
	return nil
}

func (e *embeddedDB) stop(ctx context.Context) error {
	return e.cluster.Stop(ctx, "fast")
}

// reachable checks that OS user u can traverse every directory down to dir:
// initdb otherwise fails with a bare "Permission denied".
func reachable(dir string, u pgcluster.OSUser) error {
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("dataDir %s: %w", dir, err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		mode := fi.Mode().Perm()
		if ok {
			switch {
			case st.Uid == u.UID && mode&0o100 != 0:
			case st.Gid == u.GID && mode&0o010 != 0:
			case mode&0o001 != 0:
			default:
				return fmt.Errorf("dataDir %s: OS user %s cannot enter %s (mode %04o): chmod o+x %s or choose another dataDir", dir, u.Name, d, mode, d)
			}
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port for the embedded database: %w", err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}
