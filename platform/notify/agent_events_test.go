package notify_test

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/thinlab/thinlab/platform/notify"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

// TestAgentEventsMapToTheCatalogue: of an agent's events (as the tunnel
// carries them) the notifiable ones become catalogue events with their
// target (snapshot, pool, clone), healthy reports and clone lifecycle and
// usage samples raise nothing, and a batch sent again adds nothing. A
// protection ending within the warning time raises
// clone.protection_expiring once; one ending later, one of a destroyed
// clone and one switched off raise nothing.
func TestAgentEventsMapToTheCatalogue(t *testing.T) {
	cfg := testConfig(nil)
	cfg.PollInterval = time.Hour
	env := platform(t, cfg)
	owner := env.User("owner@acme.example")
	org := env.Org("acme", owner)
	_, secret, err := env.Store.CreateEnrollmentToken(t.Context(), org.ID, owner.ID, "hosts", time.Now().Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	ag, _, _, err := env.Store.Enroll(t.Context(), secret, tunnel.AgentFacts{Name: "db1"})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	batch := []tunnel.Event{
		{ID: "e1", Time: now, Kind: "snapshot.created", Severity: "info", Pool: "p1", Snapshot: "p1@snap_1"},
		{ID: "e2", Time: now, Kind: "clone.ready", Severity: "info", Clone: "c1"},
		{ID: "e3", Time: now, Kind: "usage.sample", Severity: "info"},
		{ID: "e4", Time: now, Kind: "agent.health", Severity: "info", Message: "ok"},
		{ID: "e5", Time: now, Kind: "agent.health", Severity: "error", Message: "pool p1 unreachable"},
		{ID: "e6", Time: now, Kind: "refresh.skipped", Severity: "warning", Pool: "p2", Message: "all pools busy"},
		{ID: "e7", Time: now, Kind: "retrieval.failed", Severity: "error", Pool: "p2", Message: "pg_dump: connection refused"},
		{ID: "e8", Time: now, Kind: "clone.failed", Severity: "error", Clone: "c9", Message: "no space"},
		{ID: "e9", Time: now, Kind: "replication.lag_high", Severity: "warning", Pool: "p1"},
		{ID: "e10", Time: now, Kind: "something.new", Severity: "error"},
		// Protection: one ends within the warning time, one later, one
		// ends soon but its clone was destroyed, one was unprotected.
		{ID: "p1", Time: now, Kind: "clone.ready", Clone: "soon", Data: protection(true, now.Add(2*time.Hour))},
		{ID: "p2", Time: now, Kind: "clone.protected", Clone: "later", Data: protection(true, now.Add(72*time.Hour))},
		{ID: "p3", Time: now, Kind: "clone.protected", Clone: "gone", Data: protection(true, now.Add(time.Hour))},
		{ID: "p4", Time: now, Kind: "clone.destroyed", Clone: "gone"},
		{ID: "p5", Time: now, Kind: "clone.protected", Clone: "off", Data: protection(true, now.Add(time.Hour))},
		{ID: "p6", Time: now, Kind: "clone.protected", Clone: "off", Data: protection(false, time.Time{})},
	}
	n := env.Server.Notifier()
	for range 2 { // the second time is a redelivery
		if err := n.AgentEvents(t.Context(), env.Store, org.ID, ag.ID, batch); err != nil {
			t.Fatal(err)
		}
	}
	w, err := notify.NewWorker(env.Store, n, env.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []int{1, 0} { // warned once per protection end
		if got, err := w.CheckProtections(t.Context()); err != nil || got != want {
			t.Fatalf("protection check %d: %d warnings %v, want %d", i, got, err, want)
		}
	}
	items, err := env.Store.ListInbox(t.Context(), org.ID, owner.ID, false, 100)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, it := range items {
		if it.Event.Count != 1 || it.Event.AgentID != ag.ID || it.AgentName != "db1" {
			t.Errorf("%s: count %d agent %q %q, want 1 and %s db1", it.Event.Name, it.Event.Count, it.Event.AgentID, it.AgentName, ag.ID)
		}
		got[it.Event.Name] = it.Event.Target + "|" + it.Event.Severity
	}
	want := map[string]string{
		notify.SnapshotCreated:         "p1@snap_1|info",
		notify.AgentUnhealthy:          "|error",
		notify.RefreshSkipped:          "p2|warning",
		notify.RetrievalFailed:         "p2|error",
		notify.CloneFailed:             "c9|error",
		notify.LagHigh:                 "p1|warning",
		notify.CloneProtectionExpiring: "soon|warning",
	}
	if len(got) != len(want) {
		t.Errorf("inbox events %v, want exactly %v", got, want)
	}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("%s: %q, want %q", name, got[name], w)
		}
	}
}

func protection(on bool, till time.Time) json.RawMessage {
	b, _ := json.Marshal(map[string]any{"protected": on, "till": till})
	return b
}

// TestDisconnectionsAfterGrace: an agent gone longer than the grace time
// is reported once (whatever the number of checks), one gone for less is
// not (a replica restart or a blip); coming back is reported only for a
// disconnection that was.
func TestDisconnectionsAfterGrace(t *testing.T) {
	cfg := testConfig(nil)
	cfg.PollInterval = time.Hour
	cfg.DisconnectGrace = time.Minute
	env := platform(t, cfg)
	owner := env.User("owner@acme.example")
	org := env.Org("acme", owner)
	ctx := t.Context()
	enroll := func(name string) string {
		_, secret, err := env.Store.CreateEnrollmentToken(ctx, org.ID, owner.ID, name, time.Now().Add(time.Hour), nil)
		if err != nil {
			t.Fatal(err)
		}
		ag, _, _, err := env.Store.Enroll(ctx, secret, tunnel.AgentFacts{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		if err := env.Store.MarkAgentConnected(ctx, ag.ID, "r1", time.Now().Add(-2*time.Hour)); err != nil {
			t.Fatal(err)
		}
		return ag.ID
	}
	long, blip := enroll("long"), enroll("blip")
	if _, err := env.Store.MarkAgentDisconnected(ctx, long, "r1", time.Now().Add(-5*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Store.MarkAgentDisconnected(ctx, blip, "r1", time.Now().Add(-5*time.Second)); err != nil {
		t.Fatal(err)
	}
	w, err := notify.NewWorker(env.Store, env.Server.Notifier(), env.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []int{1, 0} {
		if n, err := w.CheckDisconnections(ctx); err != nil || n != want {
			t.Fatalf("check %d: %d recorded %v, want %d", i, n, err, want)
		}
	}
	reconnect := func(id string) {
		t.Helper()
		ag, err := env.Store.HubAgent(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if err := env.Store.InTx(ctx, func(tx *store.Store) error {
			return env.Server.Notifier().AgentReconnected(ctx, tx, ag, time.Now())
		}); err != nil {
			t.Fatal(err)
		}
		if err := env.Store.MarkAgentConnected(ctx, id, "r2", time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	reconnect(long)
	reconnect(blip)
	items, err := env.Store.ListInbox(ctx, org.ID, owner.ID, false, 10)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, it := range items {
		got = append(got, it.Event.Name+" "+it.AgentName)
	}
	slices.Sort(got)
	if want := []string{"agent.disconnected long", "agent.reconnected long"}; !slices.Equal(got, want) {
		t.Errorf("inbox %q, want %q", got, want)
	}
}
