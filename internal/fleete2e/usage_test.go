package fleete2e

import (
	"encoding/json"
	"math"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/platform/platformtest"
	"github.com/thinlab/thinlab/platform/server"
	"github.com/thinlab/thinlab/platform/usage"
	"github.com/thinlab/thinlab/sdk/agentapi"
	"github.com/thinlab/thinlab/sdk/platformapi"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

// TestCloneSecondsMatchMeasuredTime: a real agent, sampling usage every
// 500 ms, sends its samples over the real tunnel; a clone created and
// destroyed through the platform after a measured time yields that many
// clone-seconds (summed over some 40 samples) within 1 %, in the usage
// report by clone and by user (the creator through the engine proxy).
// The samples stored by the platform, sent again through the ingestion
// path of the hub (as after a reconnect), count once.
func TestCloneSecondsMatchMeasuredTime(t *testing.T) {
	env := platformtest.New(t, platformtest.WithConfig(func(c *server.Config) { c.Tunnel.HeartbeatInterval = 200 * time.Millisecond }))
	owner := env.User("owner@acme.example")
	org := env.Org("acme", owner)
	_, secret, err := env.Store.CreateEnrollmentToken(t.Context(), org.ID, owner.ID, "hosts", time.Now().Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	startAgentReporting(t, env.URL, secret, "e2e-db", 500*time.Millisecond)
	var agentID string
	waitFor(t, "the agent to enroll and connect", func() bool {
		agents, err := env.Store.ListAgents(t.Context(), org.ID)
		if err != nil || len(agents) != 1 || !agents[0].Connected() {
			return false
		}
		agentID = agents[0].ID
		return true
	})
	tok := env.Token(org, owner)
	c := engineClient(env, "acme", agentID, tok)
	ctx := t.Context()

	const lifetime = 20 * time.Second
	createStart := time.Now()
	if _, err := c.CreateClone(ctx, agentapi.CreateCloneRequest{ID: "metered", DB: &agentapi.DatabaseRequest{Username: "dev", Password: clonePassword}}); err != nil {
		t.Fatal(err)
	}
	createEnd := time.Now()
	if _, err := c.WaitClone(ctx, "metered"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(lifetime - time.Since(createStart))
	destroyStart := time.Now()
	if err := c.DestroyClone(ctx, "metered"); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitCloneDestroyed(ctx, "metered"); err != nil {
		t.Fatal(err)
	}
	gone := time.Now()
	// The clone lived between these bounds; the measured time is their
	// middle, off by at most half their difference.
	lo, hi := destroyStart.Sub(createEnd).Seconds(), gone.Sub(createStart).Seconds()
	measured := (lo + hi) / 2

	sum := func() (float64, int) {
		rows := env.QueryStrings(`SELECT coalesce(sum(seconds), 0)::text || ' ' || count(*)::text || ' ' || coalesce(bool_or(destroyed), false)::text
			FROM usage_clone_periods WHERE clone_id = 'metered'`)
		f := strings.Fields(rows[0])
		s, _ := strconv.ParseFloat(f[0], 64)
		n, _ := strconv.Atoi(f[1])
		if f[2] != "true" {
			return s, -1
		}
		return s, n
	}
	var secs float64
	var samples int
	waitFor(t, "the sample of the clone's destruction", func() bool {
		secs, samples = sum()
		return samples > 0
	})
	t.Logf("clone lived %.3f-%.3f s (measured %.3f s); %d samples sum to %.3f s", lo, hi, measured, samples, secs)
	if math.Abs(secs-measured) > 0.01*measured {
		t.Fatalf("clone-seconds %.3f, measured %.3f s: off by more than 1 %%", secs, measured)
	}
	if samples < 20 {
		t.Fatalf("%d samples, want the clone's time summed over many 500 ms samples", samples)
	}

	// The same through the API: by clone and by its creator.
	for by, key := range map[string]string{"clone": agentID + "/metered", "user": owner.ID} {
		var rep platformapi.UsageReport
		r := env.Do(http.MethodGet, "/api/v1/orgs/acme/usage?by="+by, tok, nil)
		if err := json.Unmarshal(r.Body, &rep); r.Status != http.StatusOK || err != nil {
			t.Fatalf("usage by %s: %d %s", by, r.Status, r.Body)
		}
		found := false
		for _, it := range rep.Items {
			if it.Key == key {
				found = true
				if math.Abs(it.CloneHours*3600-secs) > 1e-6 || it.Clones != 1 {
					t.Errorf("usage by %s: %+v, want %.3f clone-seconds of 1 clone", by, it, secs)
				}
			}
		}
		if !found {
			t.Errorf("usage by %s has no row %q: %+v", by, key, rep.Items)
		}
	}

	// Replay every stored usage sample through the ingestion path (what
	// the hub's OnEvents runs when an agent resends after a reconnect).
	stored, err := env.Store.ListAgentEvents(ctx, org.ID, agentID, 10000)
	if err != nil {
		t.Fatal(err)
	}
	var replay []tunnel.Event
	for _, e := range stored {
		if e.Kind == tunnel.EventKindUsage && e.Data != nil {
			replay = append(replay, tunnel.Event{ID: e.EventID, Time: e.Time, Kind: e.Kind, Data: json.RawMessage(*e.Data)})
		}
	}
	if len(replay) < samples {
		t.Fatalf("%d usage events stored, want at least the %d samples with the clone", len(replay), samples)
	}
	if err := usage.Ingest(ctx, env.Store, agentID, replay); err != nil {
		t.Fatal(err)
	}
	if again, n := sum(); again != secs || n != samples {
		t.Fatalf("after replaying %d samples: %.3f s in %d rows, want %.3f s in %d (counted once)", len(replay), again, n, secs, samples)
	}
}
