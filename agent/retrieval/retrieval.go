package retrieval

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/robfig/cron/v3"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

// SnapshotMessage is the message of snapshots made by a logical refresh.
const SnapshotMessage = "logical refresh"

// localPort names the pool postgres' socket; it listens on no TCP address.
const localPort = 5432

// restoreSettings make the restore fast; they are command-line flags, so
// the snapshot's postgresql.conf stays as initdb wrote it.
var restoreSettings = map[string]string{
	"fsync":                "off",
	"synchronous_commit":   "off",
	"full_page_writes":     "off",
	"autovacuum":           "off",
	"wal_level":            "minimal",
	"max_wal_senders":      "0",
	"archive_mode":         "off",
	"max_wal_size":         "4GB",
	"checkpoint_timeout":   "30min",
	"maintenance_work_mem": "256MB",
}

// Retention deletes a pool's snapshots beyond what the agent keeps
// (agent/snapshot's Policy); it logs each deletion itself.
type Retention interface {
	Retain(ctx context.Context, p storage.Pool) ([]string, error)
}

// Options configure a Retriever.
type Options struct {
	Config *config.Config
	// Pool is the pool named by retrieval.pool.
	Pool   storage.Pool
	Logger *slog.Logger
	// Retention, when set, runs after every successful refresh; its
	// errors are logged and never fail the refresh.
	Retention Retention
}

// Retriever runs logical refreshes, on demand and on the schedule.
type Retriever struct {
	cfg    config.Retrieval
	binDir string // newest installed PostgreSQL (pg_dump must not be older than the source)
	user   pgcluster.OSUser
	pool   storage.Pool
	log    *slog.Logger
	sched  cron.Schedule
	retain Retention

	mu      sync.Mutex
	status  Status
	running bool

	// onStart, when set (tests), is called with each pg_dump and
	// pg_restore process right after it starts.
	onStart func(name string, pid int)

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	cron   *cron.Cron
}

// Result describes one finished refresh.
type Result struct {
	Snapshot storage.Snapshot
	// DumpStartedAt is when pg_dump started (second precision); it is the
	// snapshot's DataStateAt.
	DumpStartedAt time.Time
	Databases     []string
	// Bytes is the size of the dump streamed from pg_dump to pg_restore.
	Bytes int64
}

// New builds a Retriever. With retrieval.mode empty it only reports
// status "inactive" and refuses refreshes.
func New(opt Options) (*Retriever, error) {
	if opt.Config == nil {
		return nil, errors.New("retrieval: no config")
	}
	log := opt.Logger
	if log == nil {
		log = slog.Default()
	}
	r := &Retriever{cfg: opt.Config.Retrieval, pool: opt.Pool, retain: opt.Retention, log: log.With("component", "retrieval")}
	r.status = Status{Mode: ModeUnknown, Status: StatusInactive, Alerts: map[string]Alert{}}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	if r.cfg.Mode == "" {
		return r, nil
	}
	if opt.Pool == nil {
		return nil, errors.New("retrieval: no pool to fill (retrieval.pool)")
	}
	r.status.Mode = ModeLogical
	u, err := pgcluster.LookupUser(opt.Config.Provision.OSUser)
	if err != nil {
		return nil, fmt.Errorf("provision.osUser: %w", err)
	}
	r.user = u
	if r.binDir, err = pgcluster.NewestBinDir(opt.Config.Provision.PgBinRoot); err != nil {
		return nil, fmt.Errorf("provision.pgBinRoot: %w", err)
	}
	if r.cfg.RefreshSchedule != "" {
		if r.sched, err = cron.ParseStandard(r.cfg.RefreshSchedule); err != nil {
			return nil, fmt.Errorf("retrieval.refreshSchedule: %w", err)
		}
	}
	params, err := sourceParams(r.cfg.Source)
	if err != nil {
		return nil, err
	}
	if why := insecureSSL(params); why != "" {
		r.log.Warn("the retrieval source connection is insecure: set retrieval.source.sslRootCert (sslMode verify-full)", "reason", why)
	}
	// The last refresh is known from the pool itself: its newest snapshot
	// made by a logical refresh.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if snaps, err := r.pool.Snapshots(ctx); err == nil {
		for _, s := range snaps {
			if s.Message == SnapshotMessage {
				r.status.Status = StatusFinished
				r.status.LastRefresh = s.CreatedAt
				r.status.SnapshotID = s.ID
				break
			}
		}
	}
	return r, nil
}

