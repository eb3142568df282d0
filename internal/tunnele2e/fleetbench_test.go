package tunnele2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	agenttunnel "github.com/thinlab/thinlab/agent/tunnel"
	"github.com/thinlab/thinlab/internal/pgtest"
	"github.com/thinlab/thinlab/internal/tlstest"
	"github.com/thinlab/thinlab/platform/hub"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

// Benchmark sizes, from the environment (the sizes are 1 GiB and
// 1,000 agents; the COPY default is smaller so that `make bench` stays
// short).
const (
	benchCopyMiBEnv = "THINLAB_BENCH_COPY_MIB"
	benchAgentsEnv  = "THINLAB_BENCH_AGENTS"
)

func envInt(b *testing.B, name string, def int) int {
	b.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: must be a positive number", name, v)
	}
	return n
}

// BenchmarkTunnelCopy streams COPY ... TO STDOUT of N MiB out of a real
// PostgreSQL once over a direct loopback connection and once through the
// tunnel (hub.DialClone: TLS websocket, yamux, the agent's TCP stream to
// the clone port), alternating, and reports the time through the tunnel
// over the direct time (BENCH tunnel_copy_ratio). The rows are generated
// by the query (1 KiB each), so the disk is not measured, only the path.
// Agent, hub and postgres share this host's cores.
//
//	THINLAB_BENCH_COPY_MIB=1024 go test -run '^$' -bench BenchmarkTunnelCopy -benchtime 1x ./internal/tunnele2e/
func BenchmarkTunnelCopy(b *testing.B) {
	mib := envInt(b, benchCopyMiBEnv, 64)
	pg := pgtest.Start(b)
	files := tlstest.New(b)
	db := newPlatformDB()
	p := startPlatform(b, db, files, "", quietHub)
	startAgent(b, agentConfig{url: p.URL, stateDir: b.TempDir(), caFile: files.CA, target: func(port int) bool { return port == pg.Port }})
	waitFor(b, "enrollment", func() bool { db.mu.Lock(); defer db.mu.Unlock(); return len(db.creds) == 1 })
	id := db.agentID(b)
	waitFor(b, "the session", func() bool { return connected(p, id) })

	// 1,024 rows of 1,023 characters and a newline per MiB.
	query := fmt.Sprintf("COPY (SELECT repeat('x', 1023) FROM generate_series(1, %d)) TO STDOUT", mib*1024)
	want := int64(mib) << 20
	copyOnce := func(dial func(ctx context.Context, network, addr string) (net.Conn, error)) time.Duration {
		cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=%s dbname=postgres sslmode=disable", pg.Port, pg.Password))
		if err != nil {
			b.Fatal(err)
		}
		if dial != nil {
			cfg.DialFunc = dial
		}
		conn, err := pgconn.ConnectConfig(b.Context(), cfg)
		if err != nil {
			b.Fatal(err)
		}
		defer func() { _ = conn.Close(context.Background()) }() // the benchmark's session
		start := time.Now()
		tag, err := conn.CopyTo(b.Context(), io.Discard, query)
		took := time.Since(start)
		if err != nil || tag.RowsAffected() != int64(mib*1024) {
			b.Fatalf("COPY: %v (%s)", err, tag)
		}
		return took
	}
	viaTunnel := func(ctx context.Context, _, _ string) (net.Conn, error) { return p.hub.DialClone(ctx, id, pg.Port) }
	// Warm both paths (postgres' caches, the session's windows).
	copyOnce(nil)
	copyOnce(viaTunnel)
	var direct, tunnelled time.Duration
	b.ResetTimer()
	for b.Loop() {
		direct += copyOnce(nil)
		tunnelled += copyOnce(viaTunnel)
	}
	b.StopTimer()
	ratio := float64(tunnelled) / float64(direct)
	mibps := func(d time.Duration) float64 { return float64(want) / (1 << 20) / (d.Seconds() / float64(b.N)) }
	b.ReportMetric(ratio, "tunnel_copy_ratio")
	b.ReportMetric(mibps(direct), "direct_MiB/s")
	b.ReportMetric(mibps(tunnelled), "tunnel_MiB/s")
	fmt.Printf("BENCH tunnel_copy_ratio %.2f x (%d MiB: direct %.0f MiB/s, tunnel %.0f MiB/s)\n", ratio, mib, mibps(direct), mibps(tunnelled))
}

// quietHub keeps the benchmark's platform from logging into memory and
// from recording facts, so that its heap is the hub's.
func quietHub(o *hub.Options) {
	o.Logger = slog.New(slog.DiscardHandler)
	o.OnConnect = nil
	o.OnDisconnect = nil
}

// Environment of the "fleet" child.
const (
	fleetDirEnv   = "THINLAB_TUNNELE2E_FLEET_DIR"
	fleetCountEnv = "THINLAB_TUNNELE2E_FLEET_COUNT"
)

