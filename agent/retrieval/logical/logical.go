// Package logical is the logical retrieval mode: pg_dump of the source's
// databases restored by pg_restore into a fresh cluster in the pool's main
// dataset, which the retrieval core then snapshots with dataStateAt = the
// dump's start. It plugs into the core through agent/retrieval/job.
package logical

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/agent/retrieval/cloudauth"
	"github.com/thinlab/thinlab/agent/retrieval/job"
	"github.com/thinlab/thinlab/agent/retrieval/pgsource"
	"github.com/thinlab/thinlab/agent/retrieval/preprocess"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

// Mode is this mode's name in retrieval.mode and the API.
const Mode = "logical"

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

// Job is the logical mode's job.Job.
type Job struct {
	cfg config.Retrieval
	log *slog.Logger
	// auth makes the source's password per connection with a cloud IAM
	// source (retrieval.source.auth); it keeps the cached credentials.
	auth *cloudauth.Authenticator

	// onStart, when set (tests), is called with each pg_dump and
	// pg_restore process right after it starts.
	onStart func(name string, pid int)

	// Logical replication's state (replication.go): per pool, and the
	// lag checks' lifetime.
	mu         sync.Mutex
	replicas   map[string]*replica
	events     *events.Bus
	privateDir string // the subscriptions' password file's directory (tests)
	ctx        context.Context
	cancel     context.CancelFunc
	wg         sync.WaitGroup
}

var (
	_ job.Job       = (*Job)(nil)
	_ job.Recoverer = (*Job)(nil)
	_ job.Reporter  = (*Job)(nil)
)

func newJob(cfg config.Retrieval, log *slog.Logger, auth *cloudauth.Authenticator) *Job {
	j := &Job{cfg: cfg, log: log, auth: auth, replicas: map[string]*replica{}}
	j.ctx, j.cancel = context.WithCancel(context.Background())
	return j
}

// Report implements job.Reporter: a replicating pool's subscription lag
// and alerts.
func (j *Job) Report(pool storage.Pool) (job.Report, bool) {
	j.mu.Lock()
	r, ok := j.replicas[pool.Name()]
	j.mu.Unlock()
	if !ok {
		return job.Report{}, false
	}
	return r.report(), true
}

// Close stops the lag checks; a subscriber keeps running until the agent
// exits.
func (j *Job) Close() error {
	j.cancel()
	j.wg.Wait()
	return nil
}

// New checks retrieval's logical settings and builds the job.
func New(cfg config.Retrieval, log *slog.Logger) (*Job, error) {
	if log == nil {
		log = slog.Default()
	}
	auth := cloudauth.New(cfg.Source, cloudauth.Options{Logger: log})
	if len(cfg.Logical.Dumps) > 0 {
		return newJob(cfg, log, auth), nil
	}
	params, err := pgsource.Params(cfg.Source)
	if err != nil {
		return nil, err
	}
	if why := pgsource.InsecureSSL(params); why != "" {
		log.Warn("the retrieval source connection is insecure: set retrieval.source.sslRootCert (sslMode verify-full)", "reason", why)
	}
	return newJob(cfg, log, auth), nil
}

// Mode implements job.Job.
func (j *Job) Mode() string { return Mode }

func mainCluster(t job.Target, log *slog.Logger) *pgcluster.Cluster {
	// DieWithParent: the cluster only lives for a refresh; a killed agent
	// takes it along instead of leaving it running on the pool.
	return &pgcluster.Cluster{DataDir: filepath.Join(t.Pool.MainDir(), storage.DataSubdir), BinDir: t.BinDir, User: t.User, Logger: log, DieWithParent: true}
}

// Recover stops a postgres left running in the pool's main dataset by a
// refresh the agent did not finish and removes its dump directory. The
// half-restored PGDATA itself is harmless (snapshots are separate) and
// the next refresh removes it.
func (j *Job) Recover(ctx context.Context, t job.Target) error {
	if j.replicating() {
		return j.recoverReplication(ctx, t)
	}
	if _, err := os.Stat(filepath.Join(t.Pool.MainDir(), markerFile)); err == nil {
		j.log.Warn("the pool replicated from the source before (retrieval.logical.replication is off now): its subscriptions' slots on the source keep WAL there until the next refresh drops them")
	}
	c := mainCluster(t, j.log)
	if c.Running() {
		j.log.Warn("stopping the pool's postgres left by an interrupted refresh", "datadir", c.DataDir)
		c.Kill()
	}
	// A dump left by the interrupted refresh would fill the pool (and
	// land in the next snapshot): remove it now.
	if err := removeDumpRoot(t.Pool.MainDir()); err != nil {
		return fmt.Errorf("remove the interrupted refresh's dump directory: %w", err)
	}
	return nil
}

