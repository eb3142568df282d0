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

// classify says what a dump is from its first bytes: its format and, for
// plain dumps, its compression. An explicit format is checked against it.
func classify(d config.Dump, isDir bool, head []byte) (format, compression string, err error) {
	switch {
	case isDir:
		format = config.DumpDirectory
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

// dumpPlan is one dump, inspected.
type dumpPlan struct {
	d                   config.Dump
	format, compression string
	size                int64
	modTime             time.Time
	bucket, key         string // set for a dump in S3
}

// inspect finds a dump's format, size and modification time.
func (r *run) inspect(ctx context.Context, s3c *s3Client, d config.Dump) (dumpPlan, error) {
	p := dumpPlan{d: d}
	head := make([]byte, 5)
	isDir := false
	if bucket, key, ok := splitS3(d.Path); ok {
		p.bucket, p.key = bucket, key
		if strings.HasSuffix(key, "/") {
			isDir = true
			objs, err := s3c.list(ctx, bucket, key)
			if err != nil {
				return p, err
			}
			for _, o := range objs {
				p.size += o.Size
				if strings.TrimPrefix(o.Key, key) == "toc.dat" {
					p.modTime = o.LastModified
				}
			}
			if p.modTime.IsZero() {
				return p, fmt.Errorf("dump %s holds no toc.dat: not a directory-format dump", d.Path)
			}
		} else {
			o, err := s3c.get(ctx, bucket, key, int64(len(head)-1))
			if err != nil {
				return p, fmt.Errorf("dump %s: %w", d.Path, err)
			}
			n, _ := io.ReadFull(o.body, head)
			_ = o.body.Close() // a range read to its end
			head, p.size, p.modTime = head[:n], o.size, o.modTime
		}
	} else {
		fi, err := os.Stat(d.Path)
		if err != nil {
			return p, fmt.Errorf("dump %s: %w", d.Path, err)
		}
		isDir = fi.IsDir()
		if isDir {
			toc, err := os.Stat(filepath.Join(d.Path, "toc.dat"))
			if err != nil {
				return p, fmt.Errorf("dump %s: not a directory-format dump: %w", d.Path, err)
			}
			p.size, p.modTime = dirSize(d.Path), toc.ModTime()
		} else {
			f, err := os.Open(d.Path)
			if err != nil {
				return p, fmt.Errorf("dump %s: %w", d.Path, err)
			}
			n, _ := io.ReadFull(f, head)
			_ = f.Close() // read only
			head, p.size, p.modTime = head[:n], fi.Size(), fi.ModTime()
		}
	}
	var err error
	if isDir && d.Format != "" && d.Format != config.DumpAuto && d.Format != config.DumpDirectory {
		return p, fmt.Errorf("dump %s is a directory, but its format is set to %s", d.Path, d.Format)
	}
	p.format, p.compression, err = classify(d, isDir, head)
	return p, err
}

// restoreDumps restores each configured dump into its database. The data
// state is the oldest dump's modification time (the data is as old as
// that); when that is not after the newest existing snapshot (the same
// dumps restored again) it is the time of this restore.
func (r *run) restoreDumps(ctx context.Context, dumps []config.Dump, total *int64) (time.Time, error) {
	var s3c *s3Client
	dbs := make([]string, 0, len(dumps))
	var oldest time.Time
	var size int64
	plans := make([]dumpPlan, 0, len(dumps))
	for _, d := range dumps {
		if _, _, ok := splitS3(d.Path); ok && s3c == nil {
			var err error
			if s3c, err = newS3Client(r.job.cfg.Logical.S3); err != nil {
				return time.Time{}, err
			}
		}
		p, err := r.inspect(ctx, s3c, d)
		if err != nil {
			return time.Time{}, err
		}
		if oldest.IsZero() || p.modTime.Before(oldest) {
			oldest = p.modTime
		}
		size += p.size
		dbs = append(dbs, d.DBName)
		plans = append(plans, p)
	}
	state := oldest.UTC().Truncate(time.Second)
	if !state.After(r.t.NotBefore) {
		state = time.Now().UTC().Truncate(time.Second)
	}
	if err := r.createDatabases(ctx, dbs); err != nil {
		return state, err
	}
	r.t.Progress.Phase("restore dumps", job.UnitBytes, size)
	for i, p := range plans {
		start := time.Now()
		var err error
		switch {
		case p.format == config.DumpDirectory && p.bucket != "":
			err = r.restoreS3Dir(ctx, s3c, p, i)
		case p.format == config.DumpDirectory:
			err = r.restoreDumpDir(ctx, p.d, p.d.Path)
		default:
			var in io.ReadCloser
			if p.bucket != "" {
				var o object
				o, err = s3c.get(ctx, p.bucket, p.key, -1)
				in = o.body
			} else {
				in, err = os.Open(p.d.Path)
			}
			if err != nil {
				return state, fmt.Errorf("dump %s: %w", p.d.Path, err)
			}
			if p.format == config.DumpCustom {
				err = r.restoreDumpStream(ctx, p.d, "", in, "pg_restore", r.job.restoreArgs(r.localConninfo(p.d.DBName))...)
			} else {
				err = r.restoreDumpStream(ctx, p.d, p.compression, in, "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", r.localConninfo(p.d.DBName))
			}
			_ = in.Close() // read to its end or failed
		}
		if err != nil {
			return state, err
		}
		r.log.Info("dump restored", "path", p.d.Path, "db", p.d.DBName, "format", p.format, "compression", p.compression, "elapsed", time.Since(start))
	}
	*total = size
	return state, nil
}

// restoreS3Dir fetches a directory-format dump from S3 into the pool's
// dump directory and restores it from there.
func (r *run) restoreS3Dir(ctx context.Context, s3c *s3Client, p dumpPlan, i int) error {
	root := r.dumpRoot()
	if _, err := os.Stat(root); err != nil {
		if err := r.prepareDumpRoot(); err != nil {
			return err
		}
	}
	// Removed before the snapshot, whatever happens here.
	defer func() {
		if err := removeDumpRoot(r.t.Pool.MainDir()); err != nil {
			r.log.Warn("removing the dump directory failed; the next refresh removes it", "dir", root, "err", err)
		}
	}()
	dir := filepath.Join(root, "s3-"+strconv.Itoa(i))
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("make the dump directory: %w", err)
	}
	if _, _, err := s3c.fetchDir(ctx, p.bucket, p.key, dir); err != nil {
		return err
	}
	if err := r.t.User.ChownR(dir); err != nil {
		return fmt.Errorf("hand the fetched dump to %s: %w", r.t.User.Name, err)
	}
	return r.restoreDumpDir(ctx, p.d, dir)
}

// restoreDumpStream feeds a dump, read by the agent and decompressed on
// the fly, to tool (pg_restore or psql) on its standard input: nothing is
// copied to disk, and a file need not be readable by the OS user the tool
// runs as.
func (r *run) restoreDumpStream(ctx context.Context, d config.Dump, compression string, src io.Reader, tool string, args ...string) error {
	var in io.Reader = bufio.NewReaderSize(&countingReader{r: src, p: r.t.Progress}, 1<<20)
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

// restoreDumpDir restores the directory-format dump d found in dir with
// pg_restore --jobs N, which reads the directory itself (as the OS user).
func (r *run) restoreDumpDir(ctx context.Context, d config.Dump, dir string) error {
	jobs := strconv.Itoa(max(r.job.cfg.Jobs, 1))
	cmd := r.tool(ctx, "pg_restore", []string{"PGPASSFILE=/dev/null"}, r.job.restoreArgs(r.localConninfo(d.DBName), "--jobs="+jobs)...)
	cmd.Args = append(cmd.Args, dir)
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
	r.t.Progress.Add(dirSize(dir))
	return nil
}