// BenchmarkFleet connects N real agent tunnel clients (default 1,000,
// THINLAB_BENCH_AGENTS) with the production heartbeat and backoff to one
// platform replica. The agents run in a second process (this test binary
// re-executed), so that this process' memory is the platform's: the
// hub's heap after GC per connected idle agent is BENCH
// platform_kib_per_agent (goroutine stacks, not on the heap, separately).
// Then the replica is stopped and started again on the same address, and
// BENCH fleet_reconnect_s is the time from its restart until every agent
// has its session again.
//
//	go test -run '^$' -bench BenchmarkFleet -benchtime 1x ./internal/tunnele2e/
func BenchmarkFleet(b *testing.B) {
	n := envInt(b, benchAgentsEnv, 1000)
	files := tlstest.New(b)
	db := newPlatformDB()
	// Agents enrolled beforehand: a credential file per state directory.
	dir := b.TempDir()
	ids := make([]string, n)
	for i := range n {
		ids[i] = fmt.Sprintf("agent-%05d", i)
		cred := fmt.Sprintf("cred-fleet-%05d-%s", i, strings.Repeat("c", 32))
		db.creds[cred] = hub.AgentIdentity{AgentID: ids[i], OrgID: "org-1"}
		state := filepath.Join(dir, ids[i])
		raw, err := json.Marshal(agenttunnel.Credential{AgentID: ids[i], OrganizationID: "org-1", Credential: cred})
		if err == nil {
			err = os.MkdirAll(state, 0o700)
		}
		if err == nil {
			err = os.WriteFile(filepath.Join(state, tunnel.CredentialFile), raw, 0o600)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	// The test servers log every handshake cut by a replica's stop
	// through the standard logger: hundreds of lines per restart.
	log.SetOutput(io.Discard)
	b.Cleanup(func() { log.SetOutput(os.Stderr) })
	prod := func(o *hub.Options) { o.HeartbeatInterval = tunnel.HeartbeatInterval }
	p := startPlatform(b, db, files, "", quietHub, prod)
	addr := p.addr

	before := heapAfterGC()
	fleet := startChild(b, "fleet", childURLEnv+"="+p.URL, childCAEnv+"="+files.CA, fleetDirEnv+"="+dir, fleetCountEnv+"="+strconv.Itoa(n))
	start := time.Now()
	waitAll(b, p, ids, fleet)
	b.Logf("%d agents connected in %.1f s", n, time.Since(start).Seconds())
	// Idle: let the connection storm's garbage go and heartbeats settle.
	time.Sleep(2 * tunnel.HeartbeatInterval)
	after := heapAfterGC()
	heapKiB := float64(after.HeapAlloc-before.HeapAlloc) / 1024 / float64(n)
	stackKiB := float64(after.StackInuse-before.StackInuse) / 1024 / float64(n)
	goroutines := float64(after.goroutines-before.goroutines) / float64(n)

	// The replica stops as a replica should: its listener first (the
	// server's Close does not touch the hijacked tunnels), then the hub,
	// so that agents whose sessions end find the address closed instead
	// of a TLS handshake and a 503 on a replica that is going away.
	var reconnect, hubClose, srvClose time.Duration
	b.ResetTimer()
	for b.Loop() {
		stopAt := time.Now()
		p.srv.Close()
		srvClosed := time.Now()
		p.hub.Close()
		restartAt := time.Now()
		srvClose += srvClosed.Sub(stopAt)
		hubClose += restartAt.Sub(srvClosed)
		p = startPlatform(b, db, files, addr, quietHub, prod)
		waitAll(b, p, ids, fleet)
		reconnect += time.Since(restartAt)
	}
	b.StopTimer()
	rs := reconnect.Seconds() / float64(b.N)
	b.ReportMetric(heapKiB, "platform_kib_per_agent")
	b.ReportMetric(stackKiB, "stack_kib_per_agent")
	b.ReportMetric(rs, "fleet_reconnect_s")
	fmt.Printf("BENCH platform_kib_per_agent %.1f KiB (%d idle agents; goroutine stacks another %.1f KiB, %.1f goroutines per agent)\n", heapKiB, n, stackKiB, goroutines)
	per := func(d time.Duration) float64 { return d.Seconds() / float64(b.N) }
	fmt.Printf("BENCH fleet_reconnect_s %.2f s (%d agents; before the restart the replica was down %.2f s: server close %.2f s, then hub.Close %.2f s)\n",
		rs, n, per(hubClose+srvClose), per(srvClose), per(hubClose))
}

type memSample struct {
	runtime.MemStats
	goroutines int
}

func heapAfterGC() memSample {
	var m memSample
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m.MemStats)
	m.goroutines = runtime.NumGoroutine()
	return m
}

// waitAll waits until every agent has a session on p (bounded generously:
// a loaded host handshakes slowly; only a broken run hits the bound).
func waitAll(b *testing.B, p *platform, ids []string, fleet *child) {
	b.Helper()
	deadline := time.Now().Add(10 * time.Minute)
	for {
		missing := 0
		for _, id := range ids {
			if !connected(p, id) {
				missing++
			}
		}
		if missing == 0 {
			return
		}
		select {
		case <-fleet.done:
			b.Fatalf("the fleet process ended:\n%s", fleet.out.String())
		default:
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d agents not connected after 10 minutes", missing, len(ids))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// runFleetChild is the "fleet" child: one real agent tunnel client per
// state directory below FLEET_DIR (agent-00000 ...), production heartbeat
// and backoff, no events, until stdin closes.
func runFleetChild() int {
	ctx, cancel := untilStdinCloses()
	defer cancel()
	n, err := strconv.Atoi(os.Getenv(fleetCountEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, fleetCountEnv, err)
		return 2
	}
	quiet := slog.New(slog.DiscardHandler)
	var wg sync.WaitGroup
	for i := range n {
		c, err := agenttunnel.New(agenttunnel.Options{
			URL:      os.Getenv(childURLEnv),
			CAFile:   os.Getenv(childCAEnv),
			StateDir: filepath.Join(os.Getenv(fleetDirEnv), fmt.Sprintf("agent-%05d", i)),
			API:      echoAPI(),
			APIToken: agentAPIToken,
			Facts: func() tunnel.AgentFacts {
				return tunnel.AgentFacts{Name: fmt.Sprintf("fleet-%05d", i), Version: "bench"}
			},
			Logger: quiet,
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "fleet agent", i, err)
			return 1
		}
		wg.Go(func() {
			_ = c.Run(ctx)
			_ = c.Close()
		})
	}
	fmt.Println("FLEET-STARTED", n)
	wg.Wait()
	return 0
}
