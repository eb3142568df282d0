// Command thinlab-demo-roundtrip is step 2 of `make demo`: on a pool of
// every copy-on-write backend that works on this host (each on its own loop
// file), it copies the demo's source database in with pg_basebackup, takes a
// snapshot, makes a clone, starts postgres on the clone and queries it, and
// prints how long each step took next to a full `cp -a` of the same data.
// Everything it creates is gone when it returns, also on failure.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/backend"
	"github.com/thinlab/thinlab/internal/command"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

func main() { os.Exit(mainCode()) }

// mainCode is main with an exit code, so that its deferred stop runs.
func mainCode() int {
	dir := flag.String("dir", "", "work directory (required; removed afterwards)")
	sourceHost := flag.String("source-host", "", "source server's socket directory or host (required)")
	sourcePort := flag.Int("source-port", 5432, "source server's port")
	modes := flag.String("modes", "btrfs,reflink,zfs,lvm", "backends to try, comma-separated")
	flag.Parse()
	if *dir == "" || *sourceHost == "" {
		fmt.Fprintln(os.Stderr, "usage: thinlab-demo-roundtrip -dir DIR -source-host HOST [-source-port PORT]")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r := &roundTrip{dir: *dir, sourceHost: *sourceHost, sourcePort: *sourcePort, log: logger}
	if err := r.run(ctx, strings.Split(*modes, ",")); err != nil {
		fmt.Fprintln(os.Stderr, "round trip:", err)
		return 1
	}
	return 0
}

// logErr logs a failed cleanup step: the demo's result stands, but the
// operator should know what may be left behind.
func (r *roundTrip) logErr(what string, err error) {
	if err != nil {
		r.log.Error(what, "err", err)
	}
}

type roundTrip struct {
	dir        string
	sourceHost string
	sourcePort int
	log        *slog.Logger
	user       pgcluster.OSUser
}

// result is one backend's line in the table.
type result struct {
	mode                   string
	snapshot, clone, ready time.Duration
	rows                   int64
	// isolated: after the first clone deleted every order, a second clone
	// of the same snapshot still has them all.
	isolated bool
	skipped  string
}

func (r *roundTrip) run(ctx context.Context, modes []string) error {
	u, err := pgcluster.LookupUser("postgres")
	if err != nil {
		return err
	}
	r.user = u
	if err := os.MkdirAll(r.dir, 0o755); err != nil { //nolint:gosec // 0755: the postgres OS user traverses it to reach PGDATA of the demo pools
		return err
	}
	defer func() { r.logErr("remove work directory", os.RemoveAll(r.dir)) }()

	var results []result
	var fullCopy time.Duration
	for _, mode := range modes {
		mode = strings.TrimSpace(mode)
		if mode == "" {
			continue
		}
		res, copyTook, err := r.one(ctx, mode)
		if err != nil {
			return fmt.Errorf("%s: %w", mode, err)
		}
		if copyTook > 0 && fullCopy == 0 {
			fullCopy = copyTook
		}
		results = append(results, res)
	}

	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	// tabwriter buffers: a failed write surfaces from Flush below.
	_, _ = fmt.Fprintln(w, "    BACKEND\tSNAPSHOT\tCLONE\tCLONE ANSWERS A QUERY\tCLONES ISOLATED")
	for _, res := range results {
		if res.skipped != "" {
			_, _ = fmt.Fprintf(w, "    %s\t-\t-\t-\t%s\n", res.mode, res.skipped)
			continue
		}
		_, _ = fmt.Fprintf(w, "    %s\t%s\t%s\t%s\tyes (%d orders deleted in one, all there in the other)\n", res.mode, ms(res.snapshot), ms(res.clone), ms(res.ready), res.rows)
	}
	if fullCopy > 0 {
		_, _ = fmt.Fprintf(w, "    full copy (cp -a)\t-\t%s\t-\t-\n", ms(fullCopy))
	}
	return w.Flush()
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f s", d.Seconds()) }

// one runs the round trip on one backend. A backend that cannot run here
// is reported as skipped with the reason, not as a failure.
func (r *roundTrip) one(ctx context.Context, mode string) (result, time.Duration, error) {
	res := result{mode: mode}
	if mode == storage.ModeLVM {
		res.skipped = "skipped: this kernel has no device-mapper (make test runs LVM in a QEMU VM)"
		return res, 0, nil
	}
	runner := command.Runner{Logger: r.log}
	pool, teardown, err := backend.CreateLoopPool(ctx, mode, backend.LoopOptions{
		Dir:    filepath.Join(r.dir, mode),
		Size:   4 << 30,
		Name:   fmt.Sprintf("demo%s%d", mode, os.Getpid()), // unique: a leaked pool of an earlier run cannot block it
		Owner:  &storage.Owner{UID: int(r.user.UID), GID: int(r.user.GID)},
		Runner: &runner,
		Logger: r.log,
	})
	if err != nil {
		res.skipped = "skipped: " + firstLine(err.Error())
		return res, 0, nil
	}
	defer func() { r.logErr("tear down the "+mode+" pool", teardown()) }()

	dataDir := filepath.Join(pool.MainDir(), storage.DataSubdir)
	// Filling the main dataset is the caller's job (retrieval's, in the
	// agent); pg_basebackup runs as postgres and creates PGDATA there.
	if err := os.Chown(pool.MainDir(), int(r.user.UID), int(r.user.GID)); err != nil {
		return res, 0, err
	}
	binDir, err := pgcluster.NewestBinDir("/usr/lib/postgresql")
	if err != nil {
		return res, 0, err
	}
	if _, err := runner.RunCmd(ctx, command.Cmd{
		Name: filepath.Join(binDir, "pg_basebackup"),
		Args: []string{"-h", r.sourceHost, "-p", fmt.Sprint(r.sourcePort), "-U", "postgres",
			"-D", dataDir, "-X", "stream", "-c", "fast"},
		Credential: r.user.Credential(),
	}); err != nil {
		return res, 0, fmt.Errorf("copy the source into the pool: %w", err)
	}

	var copyTook time.Duration
	if mode == storage.ModeBtrfs {
		// The baseline: what a thin clone replaces.
		t := time.Now()
		dst := filepath.Join(r.dir, "full-copy")
		if _, err := runner.Run(ctx, "cp", "-a", dataDir, dst); err != nil {
			return res, 0, fmt.Errorf("full copy: %w", err)
		}
		copyTook = time.Since(t)
		if err := os.RemoveAll(dst); err != nil {
			return res, 0, fmt.Errorf("remove the full copy: %w", err)
		}
	}

	t := time.Now()
	snap, err := pool.Snapshot(ctx, storage.SnapshotOptions{Message: "demo round trip"})
	if err != nil {
		return res, 0, fmt.Errorf("snapshot: %w", err)
	}
	res.snapshot = time.Since(t)
	defer func() { r.logErr("destroy snapshot", pool.DestroySnapshot(context.Background(), snap.ID, true)) }()

	t = time.Now()
	cl, err := pool.Clone(ctx, snap.ID, "roundtrip")
	if err != nil {
		return res, 0, fmt.Errorf("clone: %w", err)
	}
	res.clone = time.Since(t)
	defer func() { r.logErr("destroy clone", pool.DestroyClone(context.Background(), cl.Name)) }()

	conn, cleanup, err := r.startClone(ctx, cl, runner)
	if err != nil {
		return res, 0, err
	}
	defer cleanup()
	if err := conn.QueryRow(ctx, "select count(*) from orders").Scan(&res.rows); err != nil {
		return res, 0, fmt.Errorf("query the clone: %w", err)
	}
	res.ready = time.Since(t)
	if _, err := conn.Exec(ctx, "delete from order_items; delete from orders"); err != nil {
		return res, 0, fmt.Errorf("write in the clone: %w", err)
	}

	// A second clone of the same snapshot does not see the first's writes.
	cl2, err := pool.Clone(ctx, snap.ID, "roundtrip2")
	if err != nil {
		return res, 0, fmt.Errorf("second clone: %w", err)
	}
	defer func() { r.logErr("destroy clone", pool.DestroyClone(context.Background(), cl2.Name)) }()
	conn2, cleanup2, err := r.startClone(ctx, cl2, runner)
	if err != nil {
		return res, 0, err
	}
	defer cleanup2()
	var rows2 int64
	if err := conn2.QueryRow(ctx, "select count(*) from orders").Scan(&rows2); err != nil {
		return res, 0, fmt.Errorf("query the second clone: %w", err)
	}
	if rows2 != res.rows {
		return res, 0, fmt.Errorf("the second clone has %d orders, want %d: clones are not isolated", rows2, res.rows)
	}
	res.isolated = true
	return res, copyTook, nil
}

// startClone starts postgres on a clone (socket only) and connects to the
// shop database; cleanup closes and stops it.
func (r *roundTrip) startClone(ctx context.Context, cl storage.Clone, runner command.Runner) (*pgx.Conn, func(), error) {
	port, err := freePort()
	if err != nil {
		return nil, nil, err
	}
	c := &pgcluster.Cluster{DataDir: filepath.Join(cl.Mountpoint, storage.DataSubdir), User: r.user, Runner: runner, Logger: r.log}
	if err := c.Start(ctx, port, "", pgcluster.FastSettings); err != nil {
		return nil, nil, fmt.Errorf("start postgres on clone %s: %w", cl.Name, err)
	}
	conn, err := pgx.Connect(ctx, c.SocketConnString(port, "postgres", "shop"))
	if err != nil {
		r.logErr("stop clone postgres", c.Stop(context.Background(), "immediate"))
		return nil, nil, fmt.Errorf("connect to clone %s: %w", cl.Name, err)
	}
	return conn, func() {
		_ = conn.Close(context.Background()) // the server is stopped next
		r.logErr("stop clone postgres", c.Stop(context.Background(), "immediate"))
	}, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer func() { _ = l.Close() }() // only its port was wanted
	return l.Addr().(*net.TCPAddr).Port, nil
}

func firstLine(s string) string {
	if before, _, ok := strings.Cut(s, "\n"); ok {
		return before
	}
	return s
}
