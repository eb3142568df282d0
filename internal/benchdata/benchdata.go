// Package benchdata gives benchmarks the PostgreSQL data directory they
// snapshot and clone: `pgbench -i -s SCALE`, generated once and cached
// under Root, so agent/clone/clonebench and agent/storage/storagebench
// reuse each other's (scale 100 takes minutes to generate).
package benchdata

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/thinlab/thinlab/internal/command"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

// Root holds the cache: Root/pgbench-s<SCALE>/pgdata, with a file
// "complete" beside pgdata once it is whole.
const Root = "/var/tmp/thinlab-bench"

// PGBench returns a cleanly stopped PGDATA holding `pgbench -i -s scale`,
// generating it on first use. It needs root and PostgreSQL 15.
func PGBench(tb testing.TB, scale int) string {
	tb.Helper()
	dir := filepath.Join(Root, fmt.Sprintf("pgbench-s%d", scale))
	data := filepath.Join(dir, "pgdata")
	if _, err := os.Stat(filepath.Join(dir, "complete")); err == nil {
		return data
	}
	u, err := pgcluster.LookupUser("postgres")
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.MkdirAll(Root, 0o755); err != nil {
		tb.Fatal(err)
	}
	// MkdirAll keeps the mode of an existing Root; the postgres user must
	// traverse it.
	if err := os.Chmod(Root, 0o755); err != nil {
		tb.Fatal(err)
	}
	tmp := dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil { // an earlier run's half-made copy
		tb.Fatal(err)
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		tb.Fatal(err)
	}
	ctx := context.Background()
	c := &pgcluster.Cluster{DieWithParent: true, DataDir: filepath.Join(tmp, "pgdata"), User: u}
	if err := c.Init(ctx, pgcluster.InitOptions{}); err != nil {
		tb.Fatal(err)
	}
	// wal_level minimal: pgbench's COPY into tables truncated in the same
	// transaction skips WAL, so PGDATA is the tables, not gigabytes of WAL.
	settings := map[string]string{"maintenance_work_mem": "512MB", "wal_level": "minimal", "max_wal_senders": "0",
		"max_wal_size": "1GB", "min_wal_size": "32MB", "checkpoint_timeout": "1h"}
	maps.Copy(settings, pgcluster.FastSettings)
	port := 20000 + mrand.IntN(12000)
	if err := c.Start(ctx, port, "", settings); err != nil {
		tb.Fatal(err)
	}
	defer c.Kill()
	tb.Logf("generating pgbench scale %d into %s (once)", scale, dir)
	start := time.Now()
	if _, err := (command.Runner{}).RunCmd(ctx, command.Cmd{
		Name:       filepath.Join(c.BinDir, "pgbench"),
		Args:       []string{"-i", "-q", "-s", strconv.Itoa(scale), "-h", c.DataDir, "-p", strconv.Itoa(port), "-U", "postgres", "postgres"},
		Credential: u.Credential(),
		Dir:        "/",
	}); err != nil {
		tb.Fatal(err)
	}
	if err := c.Stop(ctx, "fast"); err != nil {
		tb.Fatal(err)
	}
	if err := os.Remove(c.LogFile()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		tb.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "complete"), []byte(time.Now().String()), 0o644); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(tmp, dir); err != nil && !errors.Is(err, os.ErrExist) {
		tb.Fatal(err)
	}
	tb.Logf("pgbench scale %d generated in %v", scale, time.Since(start).Round(time.Second))
	return data
}

// Size is the bytes of the regular files below dir.
func Size(tb testing.TB, dir string) int64 {
	tb.Helper()
	var total int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			total += info.Size()
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return total
}