// Start begins the refresh schedule (if any), and a first refresh when
// retrieval.refreshOnStart is set and the pool has no snapshot. A refresh
// interrupted by an agent crash left a postgres running in the pool's
// main dataset: it is stopped here.
func (r *Retriever) Start(ctx context.Context) {
	if r.cfg.Mode == "" {
		return
	}
	c := r.mainCluster()
	if c.Running() {
		r.log.Warn("stopping the pool's postgres left by an interrupted refresh", "datadir", c.DataDir)
		c.Kill()
	}
	if r.sched != nil {
		r.cron = cron.New()
		r.cron.Schedule(r.sched, cron.FuncJob(func() {
			if err := r.FullRefresh(); err != nil {
				r.log.Warn("scheduled refresh skipped", "err", err)
			}
		}))
		r.cron.Start()
	}
	if r.cfg.RefreshOnStart {
		if snaps, err := r.pool.Snapshots(ctx); err == nil && len(snaps) == 0 {
			if err := r.FullRefresh(); err != nil {
				r.log.Warn("refresh on start skipped", "err", err)
			}
		}
	}
}

// Status reports the retrieval state.
func (r *Retriever) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.status
	s.Alerts = make(map[string]Alert, len(r.status.Alerts))
	maps.Copy(s.Alerts, r.status.Alerts)
	if r.sched != nil {
		s.NextRefresh = r.sched.Next(time.Now())
	}
	return s
}

// FullRefresh starts a full refresh in the background. It returns
// ErrRefreshRunning while one runs and ErrNotConfigured without a
// retrieval mode.
func (r *Retriever) FullRefresh() error {
	if err := r.begin(); err != nil {
		return err
	}
	r.wg.Go(func() {
		// refreshAndRecord logs the outcome and keeps it in the status.
		_, _ = r.run(r.ctx)
	})
	return nil
}

// Refresh runs a full refresh and waits for it.
func (r *Retriever) Refresh(ctx context.Context) (Result, error) {
	if err := r.begin(); err != nil {
		return Result{}, err
	}
	return r.run(ctx)
}

