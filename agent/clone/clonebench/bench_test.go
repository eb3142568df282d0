package clonebench

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
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/runtime"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/benchdata"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

const (
	password  = "Bench-Correct-Horse-Battery-9"
	clones    = 20
	rssClones = 50
)

type backend struct {
	name    string
	newPool func(b *testing.B, size string) storage.Pool
}

// backends are the pool kinds measured. The benchmark runs in-process
// through clone.Manager (the same engine `thinlab agent run` wires up).
var backends = []backend{
	{"btrfs", func(b *testing.B, size string) storage.Pool { return clonetest.NewPoolSize(b, size) }},
	{"zfs", func(b *testing.B, size string) storage.Pool { return clonetest.NewPoolMode(b, storage.ModeZFS, size) }},
}

func scales() []int {
	raw := os.Getenv("THINLAB_BENCH_SCALES")
	if raw == "" {
		raw = "100,400"
	}
	var out []int
	for f := range strings.SplitSeq(raw, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && n > 0 {
			out = append(out, n)
		}
	}
	return out
}

func BenchmarkClone(b *testing.B) {
	for i, be := range backends {
		b.Run(be.name, func(b *testing.B) { benchBackend(b, be, i == 0) })
	}
}

// sized is one pool filled with one pgbench database.
type sized struct {
	label string
	scale int // pgbench scale: the number of rows in pgbench_branches
	snap  string
	m     *clone.Manager
	lat   []time.Duration
	ids   []string
}

// benchBackend fills one pool per scale, then creates the clones of all
// sizes interleaved (one of each in turn), so that whatever else the host
// does affects every size alike and only the size differs.
func benchBackend(b *testing.B, be backend, measureRSS bool) {
	ctx, cancel := context.WithTimeout(b.Context(), 60*time.Minute)
	defer cancel()
	var sets []*sized
	for i, scale := range scales() {
		data := benchdata.PGBench(b, scale)
		size := benchdata.Size(b, data)
		s := &sized{label: fmt.Sprintf("%.1fGiB", float64(size)/(1<<30)), scale: scale}
		p := be.newPool(b, fmt.Sprintf("%dG", 2*size/(1<<30)+8))
		u, err := pgcluster.LookupUser("postgres")
		if err != nil {
			b.Fatal(err)
		}
		if err := os.Chown(p.MainDir(), int(u.UID), int(u.GID)); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if out, err := exec.Command("cp", "-a", data, filepath.Join(p.MainDir(), storage.DataSubdir)).CombinedOutput(); err != nil {
			b.Fatalf("copy data into the pool: %v: %s", err, out)
		}
		// As retrieval does: the data reaches the disk before the
		// snapshot. Twice: the first sync may flush the pool into its loop
		// file's page cache after the host filesystem was already synced.
		syscall.Sync()
		syscall.Sync()
		snap, err := p.Snapshot(ctx, storage.SnapshotOptions{Message: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		s.snap = snap.ID
		b.Logf("%s: %s of data in the pool in %v", be.name, s.label, time.Since(start).Round(time.Second))

		cfg := config.Default()
		cfg.Pools = []config.Pool{{Name: p.Name(), Mode: p.Mode(), Path: p.MainDir()}}
		from := 16000 + i*100
		cfg.Provision.PortPool = config.PortPool{From: from, To: from + rssClones + 9}
		// One manager per size: each its own clone uids.
		uidFrom := uint32(config.DefaultCloneUIDFrom + i*1000)
		cfg.Provision.CloneUIDs = config.IDRange{From: uidFrom, To: uidFrom + 999}
		cfg.StateDir = b.TempDir()
		cfg.Server.VerificationToken = config.GenerateToken()
		b.Cleanup(func() {
			if err := os.RemoveAll(runtime.RunDirFor(cfg.StateDir)); err != nil {
				b.Errorf("remove the run directory: %v", err)
			}
		})
		if err := cfg.Validate(); err != nil {
			b.Fatal(err)
		}
		m, err := clone.NewManager(ctx, clone.Options{Config: cfg, Pools: []storage.Pool{p}, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: benchLogLevel()})), CheckInterval: -1})
		if err != nil {
			b.Fatal(err)
		}
		s.m = m
		// Background inside: b.Context() is already cancelled when cleanups run.
		b.Cleanup(func() {
			for _, id := range s.ids {
				if err := m.Destroy(context.Background(), id); err != nil {
					b.Errorf("destroy %s: %v", id, err)
				}
			}
			for _, id := range s.ids {
				if _, err := m.Wait(context.Background(), id); !errors.Is(err, clone.ErrNotFound) {
					b.Errorf("%s after destroy: %v, want ErrNotFound", id, err)
				}
			}
			if err := m.Close(); err != nil {
				b.Errorf("close manager: %v", err)
			}
		})
		// One unmeasured clone warms the binaries and the snapshot's
		// metadata into the cache.
		if err := createAndQuery(ctx, m, s.snap, "warmup", s.scale); err != nil {
			b.Fatal(err)
		}
		s.ids = append(s.ids, "warmup")
		sets = append(sets, s)
	}

	b.ResetTimer()
	for i := range clones {
		for _, s := range sets {
			id := fmt.Sprintf("bench%d", i)
			t0 := time.Now()
			if err := createAndQuery(ctx, s.m, s.snap, id, s.scale); err != nil {
				b.Fatal(err)
			}
			s.lat = append(s.lat, time.Since(t0))
			s.ids = append(s.ids, id)
		}
	}
	b.StopTimer()
	for _, s := range sets {
		slices.Sort(s.lat)
		fmt.Printf("BENCH clone_ready_p50_%s_%s %.3f s\n", be.name, s.label, pct(s.lat, 50).Seconds())
		fmt.Printf("BENCH clone_ready_p95_%s_%s %.3f s\n", be.name, s.label, pct(s.lat, 95).Seconds())
	}

	if measureRSS && len(sets) > 0 {
		s := sets[0]
		for len(s.m.List()) < rssClones {
			id := fmt.Sprintf("rss%d", len(s.ids))
			if err := createAndQuery(ctx, s.m, s.snap, id, s.scale); err != nil {
				b.Fatal(err)
			}
			s.ids = append(s.ids, id)
		}
		// The RSS is of the whole benchmark process (the engine runs in
		// it, as in the agent, but so do the test harness and the other
		// sizes' Managers with 21 clones each): an upper bound for an
		// agent with 50 clones, named for what it measures.
		fmt.Printf("BENCH bench_process_rss_50_clones %.1f MiB\n", float64(rss(b))/(1<<20))
	}
}

