// Package preprocess runs the pre-processing steps (retrieval.preprocess)
// against a freshly filled pool's postgres before it is snapshotted: SQL
// files in groups, then shell scripts. It is the hook for masking and
// patching, shared by the retrieval modes. Every step runs as the
// unprivileged OS user, never as root; the first failing step stops the
// run and its output is in the error.
package preprocess

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/retrieval/job"
	"github.com/thinlab/thinlab/agent/retrieval/pgsource"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

// Postgres is the running server the steps work on, reached by its
// socket only.
type Postgres struct {
	BinDir string
	User   pgcluster.OSUser
	// SocketDir and Port name the socket; the steps connect as the
	// superuser "postgres".
	SocketDir string
	Port      int
}

// StepError is a failed step with its output.
type StepError struct {
	Step   string // "sql:<group>/<file>" or "script:<path>"
	Err    error
	Output string
}

func (e *StepError) Error() string {
	out := strings.TrimSpace(e.Output)
	if out == "" {
		out = "(no output)"
	}
	return fmt.Sprintf("pre-processing step %s failed: %v: %s", e.Step, e.Err, out)
}

func (e *StepError) Unwrap() error { return e.Err }

// group is SQL files that run in parallel.
type group struct {
	name  string
	files []string
}

// sqlGroups reads dir: its own *.sql files first, then each sub-folder's
// in name order; files sorted by name.
func sqlGroups(dir string) ([]group, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("retrieval.preprocess.sqlDir: %w", err)
	}
	top := group{name: "."}
	var subs []group
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		switch {
		case e.IsDir():
			files, err := filepath.Glob(filepath.Join(p, "*.sql"))
			if err != nil {
				return nil, err
			}
			slices.Sort(files)
			if len(files) > 0 {
				subs = append(subs, group{name: e.Name(), files: files})
			}
		case e.Type().IsRegular() && strings.HasSuffix(e.Name(), ".sql"):
			top.files = append(top.files, p)
		}
	}
	slices.SortFunc(subs, func(a, b group) int { return strings.Compare(a.name, b.name) })
	if len(top.files) > 0 {
		return append([]group{top}, subs...), nil
	}
	return subs, nil
}

// Steps counts what Run will run (for progress).
func Steps(spec config.Preprocess) int {
	n := len(spec.Scripts)
	if spec.SQLDir != "" {
		if gs, err := sqlGroups(spec.SQLDir); err == nil {
			for _, g := range gs {
				n += len(g.files)
			}
		}
	}
	return n
}

// Run runs the SQL groups in order (the files of a group in parallel),
// then the scripts in order, and stops at the first failure.
func Run(ctx context.Context, spec config.Preprocess, pg Postgres, progress *job.Progress, log *slog.Logger) error {
	if !spec.Enabled() {
		return nil
	}
	progress.Phase("preprocess", job.UnitSteps, int64(Steps(spec)))
	db := spec.DBName
	if db == "" {
		db = "postgres"
	}
	env := append(pgsource.BaseEnv(pg.User),
		"PATH="+pg.BinDir+":/usr/local/bin:/usr/bin:/bin",
		"PGHOST="+pg.SocketDir, "PGPORT="+strconv.Itoa(pg.Port), "PGUSER=postgres", "PGDATABASE="+db)
	if spec.SQLDir != "" {
		groups, err := sqlGroups(spec.SQLDir)
		if err != nil {
			return err
		}
		for _, g := range groups {
			if err := runGroup(ctx, g, pg, env, progress, log); err != nil {
				return err
			}
		}
	}
	for _, s := range spec.Scripts {
		//nolint:gosec // G204: an administrator-configured script, run without a shell as the unprivileged OS user
		cmd := exec.CommandContext(ctx, s)
		if err := runStep(cmd, "script:"+s, pg, env, log); err != nil {
			return err
		}
		progress.Add(1)
	}
	return nil
}

// runGroup runs one group's files in parallel with psql; when one fails
// the others are cancelled and the first failure is returned.
func runGroup(ctx context.Context, g group, pg Postgres, env []string, progress *job.Progress, log *slog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for _, f := range g.files {
		wg.Go(func() {
			err := runSQL(ctx, f, g.name, pg, env, log)
			mu.Lock()
			defer mu.Unlock()
			if err != nil && first == nil {
				first = err
				cancel()
			}
			if err == nil {
				progress.Add(1)
			}
		})
	}
	wg.Wait()
	return first
}

// runSQL feeds one file to psql (stopping at its first error). The agent
// reads the file, so it need not be readable by the OS user.
func runSQL(ctx context.Context, file, groupName string, pg Postgres, env []string, log *slog.Logger) error {
	step := "sql:" + filepath.Join(groupName, filepath.Base(file))
	f, err := os.Open(file) //nolint:gosec // G304: a file in the administrator-configured retrieval.preprocess.sqlDir
	if err != nil {
		return &StepError{Step: step, Err: err}
	}
	defer func() { _ = f.Close() }() // read-only
	//nolint:gosec // G204: the configured PostgreSQL's own psql, fixed arguments, no shell
	cmd := exec.CommandContext(ctx, filepath.Join(pg.BinDir, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-")
	cmd.Stdin = f
	return runStep(cmd, step, pg, env, log)
}

// runStep runs cmd as the OS user with env and its output captured.
func runStep(cmd *exec.Cmd, step string, pg Postgres, env []string, log *slog.Logger) error {
	cmd.Env = env
	cmd.Dir = "/"
	// Pdeathsig: a step must not outlive a killed agent.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: pg.User.Credential(), Pdeathsig: syscall.SIGKILL}
	var out tail
	cmd.Stdout = &out
	cmd.Stderr = &out
	log.Info("pre-processing step started", "step", step)
	err := pgcluster.StartOnLastingThread(cmd)
	if err == nil {
		err = cmd.Wait()
	}
	if err != nil {
		log.Error("pre-processing step failed", "step", step, "err", err, "output", out.String())
		return &StepError{Step: step, Err: err, Output: out.String()}
	}
	log.Info("pre-processing step finished", "step", step, "output", out.String())
	return nil
}

// tail keeps the last 4 KiB of a step's output.
type tail struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

const tailMax = 4096

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf.Write(p)
	if t.buf.Len() > tailMax {
		keep := append([]byte(nil), t.buf.Bytes()[t.buf.Len()-tailMax:]...)
		t.buf.Reset()
		t.buf.Write(keep)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(t.buf.String())
}
