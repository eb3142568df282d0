// Package branchbench measures branching on real pools at 1.5 GiB
// (pgbench -s 100): a commit (a snapshot of a running clone with writes)
// and a clone from that commit until its user's query answers.
package branchbench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/agent/branch"
	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/runtime"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/benchdata"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

const (
	password = "Bench-Correct-Horse-Battery-9"
	scale    = 100 // pgbench scale: 1.5 GiB
	rounds   = 5
)

// BenchmarkBranch: per backend, rounds of (write 1,000 rows in a clone on
// a branch, commit it, clone the commit and read the rows back). The
// commit includes the CHECKPOINT that makes the running clone's state
// durable; the clone-from-commit time ends when the new clone's user has
// read the committed rows over TCP.
func BenchmarkBranch(b *testing.B) {
	for _, be := range []struct {
		name string
		mode string
	}{{"btrfs", storage.ModeBtrfs}, {"zfs", storage.ModeZFS}} {
		b.Run(be.name, func(b *testing.B) { benchBranch(b, be.name, be.mode) })
	}
}

func benchBranch(b *testing.B, name, mode string) {
	ctx, cancel := context.WithTimeout(b.Context(), 60*time.Minute)
	defer cancel()
	data := benchdata.PGBench(b, scale)
	size := benchdata.Size(b, data)
	p := clonetest.NewPoolMode(b, mode, fmt.Sprintf("%dG", 2*size/(1<<30)+8))
	u, err := pgcluster.LookupUser("postgres")
	if err != nil {
		b.Fatal(err)
	}
	if err := os.Chown(p.MainDir(), int(u.UID), int(u.GID)); err != nil {
		b.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", data, filepath.Join(p.MainDir(), storage.DataSubdir)).CombinedOutput(); err != nil {
		b.Fatalf("copy data into the pool: %v: %s", err, out)
	}
	syscall.Sync()
	syscall.Sync()
	snap, err := p.Snapshot(ctx, storage.SnapshotOptions{Message: "bench"})
	if err != nil {
		b.Fatal(err)
	}

	cfg := config.Default()
	cfg.Pools = []config.Pool{{Name: p.Name(), Mode: p.Mode(), Path: p.MainDir()}}
	cfg.Provision.PortPool = config.PortPool{From: 17000, To: 17000 + 2*rounds + 9}
	cfg.Provision.CloneUIDs = config.IDRange{From: config.DefaultCloneUIDFrom + 5000, To: config.DefaultCloneUIDFrom + 5999}
	cfg.StateDir = b.TempDir()
	cfg.Server.VerificationToken = config.GenerateToken()
	b.Cleanup(func() { _ = os.RemoveAll(runtime.RunDirFor(cfg.StateDir)) })
	if err := cfg.Validate(); err != nil {
		b.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	m, err := clone.NewManager(ctx, clone.Options{Config: cfg, Pools: []storage.Pool{p}, Logger: log, CheckInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	var ids []string
	b.Cleanup(func() {
		// Newest first: a commit's clone before the clone it was made of.
		for _, id := range slices.Backward(ids) {
			if err := m.Destroy(context.Background(), id); err != nil {
				b.Errorf("destroy %s: %v", id, err)
			}
			if _, err := m.Wait(context.Background(), id); !errors.Is(err, clone.ErrNotFound) {
				b.Errorf("%s after destroy: %v", id, err)
			}
		}
		if err := m.Close(); err != nil {
			b.Errorf("close manager: %v", err)
		}
	})
	svc, err := branch.New(branch.Options{StateDir: cfg.StateDir, Pools: []storage.Pool{p}, Clones: m, Logger: log})
	if err != nil {
		b.Fatal(err)
	}
	if err := svc.Create(ctx, "bench", "", snap.ID); err != nil {
		b.Fatal(err)
	}

	var commits, clones []time.Duration
	b.ResetTimer()
	for i := range rounds {
		work := fmt.Sprintf("work%d", i)
		c, err := ready(ctx, m, clone.CreateRequest{ID: work, SnapshotID: headOf(ctx, b, svc), Branch: "bench", Username: "bench", Password: password})
		if err != nil {
			b.Fatal(err)
		}
		ids = append(ids, work)
		marker := fmt.Sprintf("round %d", i)
		if _, err := exec1(ctx, c, fmt.Sprintf("UPDATE pgbench_accounts SET filler = '%s' WHERE aid <= 1000", marker)); err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		res, err := svc.Commit(ctx, work, marker, "bench")
		if err != nil {
			b.Fatal(err)
		}
		commits = append(commits, time.Since(t0))

		from := fmt.Sprintf("from%d", i)
		t0 = time.Now()
		c2, err := ready(ctx, m, clone.CreateRequest{ID: from, SnapshotID: res.Snapshot.ID, Branch: "bench", Username: "bench", Password: password})
		if err != nil {
			b.Fatal(err)
		}
		n, err := exec1(ctx, c2, fmt.Sprintf("SELECT count(*) FROM pgbench_accounts WHERE aid <= 1000 AND filler = '%s'", marker))
		if err != nil {
			b.Fatal(err)
		}
		clones = append(clones, time.Since(t0))
		ids = append(ids, from)
		if n != 1000 {
			b.Fatalf("the clone of commit %s has %d committed rows, want 1000", res.Snapshot.ID, n)
		}
	}
	b.StopTimer()
	slices.Sort(commits)
	slices.Sort(clones)
	fmt.Printf("BENCH branch_commit_%s %.3f s\n", name, median(commits).Seconds())
	fmt.Printf("BENCH branch_clone_ready_%s %.3f s\n", name, median(clones).Seconds())
}

func headOf(ctx context.Context, b *testing.B, svc *branch.Service) string {
	head, err := svc.Head(ctx, "bench")
	if err != nil {
		b.Fatal(err)
	}
	return head
}

// ready creates a clone and waits until it is OK.
func ready(ctx context.Context, m *clone.Manager, r clone.CreateRequest) (clone.Clone, error) {
	c, err := m.Create(ctx, r)
	if err != nil {
		return c, err
	}
	if c, err = m.Wait(ctx, c.ID); err != nil {
		return c, err
	}
	if c.Status != clone.StatusOK {
		return c, fmt.Errorf("clone %s: %s: %s", c.ID, c.Status, c.StatusMessage)
	}
	return c, nil
}

// exec1 runs sql in the clone as its user over TCP and returns the first
// column of the answer as a number (or the rows a statement changed).
func exec1(ctx context.Context, c clone.Clone, sql string) (int64, error) {
	cc, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d user=bench dbname=postgres sslmode=disable", c.Host, c.Port))
	if err != nil {
		return 0, err
	}
	cc.Password = password
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return 0, err
	}
	defer func() { _ = conn.Close(ctx) }() // a failed goodbye loses nothing
	rows, err := conn.Query(ctx, sql)
	if err != nil {
		return 0, err
	}
	var n int64
	for rows.Next() {
		if err := rows.Scan(&n); err != nil {
			return 0, err
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	if tag := rows.CommandTag(); tag.Update() {
		n = tag.RowsAffected()
	}
	return n, nil
}

// median of sorted durations.
func median(sorted []time.Duration) time.Duration {
	return sorted[int(math.Floor(float64(len(sorted))/2))]
}