func (r *Retriever) begin() error {
	if r.cfg.Mode == "" {
		return ErrNotConfigured
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.running {
		return ErrRefreshRunning
	}
	if r.ctx.Err() != nil {
		return errors.New("retrieval is shutting down")
	}
	r.running = true
	r.status.Status = StatusRefreshing
	return nil
}

func (r *Retriever) run(ctx context.Context) (Result, error) {
	res, err := r.refreshAndRecord(ctx)
	// Retention runs once the refresh is recorded as finished: its new
	// snapshot is the newest, so it is always kept.
	if err == nil && r.retain != nil {
		if _, rerr := r.retain.Retain(ctx, r.pool); rerr != nil {
			r.log.Warn("snapshot retention after the refresh failed", "pool", r.pool.Name(), "err", rerr)
		}
	}
	return res, err
}

// refreshAndRecord runs one refresh and records its outcome in the status.
func (r *Retriever) refreshAndRecord(ctx context.Context) (Result, error) {
	start := time.Now()
	r.log.Info("logical refresh started", "pool", r.pool.Name())
	res, err := r.refresh(ctx)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.running = false
	if err != nil {
		r.status.Status = StatusFailed
		a := r.status.Alerts[AlertRefreshFailed]
		a.Level = "error"
		a.Message = err.Error()
		a.LastSeen = time.Now()
		a.Count++
		r.status.Alerts[AlertRefreshFailed] = a
		r.log.Error("logical refresh failed", "pool", r.pool.Name(), "err", err, "elapsed", time.Since(start))
		return res, err
	}
	r.status.Status = StatusFinished
	r.status.LastRefresh = time.Now()
	r.status.SnapshotID = res.Snapshot.ID
	delete(r.status.Alerts, AlertRefreshFailed)
	r.log.Info("logical refresh finished", "pool", r.pool.Name(), "snapshot", res.Snapshot.ID, "databases", res.Databases, "bytes", res.Bytes, "elapsed", time.Since(start))
	return res, nil
}

func (r *Retriever) mainCluster() *pgcluster.Cluster {
	return &pgcluster.Cluster{DataDir: filepath.Join(r.pool.MainDir(), storage.DataSubdir), BinDir: r.binDir, User: r.user, Logger: r.log}
}

// refresh re-creates the pool's PGDATA with initdb, restores the source
// into it, stops it cleanly and snapshots it.
func (r *Retriever) refresh(ctx context.Context) (Result, error) {
	var res Result
	params, err := sourceParams(r.cfg.Source)
	if err != nil {
		return res, err
	}
	dbs := r.cfg.Databases
	if len(dbs) == 0 {
		if dbs, err = listDatabases(ctx, params); err != nil {
			return res, err
		}
	}
	if len(dbs) == 0 {
		return res, errors.New("the source has no databases to copy")
	}
	res.Databases = dbs

	main := r.pool.MainDir()
	if err := os.Chown(main, int(r.user.UID), int(r.user.GID)); err != nil {
		return res, fmt.Errorf("hand the pool's main dataset to %s: %w", r.user.Name, err)
	}
	c := r.mainCluster()
	if c.Running() {
		c.Kill()
	}
	// A full refresh starts from an empty cluster, so objects dropped at
	// the source disappear; earlier data lives on in the snapshots.
	if err := os.RemoveAll(c.DataDir); err != nil {
		return res, fmt.Errorf("clear the pool's data directory: %w", err)
	}
	if err := c.Init(ctx, pgcluster.InitOptions{}); err != nil {
		return res, fmt.Errorf("initdb in the pool: %w", err)
	}
	if err := c.Start(ctx, localPort, "", restoreSettings); err != nil {
		return res, fmt.Errorf("start the pool's postgres: %w", err)
	}
	stopped := false
	defer func() {
		if !stopped {
			c.Kill()
		}
	}()

	// Snapshot IDs have second precision: a refresh must not start within
	// the second of the previous snapshot's data.
	if snaps, err := r.pool.Snapshots(ctx); err == nil && len(snaps) > 0 {
		for !time.Now().UTC().Truncate(time.Second).After(snaps[0].DataStateAt) {
			select {
			case <-ctx.Done():
				return res, ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	// pg_dump runs as the unprivileged OS user: the TLS files it needs
	// are handed to it as private copies.
	dumpParams, cleanup, err := r.privateCopies(params)
	if err != nil {
		return res, err
	}
	defer cleanup()
	res.DumpStartedAt = time.Now().UTC().Truncate(time.Second)
	if err := r.restoreAll(ctx, c, dumpParams, dbs, &res.Bytes); err != nil {
		return res, err
	}
	if err := c.Stop(ctx, "fast"); err != nil {
		return res, fmt.Errorf("stop the pool's postgres: %w", err)
	}
	stopped = true
	syscall.Sync()
	snap, err := r.pool.Snapshot(ctx, storage.SnapshotOptions{DataStateAt: res.DumpStartedAt, Message: SnapshotMessage})
	if err != nil {
		return res, fmt.Errorf("snapshot the pool: %w", err)
	}
	res.Snapshot = snap
	return res, nil
}

// restoreAll copies the databases, retrieval.jobs at a time.
func (r *Retriever) restoreAll(ctx context.Context, c *pgcluster.Cluster, params map[string]string, dbs []string, total *int64) error {
	local, err := pgcluster.Connect(ctx, c.SocketConnString(localPort, "postgres", "postgres"))
	if err != nil {
		return err
	}
	createErr := func() error {
		for _, db := range dbs {
			if db == "postgres" {
				continue
			}
			if _, err := local.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{db}.Sanitize()+" TEMPLATE template0"); err != nil {
				return fmt.Errorf("create database %s in the pool: %w", db, err)
			}
		}
		return nil
	}()
	// The databases exist (or the error says why not): a failed goodbye
	// on this session loses nothing.
	if err := local.Close(ctx); err != nil {
		r.log.Warn("closing the session to the pool's postgres failed", "err", err)
	}
	if createErr != nil {
		return createErr
	}

	jobs := max(r.cfg.Jobs, 1)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, jobs)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for _, db := range dbs {
		wg.Add(1)
		sem <- struct{}{}
		go func(db string) {
			defer wg.Done()
			defer func() { <-sem }()
			n, err := r.copyDatabase(ctx, c, params, db)
			mu.Lock()
			defer mu.Unlock()
			*total += n
			if err != nil && firstErr == nil {
				firstErr = err
				cancel()
			}
		}(db)
	}
	wg.Wait()
	return firstErr
}

// copyDatabase streams pg_dump -Fc of one source database into pg_restore
// on the pool's postgres through the agent: no dump touches the disk. The
// source's credentials reach pg_dump only through its environment; the
// database names only as a quoted dbname in a connection string; both
// programs run as the unprivileged OS user, never as root.
func (r *Retriever) copyDatabase(ctx context.Context, c *pgcluster.Cluster, params map[string]string, db string) (int64, error) {
	//nolint:gosec // G204: the configured PostgreSQL's own pg_dump, arguments built here (the database as a quoted conninfo), no shell
	dump := exec.CommandContext(ctx, filepath.Join(r.binDir, "pg_dump"), "-Fc", "--no-sync", "-d", conninfo(map[string]string{"dbname": db}))
	dump.Env = append(r.baseEnv(), env(params)...)
	dump.Dir = "/"
	dump.SysProcAttr = &syscall.SysProcAttr{Credential: r.user.Credential()}
	//nolint:gosec // G204: the configured PostgreSQL's own pg_restore, arguments built here (the database as a quoted conninfo), no shell
	restore := exec.CommandContext(ctx, filepath.Join(r.binDir, "pg_restore"),
		"--no-owner", "--no-acl", "--exit-on-error",
		"-d", conninfo(map[string]string{"host": c.DataDir, "port": fmt.Sprint(localPort), "user": "postgres", "dbname": db}))
	restore.Env = append(r.baseEnv(), "PGPASSFILE=/dev/null")
	restore.Dir = "/"
	restore.SysProcAttr = &syscall.SysProcAttr{Credential: r.user.Credential()}
	var dumpErr, restoreErr tailBuffer
	dump.Stderr = &dumpErr
	restore.Stderr = &restoreErr
	dumpOut, err := dump.StdoutPipe()
	if err != nil {
		return 0, err
	}
	restoreIn, err := restore.StdinPipe()
	if err != nil {
		return 0, err
	}
	r.log.Debug("command", "cmd", strings.Join(dump.Args, " ")+" | "+strings.Join(restore.Args, " "))
	start := time.Now()
	if err := restore.Start(); err != nil {
		return 0, fmt.Errorf("start pg_restore: %w", err)
	}
	if err := dump.Start(); err != nil {
		// EOF ends pg_restore; its exit adds nothing to the start error.
		_ = restoreIn.Close()
		_ = restore.Wait()
		return 0, fmt.Errorf("start pg_dump: %w", err)
	}
	if r.onStart != nil {
		r.onStart("pg_restore", restore.Process.Pid)
		r.onStart("pg_dump", dump.Process.Pid)
	}
	n, copyErr := io.Copy(restoreIn, dumpOut)
	// The EOF pg_restore waits for; a restore that did not get it all
	// fails, and restore.Wait reports that.
	_ = restoreIn.Close()
	dumpWait := dump.Wait()
	restoreWait := restore.Wait()
	r.log.Debug("database copied", "db", db, "bytes", n, "elapsed", time.Since(start))
	switch {
	case dumpWait != nil:
		return n, fmt.Errorf("pg_dump of database %s: %v: %s", db, dumpWait, dumpErr.String())
	case restoreWait != nil:
		return n, fmt.Errorf("pg_restore of database %s: %v: %s", db, restoreWait, restoreErr.String())
	case copyErr != nil:
		return n, fmt.Errorf("stream database %s: %w", db, copyErr)
	}
	return n, nil
}

// listDatabases asks the source for its non-template databases.
func listDatabases(ctx context.Context, params map[string]string) ([]string, error) {
	cc, err := pgcluster.SessionConfig(pgxConnString(params, params["dbname"]))
	if err != nil {
		return nil, fmt.Errorf("retrieval.source: %w", err)
	}
	cc.Password = params["password"]
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return nil, fmt.Errorf("connect to the source: %w", err)
	}
	// A read-only session: nothing is lost when its goodbye fails.
	defer func() { _ = conn.Close(context.Background()) }()
	rows, err := conn.Query(ctx, `SELECT datname FROM pg_catalog.pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname`)
	if err != nil {
		return nil, fmt.Errorf("list source databases: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// tailBuffer keeps the last 8 KiB written to it (a program's stderr).
type tailBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf.Write(p)
	if t.buf.Len() > 8192 {
		b := t.buf.Bytes()
		keep := append([]byte(nil), b[len(b)-8192:]...)
		t.buf.Reset()
		t.buf.Write(keep)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(t.buf.String())
}

// Close stops the schedule and a running refresh, and waits for it.
func (r *Retriever) Close() error {
	if r.cron != nil {
		<-r.cron.Stop().Done()
	}
	r.cancel()
	r.wg.Wait()
	return nil
}

// baseEnv is the agent's environment without libpq variables (only the
// source's parameters may steer the tools) and with the OS user's home.
func (r *Retriever) baseEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "HOME=") {
			continue
		}
		out = append(out, kv)
	}
	home := "/"
	if u, err := user.LookupId(strconv.Itoa(int(r.user.UID))); err == nil && u.HomeDir != "" {
		home = u.HomeDir
	}
	return append(out, "HOME="+home)
}

// privateCopies copies the TLS files named by the source parameters into
// a directory only the unprivileged OS user reads, so that pg_dump can
// use them without them being readable by that user where they are. The
// returned cleanup removes the copies.
func (r *Retriever) privateCopies(params map[string]string) (map[string]string, func(), error) {
	out := maps.Clone(params)
	var files []string
	for _, k := range []string{"sslrootcert", "sslcert", "sslkey", "sslcrl"} {
		if v := params[k]; v != "" && v != "system" {
			files = append(files, k)
		}
	}
	if len(files) == 0 {
		return out, func() {}, nil
	}
	// Made by root and handed over only when filled: the OS user cannot
	// swap a name for a symlink while root writes.
	dir, err := os.MkdirTemp("", "thinlab-retrieval-*")
	if err != nil {
		return nil, nil, err
	}
	cleanup := func() {
		// The copies may hold a private key: say so when one stays behind.
		if err := os.RemoveAll(dir); err != nil {
			r.log.Warn("removing the copied source TLS files failed; remove the directory by hand", "dir", dir, "err", err)
		}
	}
	for _, k := range files {
		data, err := os.ReadFile(params[k])
		if err != nil {
			cleanup()
			return nil, nil, fmt.Errorf("retrieval.source %s: %w", k, err)
		}
		dst := filepath.Join(dir, k)
		f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600) //nolint:gosec // G304: a fixed name in the directory MkdirTemp just made, created exclusively without following links
		if err == nil {
			_, err = f.Write(data)
			if err == nil {
				err = f.Chown(int(r.user.UID), int(r.user.GID))
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			cleanup()
			return nil, nil, fmt.Errorf("copy retrieval.source %s for pg_dump: %w", k, err)
		}
		out[k] = dst
	}
	if err := os.Chown(dir, int(r.user.UID), int(r.user.GID)); err != nil {
		cleanup()
		return nil, nil, err
	}
	return out, cleanup, nil
}
