package fleete2e

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent"
	"github.com/thinlab/thinlab/platform/platformtest"
	"github.com/thinlab/thinlab/platform/server"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/agentapi"
)

// TestAgentMetricsReachCharts: a real agent samples its host, its pool
// and its clone (by the clone's uid) and sends the samples over its
// tunnel; the platform stores them apart from the event log and draws
// them: the agent's resource page has the host and pool charts with
// their alert thresholds and the clone with its connections, the clone's
// page its CPU and memory charts. Without JavaScript: plain SVG.
func TestAgentMetricsReachCharts(t *testing.T) {
	env := platformtest.New(t, platformtest.WithConfig(func(c *server.Config) { c.Tunnel.HeartbeatInterval = 200 * time.Millisecond }))
	owner := env.User("owner@acme.example")
	org := env.Org("acme", owner)
	_, secret, err := env.Store.CreateEnrollmentToken(t.Context(), org.ID, owner.ID, "hosts", time.Now().Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	startAgentWith(t, env.URL, secret, "metrics-db", func(o *agent.Options) { o.ReportInterval = 300 * time.Millisecond })
	var ag store.Agent
	waitFor(t, "the agent to connect", func() bool {
		agents, err := env.Store.ListAgents(t.Context(), org.ID)
		if err != nil || len(agents) != 1 || !agents[0].Connected() {
			return false
		}
		ag = agents[0]
		return true
	})
	tok := env.Token(org, owner)
	c := engineClient(env, "acme", ag.ID, tok)
	if _, err := c.CreateClone(t.Context(), agentapi.CreateCloneRequest{ID: "busy", DB: &agentapi.DatabaseRequest{Username: "dev", Password: clonePassword}}); err != nil {
		t.Fatal(err)
	}
	k, err := c.WaitClone(t.Context(), "busy")
	if err != nil {
		t.Fatal(err)
	}
	// Some work, so that the clone has processes to measure.
	execClone(t, k.DB.ConnStr, "CREATE TABLE w AS SELECT g FROM generate_series(1, 200000) g")

	var last store.MetricPoint
	waitFor(t, "a sample with the clone", func() bool {
		pts, err := env.Store.AgentMetrics(t.Context(), org.ID, ag.ID, time.Now().Add(-time.Hour))
		if err != nil || len(pts) == 0 {
			return false
		}
		last = pts[len(pts)-1]
		return len(last.Sample.Clones) == 1 && last.Sample.Clones[0].MemoryBytes > 0
	})
	s := last.Sample
	if s.CPUs < 1 || s.MemTotalBytes == 0 || len(s.Pools) != 1 || s.Pools[0].SizeBytes == 0 || s.Pools[0].Device == "" {
		t.Fatalf("sample: %+v", s)
	}
	if n := platformtest.Count(t, env.DSN, `SELECT count(*) FROM agent_events WHERE kind = 'agent.metrics'`); n != 0 {
		t.Errorf("%d metrics samples in the event log, want them kept apart", n)
	}

	pg := env.Do(http.MethodGet, "/o/acme/agents/"+ag.ID+"/metrics", tok, nil)
	body := string(pg.Body)
	if pg.Status != http.StatusOK {
		t.Fatalf("resources page: %d", pg.Status)
	}
	for _, want := range []string{`id="chart-cpu"`, `id="chart-memory"`, `id="chart-pool-0-space"`, `id="chart-pool-0-io"`, "<polyline", `class="threshold"`, "alert 85%", `data-clone="busy"`} {
		if !strings.Contains(body, want) {
			t.Errorf("resources page lacks %q", want)
		}
	}
	if strings.Contains(body, "<script") {
		t.Error("the resources page has a script")
	}
	if pg := env.Do(http.MethodGet, "/o/acme/agents/"+ag.ID+"/metrics?range=1y", tok, nil); pg.Status != http.StatusBadRequest {
		t.Errorf("a bad range: HTTP %d, want 400", pg.Status)
	}
	pg = env.Do(http.MethodGet, "/o/acme/agents/"+ag.ID+"/clones/busy", tok, nil)
	if body := string(pg.Body); pg.Status != http.StatusOK || !strings.Contains(body, `id="chart-clone-cpu"`) || !strings.Contains(body, `id="chart-clone-memory"`) {
		t.Errorf("clone page without its charts: %d", pg.Status)
	}
}