// Run re-creates the pool's PGDATA with initdb, restores the source into
// it and stops it cleanly, ready for the snapshot.
func (j *Job) Run(ctx context.Context, t job.Target) (job.Outcome, error) {
	if j.replicating() {
		return j.runReplication(ctx, t)
	}
	var out job.Outcome
	log := t.Logger
	if log == nil {
		log = j.log
	}
	dumps := j.cfg.Logical.Dumps
	var params map[string]string
	var dbs []string
	if len(dumps) > 0 {
		for _, d := range dumps {
			dbs = append(dbs, d.DBName)
		}
	} else {
		var err error
		if params, err = pgsource.Params(j.cfg.Source); err != nil {
			return out, err
		}
		dbs = j.cfg.Databases
		if len(dbs) == 0 {
			if dbs, err = j.listDatabases(ctx, params); err != nil {
				return out, err
			}
		}
		if len(dbs) == 0 {
			return out, errors.New("the source has no databases to copy")
		}
	}
	out.Databases = dbs

	main := t.Pool.MainDir()
	if err := os.Chown(main, int(t.User.UID), int(t.User.GID)); err != nil {
		return out, fmt.Errorf("hand the pool's main dataset to %s: %w", t.User.Name, err)
	}
	// A pool that replicated before keeps slots on the source: dropped
	// with its subscriptions, or they would hold the source's WAL forever.
	if err := j.dropReplication(ctx, t); err != nil {
		return out, err
	}
	c := mainCluster(t, log)
	if c.Running() {
		c.Kill()
	}
	// A full refresh starts from an empty cluster, so objects dropped at
	// the source disappear; earlier data lives on in the snapshots.
	if err := removeDumpRoot(main); err != nil {
		return out, fmt.Errorf("clear the dump directory: %w", err)
	}
	if err := os.RemoveAll(c.DataDir); err != nil {
		return out, fmt.Errorf("clear the pool's data directory: %w", err)
	}
	if err := c.Init(ctx, pgcluster.InitOptions{}); err != nil {
		return out, fmt.Errorf("initdb in the pool: %w", err)
	}
	if err := c.Start(ctx, localPort, "", restoreSettings); err != nil {
		return out, fmt.Errorf("start the pool's postgres: %w", err)
	}
	stopped := false
	defer func() {
		if !stopped {
			c.Kill()
		}
	}()

	// The dump's start becomes the snapshot's second-precision ID.
	for !time.Now().UTC().Truncate(time.Second).After(t.NotBefore) {
		select {
		case <-ctx.Done():
			return out, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	if len(dumps) > 0 {
		r := &run{job: j, t: t, c: c, log: log}
		var err error
		if out.DataStateAt, err = r.restoreDumps(ctx, dumps, &out.Bytes); err != nil {
			return out, err
		}
	} else if err := j.copySource(ctx, t, c, params, dbs, &out, log); err != nil {
		return out, err
	}
	// Masking and patching before anything is snapshotted: a failing
	// step fails the refresh, and no snapshot holds unmasked data.
	pg := preprocess.Postgres{BinDir: t.BinDir, User: t.User, SocketDir: c.DataDir, Port: localPort}
	if err := preprocess.Run(ctx, j.cfg.Preprocess, pg, t.Progress, log); err != nil {
		return out, err
	}
	if err := c.Stop(ctx, "fast"); err != nil {
		return out, fmt.Errorf("stop the pool's postgres: %w", err)
	}
	stopped = true
	if err := storage.SyncFS(main); err != nil {
		return out, err
	}
	return out, nil
}

// copySource dumps the source's databases into the started cluster c;
// out.DataStateAt is the dump's start.
func (j *Job) copySource(ctx context.Context, t job.Target, c *pgcluster.Cluster, params map[string]string, dbs []string, out *job.Outcome, log *slog.Logger) error {
	main := t.Pool.MainDir()
	// pg_dump runs as the unprivileged OS user: the TLS files it needs
	// are handed to it as private copies.
	dumpParams, cleanup, err := pgsource.PrivateCopies(params, t.User, log)
	if err != nil {
		return err
	}
	defer cleanup()
	out.DataStateAt = time.Now().UTC().Truncate(time.Second)
	r := &run{job: j, t: t, c: c, params: dumpParams, log: log}
	if j.directory() {
		if err := r.prepareDumpRoot(); err != nil {
			return err
		}
		// Removed before the core snapshots the main dataset: no dump in
		// the snapshot or its clones.
		defer func() {
			if err := removeDumpRoot(main); err != nil {
				log.Warn("removing the dump directory failed; the next refresh removes it", "dir", r.dumpRoot(), "err", err)
			}
		}()
	}
	return r.restoreAll(ctx, dbs, &out.Bytes)
}

// listDatabases asks the source for its non-template databases.
func (j *Job) listDatabases(ctx context.Context, params map[string]string) ([]string, error) {
	cc, err := pgcluster.SessionConfig(pgsource.PgxConnString(params, params["dbname"]))
	if err != nil {
		return nil, fmt.Errorf("retrieval.source: %w", err)
	}
	cc.Password = params["password"]
	if pw, ok, err := j.auth.Password(ctx, params); err != nil {
		return nil, err
	} else if ok {
		cc.Password = pw
	}
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
