package tunnele2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/agent"
	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/usage"
	"github.com/thinlab/thinlab/internal/logtest"
	"github.com/thinlab/thinlab/internal/pgtest"
	"github.com/thinlab/thinlab/internal/tlstest"
	"github.com/thinlab/thinlab/sdk/agentapi"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

// TestRealAgentThroughTunnel runs the real agent (a btrfs pool, real
// clones) with platform.url set: it enrolls, reports its facts, and the
// platform creates a clone through the tunnel, queries it over a tcp
// stream, sees its events and destroys it; the agent's API port and a
// destroyed clone's port are refused.
func TestRealAgentThroughTunnel(t *testing.T) {
	files := tlstest.New(t)
	db := newPlatformDB()
	p := startPlatform(t, db, files, "")

	pool := clonetest.NewPool(t)
	clonetest.Fill(t, pool, "CREATE TABLE t (v text)", "INSERT INTO t VALUES ('through the tunnel')")
	cfg := clonetest.Config(t, pool, 3)
	cfg.Server.Port = pgtest.FreePort(t)
	cfg.Platform = config.Platform{URL: p.URL, EnrollToken: enrollToken, CAFile: files.CA, Name: "real-agent"}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	logs := &logtest.Buffer{}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	a, err := agent.NewWithOptions(ctx, agent.Options{Config: cfg, Logger: logs.Logger(), Pools: []storage.Pool{pool}, Version: "e2e", ReportInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background()) // ended in cleanup
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	})

	waitFor(t, "enrollment", func() bool { db.mu.Lock(); defer db.mu.Unlock(); return len(db.creds) == 1 })
	id := db.agentID(t)
	waitFor(t, "the session", func() bool { return connected(p, id) })
	db.mu.Lock()
	facts := db.facts[len(db.facts)-1]
	db.mu.Unlock()
	if facts.Name != "real-agent" || facts.Version != "e2e" || len(facts.Pools) != 1 || facts.Pools[0].Backend != pool.Mode() ||
		facts.Pools[0].TotalBytes == 0 || facts.Pools[0].Snapshots != 1 || !slices.Contains(facts.PostgresVersions, "15") ||
		facts.MaxClones != int(cfg.Provision.PortPool.To-cfg.Provision.PortPool.From)+1 || facts.CloneUIDsAvailable <= 0 {
		t.Fatalf("facts: %+v", facts)
	}

	// The agent API through the tunnel, without a token of ours.
	c := &agentapi.Client{BaseURL: "http://agent", HTTPClient: &http.Client{Transport: p.hub.RoundTripper(id)}, PollInterval: 50 * time.Millisecond}
	cl, err := c.CreateClone(ctx, agentapi.CreateCloneRequest{ID: "tun1", DB: &agentapi.DatabaseRequest{Username: "alice", Password: "Alice-secret-1"}})
	if err != nil {
		t.Fatalf("create clone through the tunnel: %v\n%s", err, logs)
	}
	if cl, err = c.WaitClone(ctx, cl.ID); err != nil {
		t.Fatal(err)
	}
	port, err := strconv.Atoi(cl.DB.Port)
	if err != nil {
		t.Fatal(err)
	}

	pcfg, err := pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=alice password=Alice-secret-1 dbname=postgres sslmode=disable", port))
	if err != nil {
		t.Fatal(err)
	}
	pcfg.DialFunc = func(ctx context.Context, _, _ string) (net.Conn, error) { return p.hub.DialClone(ctx, id, port) }
	conn, err := pgx.ConnectConfig(ctx, pcfg)
	if err != nil {
		t.Fatalf("clone through the tunnel: %v", err)
	}
	var v string
	if err := conn.QueryRow(ctx, "SELECT v FROM t").Scan(&v); err != nil || v != "through the tunnel" {
		t.Fatalf("query: %q %v", v, err)
	}
	_ = conn.Close(ctx) // the test's session

	refused := func(port int) {
		t.Helper()
		c, err := p.hub.DialClone(ctx, id, port)
		if c != nil {
			_ = c.Close()
		}
		if _, ok := errors.AsType[*tunnel.RefusedError](err); !ok {
			t.Fatalf("port %d: %v, want a refusal", port, err)
		}
	}
	refused(cfg.Server.Port) // the agent's own API

	if err := c.DestroyClone(ctx, cl.ID); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitCloneDestroyed(ctx, cl.ID); err != nil {
		t.Fatal(err)
	}
	refused(port)

	kinds := func() []string {
		db.mu.Lock()
		defer db.mu.Unlock()
		var out []string
		for _, e := range db.events {
			if e.Clone == "tun1" {
				out = append(out, e.Kind)
			}
		}
		slices.Sort(out)
		return out
	}
	want := []string{"clone.creating", "clone.destroyed", "clone.ready"}
	waitFor(t, "the clone's events", func() bool { return slices.Equal(kinds(), want) })

	// Snapshots taken and deleted through the API reach the platform too.
	snap, err := c.CreateSnapshot(ctx, pool.Name())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteSnapshot(ctx, snap.ID, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "snapshot.created and snapshot.deleted", func() bool {
		db.mu.Lock()
		defer db.mu.Unlock()
		var got []string
		for _, e := range db.events {
			if e.Snapshot == snap.ID {
				got = append(got, e.Kind)
			}
		}
		slices.Sort(got)
		return slices.Equal(got, []string{"snapshot.created", "snapshot.deleted"})
	})

	// Usage samples account for the clone until it was destroyed, in
	// periods without gaps; health summaries arrive too.
	var samples []usage.Sample
	waitFor(t, "a usage sample with the destroyed clone", func() bool {
		db.mu.Lock()
		defer db.mu.Unlock()
		samples = samples[:0]
		done := false
		for _, e := range db.events {
			if e.Kind != string(events.Usage) {
				continue
			}
			var s usage.Sample
			if err := json.Unmarshal(e.Data, &s); err != nil {
				t.Errorf("usage sample: %v", err)
				return true
			}
			samples = append(samples, s)
			for _, c := range s.Clones {
				done = done || (c.ID == "tun1" && c.Destroyed)
			}
		}
		return done
	})
	slices.SortFunc(samples, func(a, b usage.Sample) int { return a.From.Compare(b.From) })
	var seconds float64
	for i, s := range samples {
		if i > 0 && !s.From.Equal(samples[i-1].To) {
			t.Fatalf("usage periods %d and %d leave a gap or overlap: %v then %v", i-1, i, samples[i-1].To, s.From)
		}
		for _, c := range s.Clones {
			if c.ID == "tun1" {
				seconds += c.Seconds
			}
		}
	}
	if seconds <= 0 {
		t.Fatalf("clone tun1 accounted %v s, want its lifetime", seconds)
	}
	waitFor(t, "a health event", func() bool {
		db.mu.Lock()
		defer db.mu.Unlock()
		for _, e := range db.events {
			if e.Kind == string(events.Health) {
				return true
			}
		}
		return false
	})
}
