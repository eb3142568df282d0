package logical

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/retrieval/job"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

// Compression of a plain dump, recognised by its magic bytes.
const (
	compressNone  = ""
	compressGzip  = "gzip"
	compressBzip2 = "bzip2"
	compressZstd  = "zstd"
)

// detectDump says what the dump at path is: its format and, for plain
// dumps, its compression. An explicit format is trusted for the format;
// the compression is always read from the content.
func detectDump(d config.Dump) (format, compression string, err error) {
	fi, err := os.Stat(d.Path)
	if err != nil {
		return "", "", fmt.Errorf("dump %s: %w", d.Path, err)
	}
	if fi.IsDir() {
		if d.Format != "" && d.Format != config.DumpAuto && d.Format != config.DumpDirectory {
			return "", "", fmt.Errorf("dump %s is a directory, but its format is set to %s", d.Path, d.Format)
		}
		return config.DumpDirectory, "", nil
	}
	f, err := os.Open(d.Path)
	if err != nil {
		return "", "", fmt.Errorf("dump %s: %w", d.Path, err)
	}
	defer func() { _ = f.Close() }() // read only
	head := make([]byte, 5)
	n, _ := io.ReadFull(f, head)
	head = head[:n]
	switch {
	case bytes.HasPrefix(head, []byte("PGDMP")):
		format = config.DumpCustom
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		format, compression = config.DumpPlain, compressGzip
	case bytes.HasPrefix(head, []byte("BZh")):
		format, compression = config.DumpPlain, compressBzip2
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		format, compression = config.DumpPlain, compressZstd
	default:
		format = config.DumpPlain
	}
	if d.Format != "" && d.Format != config.DumpAuto && d.Format != format {
		return "", "", fmt.Errorf("dump %s looks like a %s dump, but its format is set to %s", d.Path, format, d.Format)
	}
	return format, compression, nil
}

// restoreDumps restores each configured dump into its database. The data
// state is the oldest dump's modification time (the data is as old as
// that); when that is not after the newest existing snapshot (the same
// dumps restored again) it is the time of this restore.
func (r *run) restoreDumps(ctx context.Context, dumps []config.Dump, total *int64) (time.Time, error) {
	dbs := make([]string, 0, len(dumps))
	var oldest time.Time
	var size int64
	type plan struct {
		d                   config.Dump
		format, compression string
	}
	plans := make([]plan, 0, len(dumps))
	for _, d := range dumps {
		format, compression, err := detectDump(d)
		if err != nil {
			return time.Time{}, err
		}
		mtimeOf := d.Path
		if format == config.DumpDirectory {
			mtimeOf = filepath.Join(d.Path, "toc.dat")
		}
		fi, err := os.Stat(mtimeOf)
		if err != nil {
			return time.Time{}, fmt.Errorf("dump %s: %w", d.Path, err)
		}
		if oldest.IsZero() || fi.ModTime().Before(oldest) {
			oldest = fi.ModTime()
		}
		if format == config.DumpDirectory {
			size += dirSize(d.Path)
		} else {
			size += fi.Size()
		}
		dbs = append(dbs, d.DBName)
		plans = append(plans, plan{d, format, compression})
	}
	state := oldest.UTC().Truncate(time.Second)
	if !state.After(r.t.NotBefore) {
		state = time.Now().UTC().Truncate(time.Second)
	}
	if err := r.createDatabases(ctx, dbs); err != nil {
		return state, err
	}
	r.t.Progress.Phase("restore dumps", job.UnitBytes, size)
	for _, p := range plans {
		start := time.Now()
		var err error
		switch p.format {
		case config.DumpDirectory:
			err = r.restoreDumpDir(ctx, p.d)
		case config.DumpCustom:
			err = r.restoreDumpStream(ctx, p.d, "", "pg_restore", r.job.restoreArgs(r.localConninfo(p.d.DBName))...)
		default:
			err = r.restoreDumpStream(ctx, p.d, p.compression, "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", r.localConninfo(p.d.DBName))
		}
		if err != nil {
			return state, err
		}
		r.log.Info("dump restored", "path", p.d.Path, "db", p.d.DBName, "format", p.format, "compression", p.compression, "elapsed", time.Since(start))
	}
	*total = size
	return state, nil
}

// restoreDumpStream feeds a dump file, read by the agent and
// decompressed on the fly, to tool (pg_restore or psql) on its standard
// input: nothing is copied to disk, and the file need not be readable by
// the OS user the tool runs as.
func (r *run) restoreDumpStream(ctx context.Context, d config.Dump, compression, tool string, args ...string) error {
	f, err := os.Open(d.Path)
	if err != nil {
		return fmt.Errorf("dump %s: %w", d.Path, err)
	}
	defer func() { _ = f.Close() }() // read only
	var in io.Reader = bufio.NewReaderSize(&countingReader{r: f, p: r.t.Progress}, 1<<20)
	switch compression {
	case compressGzip:
		zr, err := gzip.NewReader(in)
		if err != nil {
			return fmt.Errorf("dump %s: %w", d.Path, err)
		}
		zr.Multistream(true)
		in = zr
	case compressBzip2:
		in = bzip2.NewReader(in)
	case compressZstd:
		zr, err := zstd.NewReader(in)
		if err != nil {
			return fmt.Errorf("dump %s: %w", d.Path, err)
		}
		defer zr.Close()
		in = zr
	}
	cmd := r.tool(ctx, tool, []string{"PGPASSFILE=/dev/null"}, args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	var out tailBuffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := pgcluster.StartOnLastingThread(cmd); err != nil {
		return fmt.Errorf("start %s: %w", tool, err)
	}
	if r.job.onStart != nil {
		r.job.onStart(tool, cmd.Process.Pid)
	}
	// The decompressed stream goes to the tool as it comes, never into
	// memory or onto disk: its size bounds nothing here.
	_, copyErr := io.Copy(stdin, in) //nolint:gosec // G110: a stream into a pipe, not a buffer
	_ = stdin.Close()                // the EOF the tool waits for
	waitErr := cmd.Wait()
	switch {
	case waitErr != nil:
		return fmt.Errorf("%s of dump %s into database %s: %v: %s", tool, d.Path, d.DBName, waitErr, lastLines(out.String(), 20))
	case copyErr != nil:
		return fmt.Errorf("read dump %s: %w", d.Path, copyErr)
	}
	return nil
}

// restoreDumpDir restores a directory-format dump with pg_restore --jobs
// N, which reads the directory itself (as the OS user).
func (r *run) restoreDumpDir(ctx context.Context, d config.Dump) error {
	jobs := strconv.Itoa(max(r.job.cfg.Jobs, 1))
	cmd := r.tool(ctx, "pg_restore", []string{"PGPASSFILE=/dev/null"}, r.job.restoreArgs(r.localConninfo(d.DBName), "--jobs="+jobs)...)
	cmd.Args = append(cmd.Args, d.Path)
	var out tailBuffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := pgcluster.StartOnLastingThread(cmd); err != nil {
		return fmt.Errorf("start pg_restore: %w", err)
	}
	if r.job.onStart != nil {
		r.job.onStart("pg_restore", cmd.Process.Pid)
	}
	if err := cmd.Wait(); err != nil {
		msg := lastLines(out.String(), 20)
		if strings.Contains(msg, "Permission denied") {
			msg += " (a directory dump must be readable by provision.osUser)"
		}
		return fmt.Errorf("pg_restore of dump %s into database %s: %v: %s", d.Path, d.DBName, err, msg)
	}
	r.t.Progress.Add(dirSize(d.Path))
	return nil
}
