package server

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/internal/pgcluster"
)

// embeddedDB is the PostgreSQL cluster the server runs itself when no
// database URL is configured: DataDir/pg/data, reachable only through a
// Unix socket in DataDir/pg/run, run as the postgres OS user.
type embeddedDB struct {
	cluster *pgcluster.Cluster
	port    int
}

// embeddedDatabase is the database the platform uses inside the cluster.
const embeddedDatabase = "thinlab"

func startEmbedded(ctx context.Context, cfg Config, logger *slog.Logger) (*embeddedDB, string, error) {
	u, err := pgcluster.LookupUser(cfg.Database.OSUser)
	if err != nil {
		return nil, "", fmt.Errorf("database.osUser: %w", err)
	}
	root := filepath.Join(cfg.DataDir, "pg")
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, "", fmt.Errorf("dataDir %s: %w", cfg.DataDir, err)
	}
	if err := reachable(cfg.DataDir, u); err != nil {
		return nil, "", err
	}
	runDir := filepath.Join(root, "run")
	for _, dir := range []string{root, runDir} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, "", fmt.Errorf("dataDir %s: %w", cfg.DataDir, err)
		}
		if err := os.Chown(dir, int(u.UID), int(u.GID)); err != nil {
			return nil, "", fmt.Errorf("hand %s to OS user %s: %w", dir, u.Name, err)
		}
	}
	// The socket path must fit sun_path (108 bytes).
	if len(runDir)+len("/.s.PGSQL.65535") >= 108 {
		return nil, "", fmt.Errorf("dataDir %s is too long for a Unix socket path: use a shorter directory", cfg.DataDir)
	}
	c := &pgcluster.Cluster{
		DataDir: filepath.Join(root, "data"), BinDir: cfg.Database.PostgresBinDir,
		User: u, SocketDir: runDir, Logger: logger,
	}
	if _, err := os.Stat(filepath.Join(c.DataDir, "PG_VERSION")); os.IsNotExist(err) {
		logger.Info("initializing the embedded platform database", "dir", c.DataDir)
		if err := c.Init(ctx, pgcluster.InitOptions{}); err != nil {
			os.RemoveAll(c.DataDir)
			return nil, "", fmt.Errorf("initialize the embedded database: %w", err)
		}
	}
	if c.Running() {
		return nil, "", fmt.Errorf("the embedded database in %s is already running: is another thinlab platform using dataDir %s?", c.DataDir, cfg.DataDir)
	}
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	// Socket only: the port number just names the socket file.
	if err := c.Start(ctx, port, "", nil); err != nil {
		return nil, "", fmt.Errorf("start the embedded database: %w", err)
	}
	e := &embeddedDB{cluster: c, port: port}
	if err := e.ensureDatabase(ctx); err != nil {
		e.stop(context.Background())
		return nil, "", err
	}
	logger.Info("embedded platform database running", "dir", c.DataDir, "socket", runDir, "port", port)
	return e, c.SocketConnString(port, "postgres", embeddedDatabase), nil
}

func (e *embeddedDB) ensureDatabase(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, e.cluster.SocketConnString(e.port, "postgres", "postgres"))
	if err != nil {
		return fmt.Errorf("connect to the embedded database: %w", err)
	}
	defer conn.Close(context.Background())
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", embeddedDatabase).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		if _, err := conn.Exec(ctx, "CREATE DATABASE "+embeddedDatabase); err != nil {
			return fmt.Errorf("create the embedded platform database: %w", err)
		}
	}
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
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
