package logical

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/thinlab/thinlab/internal/pgcluster"
)

// dumpDirName is the directory in the pool's main dataset, beside PGDATA,
// that holds directory-format dumps during a refresh: on the pool (the
// space is there), outside PGDATA and every clone, removed before the
// snapshot.
const dumpDirName = "retrieval-dump"

// dumpRoot is the dump directory of the refresh's pool.
func (r *run) dumpRoot() string { return filepath.Join(r.t.Pool.MainDir(), dumpDirName) }

// prepareDumpRoot (re)creates the dump directory, owned by the OS user
// that runs pg_dump.
func (r *run) prepareDumpRoot() error {
	root := r.dumpRoot()
	if err := os.RemoveAll(root); err != nil {
		return fmt.Errorf("clear the dump directory: %w", err)
	}
	if err := os.Mkdir(root, 0o700); err != nil {
		return fmt.Errorf("make the dump directory: %w", err)
	}
	if err := os.Chown(root, int(r.t.User.UID), int(r.t.User.GID)); err != nil {
		return fmt.Errorf("hand the dump directory to %s: %w", r.t.User.Name, err)
	}
	return nil
}

// removeDumpRoot deletes the dump directory; RemoveAll removes symlinks
// the OS user may have left without following them.
func removeDumpRoot(mainDir string) error {
	return os.RemoveAll(filepath.Join(mainDir, dumpDirName))
}

// dirSeq numbers per-database dump directories: database names can hold
// anything, so they never become path names.
var dirSeq atomic.Int64

// copyDatabaseDir dumps one database with pg_dump -Fd --jobs N into the
// dump directory, restores it with pg_restore --jobs N and removes the
// dump. It returns the dump's size.
func (r *run) copyDatabaseDir(ctx context.Context, db string) (int64, error) {
	jobs := strconv.Itoa(max(r.job.cfg.Jobs, 1))
	dir := filepath.Join(r.dumpRoot(), "db"+strconv.FormatInt(dirSeq.Add(1), 10))
	defer func() {
		if err := os.RemoveAll(dir); err != nil {
			r.log.Warn("removing a database's dump directory failed; the next refresh removes it", "dir", dir, "err", err)
		}
	}()
	start := time.Now()
	env, err := r.sourceEnv(ctx)
	if err != nil {
		return 0, err
	}
	dump := r.tool(ctx, "pg_dump", env, r.job.dumpArgs(db, "-Fd", "--jobs="+jobs, "--file="+dir)...)
	var dumpErr tailBuffer
	dump.Stderr = &dumpErr
	r.log.Debug("command", "cmd", strings.Join(dump.Args, " "))
	if err := pgcluster.StartOnLastingThread(dump); err != nil {
		return 0, fmt.Errorf("start pg_dump: %w", err)
	}
	if r.job.onStart != nil {
		r.job.onStart("pg_dump", dump.Process.Pid)
	}
	if err := dump.Wait(); err != nil {
		return 0, fmt.Errorf("pg_dump of database %s: %v: %s", db, err, dumpErr.String())
	}
	size := dirSize(dir)
	r.log.Debug("database dumped", "db", db, "bytes", size, "elapsed", time.Since(start))

	// The table of contents gives the number of tables to restore: the
	// progress counts them as pg_restore reports each one done.
	if n, err := r.countTableData(ctx, dir); err == nil {
		r.t.Progress.AddTotal(n)
	}
	restore := r.tool(ctx, "pg_restore", []string{"PGPASSFILE=/dev/null"}, r.job.restoreArgs(r.localConninfo(db), "--jobs="+jobs, "--verbose")...)
	restore.Args = append(restore.Args, dir)
	var restoreErr tailBuffer
	pr, pw := io.Pipe()
	restore.Stderr = io.MultiWriter(&restoreErr, pw)
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if tableRestored(sc.Text(), jobs != "1") {
				r.t.Progress.Add(1)
			}
		}
		_, _ = io.Copy(io.Discard, pr) // a line over the scanner's limit: keep draining
	}()
	if err := pgcluster.StartOnLastingThread(restore); err != nil {
		_ = pw.Close()
		<-done
		return size, fmt.Errorf("start pg_restore: %w", err)
	}
	if r.job.onStart != nil {
		r.job.onStart("pg_restore", restore.Process.Pid)
	}
	werr := restore.Wait()
	_ = pw.Close()
	<-done
	r.log.Debug("database restored", "db", db, "elapsed", time.Since(start))
	if werr != nil {
		return size, fmt.Errorf("pg_restore of database %s: %v: %s", db, werr, lastLines(restoreErr.String(), 20))
	}
	return size, nil
}

// tableRestored recognises pg_restore --verbose's line for a table's data:
// a parallel restore says when each item finished, a serial one only when
// it starts a table.
func tableRestored(line string, parallel bool) bool {
	if parallel {
		return strings.Contains(line, "finished item") && strings.Contains(line, "TABLE DATA")
	}
	return strings.Contains(line, "processing data for table")
}

// countTableData counts the TABLE DATA entries of a dump's table of
// contents (pg_restore --list).
func (r *run) countTableData(ctx context.Context, dir string) (int64, error) {
	list := r.tool(ctx, "pg_restore", nil, "--list", dir)
	var out strings.Builder
	list.Stdout = &out
	err := pgcluster.StartOnLastingThread(list)
	if err == nil {
		err = list.Wait()
	}
	if err != nil {
		return 0, err
	}
	var n int64
	for line := range strings.Lines(out.String()) {
		if !strings.HasPrefix(line, ";") && strings.Contains(line, " TABLE DATA ") {
			n++
		}
	}
	return n, nil
}

// dirSize adds up the sizes of the regular files under dir.
func dirSize(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// lastLines keeps the last n lines of s (a verbose tool's stderr ends
// with its error).
func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
