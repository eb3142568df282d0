package clonebench

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/config"
	agentrt "github.com/thinlab/thinlab/agent/runtime"
	"github.com/thinlab/thinlab/agent/storage"
)

// envInt is a positive integer from the environment, or def.
func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

// BenchmarkDensity measures, on a btrfs loop pool with a small database,
// through clone.Manager in-process (the engine `thinlab agent run` wires
// up):
//   - host_mib_per_idle_clone: the proportional set size (PSS) of every
//     process of N idle clones (THINLAB_BENCH_IDLE, default 100) divided
//     by N, with the default clone settings and again with a dense profile
//     (autovacuum and the logical replication launcher off);
//   - clone_wake_p50/p95: from dialling a hibernated clone's port to the
//     answer of its first query (pgx, password login), over 20 clones,
//     next to the same for an awake clone;
//   - hibernated_clones_per_host: the agent's memory with M hibernated
//     clones (THINLAB_BENCH_HIBERNATED, default 300): the process's RSS
//     growth per hibernated clone (its clones' own processes are gone),
//     extrapolated to how many fit 4 GiB.
//
// Run: go test -run '^$' -bench Density -benchtime 1x -timeout 60m ./agent/clone/clonebench/
func BenchmarkDensity(b *testing.B) {
	ctx, cancel := context.WithTimeout(b.Context(), 50*time.Minute)
	defer cancel()
	idle := envInt("THINLAB_BENCH_IDLE", 100)
	hib := max(envInt("THINLAB_BENCH_HIBERNATED", 300), idle)

	p := clonetest.NewPoolSize(b, "16G")
	snap := clonetest.Fill(b, p, "CREATE TABLE t (id int PRIMARY KEY, v text)", "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 10000) g")
	cfg := clonetest.Config(b, p, hib+20)
	cfg.Cloning.MaxIdleMinutes = 0
	// A uid per clone, more than the tests' 100.
	cfg.Provision.CloneUIDs = config.IDRange{From: 2_000_000, To: 2_000_000 + uint32(hib) + 99} //nolint:gosec // hib is a small positive count
	if err := cfg.Validate(); err != nil {
		b.Fatal(err)
	}
	runtime.GC()
	rss0 := rss(b)
	m, err := clone.NewManager(ctx, clone.Options{Config: cfg, Pools: []storage.Pool{p}, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: benchLogLevel()})), CheckInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	// Registered after the pool: runs before the pool's removal.
	b.Cleanup(func() {
		if err := m.Close(); err != nil {
			b.Errorf("close manager: %v", err)
		}
		clonetest.KillClones(p)
	})
	uids := cfg.Provision.CloneUIDs
	clonePSS := func() uint64 { return agentrt.PSSOfUIDRange(uids.From, uids.To) }
	var ids []string
	create := func(id string) clone.Clone {
		c, err := m.Create(ctx, clone.CreateRequest{ID: id, SnapshotID: snap.ID, Username: "bench", Password: password})
		if err != nil {
			b.Fatal(err)
		}
		ids = append(ids, id)
		if c, err = m.Wait(ctx, id); err != nil || c.Status != clone.StatusOK {
			b.Fatalf("clone %s: %+v %v", id, c, err)
		}
		if _, err := connectQuery(ctx, c); err != nil {
			b.Fatalf("clone %s: %v", id, err)
		}
		return c
	}
	destroyAll := func() {
		for _, id := range ids {
			if err := m.Destroy(ctx, id); err != nil {
				b.Fatalf("destroy %s: %v", id, err)
			}
			if _, err := m.Wait(ctx, id); err == nil {
				b.Fatalf("%s still there after destroy", id)
			}
		}
		ids = nil
	}
	b.ResetTimer()

	// Idle clones, default settings, then a dense profile.
	for _, profile := range []struct {
		name     string
		settings map[string]string
	}{
		{"", nil},
		{"_dense", map[string]string{"autovacuum": "off", "max_logical_replication_workers": "0"}},
	} {
		cfg.Provision.CloneDefaults.Settings = profile.settings
		t0 := time.Now()
		for i := range idle {
			create(fmt.Sprintf("idle%d", i))
		}
		took := time.Since(t0)
		time.Sleep(10 * time.Second) // let them settle into idleness
		pss := clonePSS()
		fmt.Printf("BENCH host_mib_per_idle_clone%s %.1f MiB   (%d idle clones, PSS of all their processes %.0f MiB, created in %v)\n",
			profile.name, float64(pss)/float64(idle)/(1<<20), idle, float64(pss)/(1<<20), took.Round(time.Second))
		if profile.name == "" {
			benchWake(b, ctx, m, ids[:20])
		}
		destroyAll()
	}
	cfg.Provision.CloneDefaults.Settings = nil

	// Hibernated clones: each hibernated right after it is made.
	runtime.GC()
	rssStart := rss(b)
	t0 := time.Now()
	for i := range hib {
		id := fmt.Sprintf("hib%d", i)
		create(id)
		if err := m.Hibernate(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
	took := time.Since(t0)
	time.Sleep(2 * time.Second)
	runtime.GC()
	rssN := rss(b)
	pss := clonePSS()
	per := float64(rssN-min(rssStart, rssN)) / float64(hib)
	fmt.Printf("BENCH hibernated_agent_rss %.1f MiB   (%d hibernated clones; %.1f MiB before the first; process RSS before the manager %.1f MiB; their clones' processes: %.1f MiB PSS; made in %v; goroutines %d)\n",
		float64(rssN)/(1<<20), hib, float64(rssStart)/(1<<20), float64(rss0)/(1<<20), float64(pss)/(1<<20), took.Round(time.Second), runtime.NumGoroutine())
	fmt.Printf("BENCH hibernated_kib_per_clone %.1f KiB\n", per/1024)
	if per > 0 {
		fmt.Printf("BENCH hibernated_clones_per_host %.0f   (estimate: (4 GiB - agent RSS with none) / RSS growth per hibernated clone)\n", (float64(4<<30)-float64(rssStart))/per)
	}
	// One of them still wakes.
	c, err := m.Get(ids[len(ids)-1])
	if err != nil || !c.Hibernated {
		b.Fatalf("last clone %+v %v, want hibernated", c, err)
	}
	if _, err := connectQuery(ctx, c); err != nil {
		b.Fatalf("wake the last hibernated clone: %v", err)
	}
	b.StopTimer()
	destroyAll()
}

// benchWake hibernates the clones, then times a connection and a query
// to each (it wakes it), and the same to it awake.
func benchWake(b *testing.B, ctx context.Context, m *clone.Manager, ids []string) {
	var wake, awake []time.Duration
	for _, id := range ids {
		if err := m.Hibernate(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
	time.Sleep(time.Second)
	for _, id := range ids {
		c, err := m.Get(id)
		if err != nil || !c.Hibernated {
			b.Fatalf("%s: %+v %v, want hibernated", id, c, err)
		}
		d, err := connectQuery(ctx, c)
		if err != nil {
			b.Fatalf("wake %s: %v", id, err)
		}
		wake = append(wake, d)
		if d, err = connectQuery(ctx, c); err != nil {
			b.Fatalf("%s awake: %v", id, err)
		}
		awake = append(awake, d)
	}
	slices.Sort(wake)
	slices.Sort(awake)
	fmt.Printf("BENCH clone_wake_p50 %.0f ms   (%d clones; p95 %.0f ms)\n", ms(pct(wake, 50)), len(wake), ms(pct(wake, 95)))
	fmt.Printf("BENCH clone_connect_awake_p50 %.1f ms   (the same connection and query to the clone awake)\n", ms(pct(awake, 50)))
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// connectQuery logs in as the clone's user over TCP, runs a query that
// reads the snapshot's data and returns the time it all took.
func connectQuery(ctx context.Context, c clone.Clone) (time.Duration, error) {
	cc, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable connect_timeout=60", c.Host, c.Port, c.Username, c.DBName))
	if err != nil {
		return 0, err
	}
	cc.Password = password
	t0 := time.Now()
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return 0, err
	}
	var n int
	err = conn.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n)
	d := time.Since(t0)
	_ = conn.Close(ctx) // the answer is in
	if err == nil && n != 10000 {
		err = fmt.Errorf("count %d, want 10000", n)
	}
	return d, err
}
