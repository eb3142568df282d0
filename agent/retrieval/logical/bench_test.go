package logical

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/retrieval/job"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/storagetest"
	"github.com/thinlab/thinlab/internal/benchdata"
	"github.com/thinlab/thinlab/internal/command"
	"github.com/thinlab/thinlab/internal/pgcluster"
	"github.com/thinlab/thinlab/internal/pgtest"
)

// BenchmarkLogicalRetrieval prints
//
//	BENCH logical_retrieval_plain S s     pg_dump -j2 -Fd, then pg_restore -j2 into a fresh default postgres
//	BENCH logical_retrieval_thinlab S s   the logical job (format directory, jobs 2) and the pool's snapshot
//	BENCH logical_retrieval_ratio R       thinlab over plain (the bar: at most 1.1)
//
// for one source holding `pgbench -i -s THINLAB_BENCH_LOGICAL_SCALE` (10
// by default, about 150 MiB; the figure is 100, 1.5 GiB), copied
// from internal/benchdata's cache. Both runs copy the same source in the
// same process, plain first (its dump reads the source's files into the
// page cache for both), onto btrfs loop pools of their own; each ends with
// a cleanly stopped data directory whose pgbench_accounts count is checked.
//
//	THINLAB_BENCH_LOGICAL_SCALE=100 go test -count=1 -run '^$' -bench LogicalRetrieval -benchtime 1x ./agent/retrieval/logical/
func BenchmarkLogicalRetrieval(b *testing.B) {
	scale := 10
	if v := os.Getenv("THINLAB_BENCH_LOGICAL_SCALE"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("THINLAB_BENCH_LOGICAL_SCALE %q: want a pgbench scale (1 or more)", v)
		}
		scale = n
	}
	ctx := b.Context()
	u := pgtest.OSUser(b)
	src := benchSource(b, benchdata.PGBench(b, scale))
	bin, err := pgcluster.NewestBinDir(config.Default().Provision.PgBinRoot)
	if err != nil {
		b.Fatal(err)
	}
	wantRows := scale * 100000

	for b.Loop() {
		// Plain: the two tools as an admin runs them, into a fresh
		// postgres with initdb's settings.
		plainPool := storagetest.NewLoopPoolSize(b, storage.ModeBtrfs, 16<<30)
		if err := os.Chown(plainPool.MainDir(), int(u.UID), int(u.GID)); err != nil {
			b.Fatal(err)
		}
		dumpDir := filepath.Join(plainPool.MainDir(), "dump")
		target := &pgcluster.Cluster{DataDir: filepath.Join(plainPool.MainDir(), storage.DataSubdir), BinDir: bin, User: u, DieWithParent: true}
		b.Cleanup(target.Kill)
		run := func(name string, args ...string) {
			b.Helper()
			if _, err := (command.Runner{}).RunCmd(ctx, command.Cmd{Name: filepath.Join(bin, name), Args: args, Credential: u.Credential(), Dir: "/",
				Env: []string{"PGPASSWORD=" + pgtest.Password, "PGSSLMODE=disable"}}); err != nil {
				b.Fatal(err)
			}
		}
		targetPort := pgtest.FreePort(b)
		start := time.Now()
		run("pg_dump", "-j2", "-Fd", "-f", dumpDir, "-h", "127.0.0.1", "-p", strconv.Itoa(src.Port), "-U", "postgres", "postgres")
		if err := target.Init(ctx, pgcluster.InitOptions{}); err != nil {
			b.Fatal(err)
		}
		if err := target.Start(ctx, targetPort, "", nil); err != nil {
			b.Fatal(err)
		}
		run("pg_restore", "-j2", "--no-owner", "--no-acl", "--exit-on-error", "-d", target.SocketConnString(targetPort, "postgres", "postgres"), dumpDir)
		if err := target.Stop(ctx, "fast"); err != nil {
			b.Fatal(err)
		}
		plain := time.Since(start)
		checkAccounts(b, target, wantRows)

		// Thinlab: the logical job and the snapshot the core takes.
		pool := storagetest.NewLoopPoolSize(b, storage.ModeBtrfs, 16<<30)
		cfg := config.Retrieval{Mode: Mode, Jobs: 2, Databases: []string{"postgres"},
			Source:  config.Source{Host: "127.0.0.1", Port: src.Port, Username: "postgres", Password: pgtest.Password, SSLMode: "disable"},
			Logical: config.Logical{Format: config.FormatDirectory}}
		j, err := New(cfg, slog.New(slog.DiscardHandler))
		if err != nil {
			b.Fatal(err)
		}
		start = time.Now()
		out, err := j.Run(ctx, job.Target{Pool: pool, BinDir: bin, User: u, Progress: &job.Progress{}})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := pool.Snapshot(ctx, storage.SnapshotOptions{DataStateAt: out.DataStateAt, Message: "bench"}); err != nil {
			b.Fatal(err)
		}
		ours := time.Since(start)
		checkAccounts(b, &pgcluster.Cluster{DataDir: filepath.Join(pool.MainDir(), storage.DataSubdir), BinDir: bin, User: u, DieWithParent: true}, wantRows)

		fmt.Printf("BENCH logical_retrieval_plain %.1f s\n", plain.Seconds())
		fmt.Printf("BENCH logical_retrieval_thinlab %.1f s\n", ours.Seconds())
		fmt.Printf("BENCH logical_retrieval_ratio %.2f\n", ours.Seconds()/plain.Seconds())
		fmt.Printf("# pgbench scale %d, source data directory %.2f GiB\n", scale, float64(benchdata.Size(b, src.Cluster.DataDir))/(1<<30))
	}
}

// benchSource starts a source server on a private copy of data (a cleanly
// stopped PGDATA), on loopback with pgtest's password.
func benchSource(b *testing.B, data string) *pgtest.Server {
	b.Helper()
	u := pgtest.OSUser(b)
	dir, err := pgcluster.MkdirTemp("logical-bench-src-*", u)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = os.RemoveAll(dir) })
	copyDir := filepath.Join(dir, "pgdata")
	if _, err := (command.Runner{}).Run(b.Context(), "cp", "-a", data, copyDir); err != nil {
		b.Fatal(err)
	}
	c := &pgcluster.Cluster{DataDir: copyDir, User: u, DieWithParent: true}
	port := pgtest.FreePort(b)
	if err := c.Start(b.Context(), port, "127.0.0.1", pgcluster.FastSettings); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(c.Kill)
	s := &pgtest.Server{Cluster: c, Port: port, Password: pgtest.Password}
	s.Exec(b, "postgres", "ALTER ROLE postgres PASSWORD '"+pgtest.Password+"'")
	return s
}

// checkAccounts starts c (socket only), checks pgbench_accounts' row count
// and stops it again.
func checkAccounts(b *testing.B, c *pgcluster.Cluster, want int) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	port := pgtest.FreePort(b)
	if err := c.Start(ctx, port, "", pgcluster.FastSettings); err != nil {
		b.Fatal(err)
	}
	defer c.Kill()
	conn, err := pgcluster.Connect(ctx, c.SocketConnString(port, "postgres", "postgres"))
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = conn.Close(context.Background()) }() // the server is killed next
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM public.pgbench_accounts").Scan(&n); err != nil {
		b.Fatal(err)
	}
	if n != want {
		b.Fatalf("the restored pgbench_accounts has %d rows, want %d", n, want)
	}
}