// createAndQuery is one measured clone: the create call until the clone's
// user has run a query over TCP with its password, whose answer must be
// the snapshot's data (pgbench_branches holds scale rows).
func createAndQuery(ctx context.Context, m *clone.Manager, snap, id string, scale int) error {
	c, err := m.Create(ctx, clone.CreateRequest{ID: id, SnapshotID: snap, Username: "bench", Password: password})
	if err != nil {
		return err
	}
	if c, err = m.Wait(ctx, c.ID); err != nil {
		return err
	}
	if c.Status != clone.StatusOK {
		return fmt.Errorf("clone %s: %s: %s", id, c.Status, c.StatusMessage)
	}
	cc, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d user=bench dbname=postgres sslmode=disable", c.Host, c.Port))
	if err != nil {
		return err
	}
	cc.Password = password
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close(ctx) }() // a failed goodbye loses nothing
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pgbench_branches").Scan(&n); err != nil {
		return err
	}
	if n != scale {
		return fmt.Errorf("clone %s has %d pgbench branches, want %d (pgbench -s %d)", id, n, scale, scale)
	}
	return nil
}

// pct is the nearest-rank percentile of sorted durations.
func pct(sorted []time.Duration, p float64) time.Duration {
	i := max(int(math.Ceil(p/100*float64(len(sorted))))-1, 0)
	return sorted[i]
}

func rss(b *testing.B) uint64 {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.SplitSeq(string(raw), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			return kb << 10
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

// benchLogLevel is warn, or debug with THINLAB_BENCH_DEBUG=1 (per-step
// timings of every clone).
func benchLogLevel() slog.Level {
	if os.Getenv("THINLAB_BENCH_DEBUG") != "" {
		return slog.LevelDebug
	}
	return slog.LevelWarn
}
