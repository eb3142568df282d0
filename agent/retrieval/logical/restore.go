package logical

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/agent/retrieval/job"
	"github.com/thinlab/thinlab/agent/retrieval/pgsource"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

// run is one refresh's restore into the started cluster c.
type run struct {
	job    *Job
	t      job.Target
	c      *pgcluster.Cluster
	params map[string]string // the source, TLS files as private copies
	log    *slog.Logger
}

// sourceEnv is the libpq environment of one pg_dump: the source's
// parameters with, for a cloud IAM source, a password made for this
// connection (an RDS token is valid for 15 minutes, and a run may start
// its last pg_dump later than that). It reaches pg_dump only through its
// environment, never its arguments.
func (r *run) sourceEnv(ctx context.Context) ([]string, error) {
	p := r.params
	if pw, ok, err := r.job.auth.Password(ctx, p); err != nil {
		return nil, err
	} else if ok {
		p = maps.Clone(p)
		p["password"] = pw
	}
	return pgsource.Env(p), nil
}

// restoreAll copies the databases, retrieval.jobs at a time.
func (r *run) restoreAll(ctx context.Context, dbs []string, total *int64) error {
	if err := r.createDatabases(ctx, dbs); err != nil {
		return err
	}

	if r.job.directory() {
		r.t.Progress.Phase("dump and restore", job.UnitRelations, 0)
	} else {
		r.t.Progress.Phase("dump and restore", job.UnitBytes, 0)
	}
	jobs := r.job.parallelDatabases()
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
			var n int64
			var err error
			if r.job.directory() {
				n, err = r.copyDatabaseDir(ctx, db)
			} else {
				n, err = r.copyDatabase(ctx, db)
			}
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

// createDatabases makes the databases to restore into (postgres exists).
func (r *run) createDatabases(ctx context.Context, dbs []string) error {
	local, err := pgcluster.Connect(ctx, r.c.SocketConnString(localPort, "postgres", "postgres"))
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
	return createErr
}

// tool builds a PostgreSQL tool's command running as the unprivileged OS
// user, with env as its only libpq settings.
func (r *run) tool(ctx context.Context, name string, env []string, args ...string) *exec.Cmd {
	//nolint:gosec // G204: the configured PostgreSQL's own tool, arguments built here (databases as quoted conninfo), no shell
	cmd := exec.CommandContext(ctx, filepath.Join(r.t.BinDir, name), args...)
	cmd.Env = append(pgsource.BaseEnv(r.t.User), env...)
	cmd.Dir = "/"
	// Pdeathsig: a tool must not outlive an agent that was killed (it
	// would keep writing into the pool while the next start cleans up).
	// Such commands are started with pgcluster.StartOnLastingThread.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: r.t.User.Credential(), Pdeathsig: syscall.SIGKILL}
	return cmd
}

// localConninfo names database db on the pool's postgres.
func (r *run) localConninfo(db string) string {
	return pgsource.Conninfo(map[string]string{"host": r.c.DataDir, "port": fmt.Sprint(localPort), "user": "postgres", "dbname": db})
}

// copyDatabase streams pg_dump -Fc of one source database into pg_restore
// on the pool's postgres through the agent: no dump touches the disk. The
// source's credentials reach pg_dump only through its environment; the
// database names only as a quoted dbname in a connection string; both
// programs run as the unprivileged OS user, never as root.
func (r *run) copyDatabase(ctx context.Context, db string) (int64, error) {
	env, err := r.sourceEnv(ctx)
	if err != nil {
		return 0, err
	}
	dump := r.tool(ctx, "pg_dump", env, r.job.dumpArgs(db, "-Fc")...)
	restore := r.tool(ctx, "pg_restore", []string{"PGPASSFILE=/dev/null"}, r.job.restoreArgs(r.localConninfo(db))...)
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
	if err := pgcluster.StartOnLastingThread(restore); err != nil {
		return 0, fmt.Errorf("start pg_restore: %w", err)
	}
	if err := pgcluster.StartOnLastingThread(dump); err != nil {
		// EOF ends pg_restore; its exit adds nothing to the start error.
		_ = restoreIn.Close()
		_ = restore.Wait()
		return 0, fmt.Errorf("start pg_dump: %w", err)
	}
	if r.job.onStart != nil {
		r.job.onStart("pg_restore", restore.Process.Pid)
		r.job.onStart("pg_dump", dump.Process.Pid)
	}
	n, copyErr := io.Copy(restoreIn, &countingReader{r: dumpOut, p: r.t.Progress})
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

// countingReader counts the bytes read into a Progress.
type countingReader struct {
	r io.Reader
	p *job.Progress
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.p.Add(int64(n))
	return n, err
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
