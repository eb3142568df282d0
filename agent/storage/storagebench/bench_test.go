package storagebench

import (
	"context"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/backend"
	"github.com/thinlab/thinlab/internal/benchdata"
	"github.com/thinlab/thinlab/internal/pgcluster"
	"github.com/thinlab/thinlab/internal/testenv"
)

const (
	scale  = 100 // pgbench scale: ~1.5 GiB of PGDATA
	rounds = 5   // measured snapshots and clones per backend; the median is reported
)

var modes = []string{storage.ModeBtrfs, storage.ModeReflink, storage.ModeZFS}

func BenchmarkStorage(b *testing.B) {
	testenv.NeedsRoot(b, "root, for loop devices and zfs")
	data := benchdata.PGBench(b, scale)
	size := benchdata.Size(b, data)
	b.Logf("data directory: %.2f GiB (pgbench -s %d)", float64(size)/(1<<30), scale)
	for _, mode := range modes {
		b.Run(mode, func(b *testing.B) { benchMode(b, mode, data, size) })
	}
	b.Run("full_copy", func(b *testing.B) { benchFullCopy(b, data) })
}

func benchMode(b *testing.B, mode, data string, size int64) {
	ctx, cancel := context.WithTimeout(b.Context(), 30*time.Minute)
	defer cancel()
	u, err := pgcluster.LookupUser("postgres")
	if err != nil {
		b.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "thinlab-sb-")
	if err != nil {
		b.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	p, teardown, err := backend.CreateLoopPool(ctx, mode, backend.LoopOptions{Dir: dir, Size: 2*size + 4<<30, Owner: &storage.Owner{UID: int(u.UID), GID: int(u.GID)}, Logger: logger})
	if err != nil {
		_ = os.RemoveAll(dir) // best effort: the Fatal below is what matters
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := teardown(); err != nil {
			b.Errorf("teardown: %v", err)
			return
		}
		if err := os.Remove(dir); err != nil {
			b.Errorf("cleanup: %v", err)
		}
	})
	if err := os.Chown(p.MainDir(), int(u.UID), int(u.GID)); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	if out, err := exec.Command("cp", "-a", data, filepath.Join(p.MainDir(), storage.DataSubdir)).CombinedOutput(); err != nil {
		b.Fatalf("copy data into the pool: %v: %s", err, out)
	}
	// As retrieval does: the data is on disk before the snapshot. Twice:
	// the first sync may flush the pool into its image's page cache
	// after the host filesystem was synced.
	syscall.Sync()
	syscall.Sync()
	b.Logf("%s: data in the pool in %v", mode, time.Since(start).Round(100*time.Millisecond))

	base := time.Now().UTC().Truncate(time.Second)
	var snapTimes, cloneTimes, readyTimes []time.Duration
	var snap storage.Snapshot
	for i := range rounds {
		t0 := time.Now()
		s, err := p.Snapshot(ctx, storage.SnapshotOptions{DataStateAt: base.Add(time.Duration(i) * time.Second), Message: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		snapTimes = append(snapTimes, time.Since(t0))
		snap = s
	}
	// One unmeasured clone warms the postgres binaries and the
	// snapshot's metadata into the cache.
	for i := -1; i < rounds; i++ {
		name := fmt.Sprintf("bench%d", i+1)
		t0 := time.Now()
		c, err := p.Clone(ctx, snap.ID, name)
		if err != nil {
			b.Fatal(err)
		}
		cloned := time.Since(t0)
		cl := &pgcluster.Cluster{DataDir: filepath.Join(c.Mountpoint, storage.DataSubdir), User: u}
		port := 20000 + mrand.IntN(12000)
		if err := cl.Start(ctx, port, "", nil); err != nil {
			b.Fatal(err)
		}
		if err := query(ctx, cl, port); err != nil {
			cl.Kill()
			b.Fatal(err)
		}
		ready := time.Since(t0)
		cl.Kill()
		if err := p.DestroyClone(ctx, name); err != nil {
			b.Fatal(err)
		}
		if i >= 0 {
			cloneTimes = append(cloneTimes, cloned)
			readyTimes = append(readyTimes, ready)
		}
	}
	for _, s := range []struct {
		name string
		d    []time.Duration
	}{{"storage_snapshot_", snapTimes}, {"storage_clone_", cloneTimes}, {"storage_clone_ready_", readyTimes}} {
		fmt.Printf("BENCH %s%s %.3f s\n", s.name, mode, median(s.d).Seconds())
	}
	b.Logf("%s: snapshots %v; clones %v; ready %v", mode, snapTimes, cloneTimes, readyTimes)
}

// benchFullCopy is the baseline a thin clone replaces: cp -a of the whole
// data directory on the host's own filesystem.
func benchFullCopy(b *testing.B, data string) {
	var times []time.Duration
	for range 3 {
		dst := filepath.Join(benchdata.Root, fmt.Sprintf("fullcopy-%d", os.Getpid()))
		if err := os.RemoveAll(dst); err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		out, err := exec.Command("cp", "-a", data, dst).CombinedOutput()
		d := time.Since(t0)
		if rerr := os.RemoveAll(dst); rerr != nil && err == nil {
			err = rerr
		}
		if err != nil {
			b.Fatalf("cp -a: %v: %s", err, out)
		}
		times = append(times, d)
	}
	fmt.Printf("BENCH full_copy %.3f s\n", median(times).Seconds())
	b.Logf("full copies: %v", times)
}

// query connects over the clone's socket and counts pgbench's branches,
// which must be the scale the data was made with: a clone that answers
// with other data is not a clone of the snapshot.
func query(ctx context.Context, c *pgcluster.Cluster, port int) error {
	conn, err := pgx.Connect(ctx, c.SocketConnString(port, "postgres", "postgres"))
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close(ctx) }() // after a read: nothing to lose
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pgbench_branches").Scan(&n); err != nil {
		return err
	}
	if n != scale {
		return fmt.Errorf("the clone has %d pgbench branches, want %d (pgbench -s %d)", n, scale, scale)
	}
	return nil
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	slices.Sort(s)
	return s[len(s)/2]
}
