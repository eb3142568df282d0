package notify_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/thinlab/thinlab/platform/notify"
	"github.com/thinlab/thinlab/platform/server"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

// TestSaturationFromSamples: resource samples injected through the hub's
// ingestion path (what an agent's tunnel batch goes through) raise the
// saturation notifications: CPU at 95 %, a pool 90 % full, its disk 95 %
// busy, and a pool that grew so fast its free space lasts under a day;
// samples under the thresholds raise nothing; a redelivered batch adds
// nothing (one event per target and 15-minute window) and a repeat in the
// next window folds into the event (count 2). The agent's
// clone.refresh_deadline event reaches the inbox too.
func TestSaturationFromSamples(t *testing.T) {
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
	n := env.Server.Notifier()
	ingest := func(events ...tunnel.Event) {
		t.Helper()
		if err := server.StoreAgentEvents(t.Context(), env.Store, n, ag.ID, events); err != nil {
			t.Fatal(err)
		}
	}
	metric := func(id string, at time.Time, cpu float64, used, util float64) tunnel.Event {
		s := tunnel.MetricsSample{Time: at, Seconds: 30, CPUs: 2, CPUPercent: cpu, MemTotalBytes: 1 << 30, MemAvailableBytes: 1 << 29,
			Pools: []tunnel.PoolMetrics{{Name: "p1", Device: "loop3", SizeBytes: 100 << 30, UsedBytes: uint64(used * (1 << 30)), FreeBytes: uint64((100 - used) * (1 << 30)), IOUtilPercent: &util}}}
		raw, _ := json.Marshal(s)
		return tunnel.Event{ID: id, Time: at, Kind: tunnel.MetricsKind, Severity: "info", Data: raw}
	}
	start := time.Now().Add(-time.Hour).Truncate(15 * time.Minute)
	// Quiet: nothing.
	ingest(metric("m1", start, 20, 40, 10))
	if items, _ := env.Store.ListInbox(t.Context(), org.ID, owner.ID, false, 100); len(items) != 0 {
		t.Fatalf("samples under every threshold raised %d notifications", len(items))
	}
	// 14 minutes later: 40 -> 90 GiB used, 10 GiB free: full within
	// minutes at that rate; CPU 95 %, disk 95 % busy.
	hot := metric("m2", start.Add(14*time.Minute), 95, 90, 95)
	for range 2 {
		ingest(hot, tunnel.Event{ID: "d1", Time: start, Kind: "clone.refresh_deadline", Severity: "warning", Clone: "c1", Message: "refreshed anyway at 12:00"})
	}
	ingest(metric("m3", start.Add(16*time.Minute), 96, 90.5, 96)) // the next window, 2 minutes later: folded into the same event
	items, err := env.Store.ListInbox(t.Context(), org.ID, owner.ID, false, 100)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, it := range items {
		got[it.Event.Name] = it.Event.Target
	}
	want := map[string]string{
		notify.HostCPUSaturated: "", notify.PoolSpaceLow: "p1", notify.PoolDiskSaturated: "p1",
		notify.PoolOutOfSpaceRisk: "p1", notify.CloneRefreshDeadline: "c1",
	}
	if len(got) != len(want) {
		t.Errorf("inbox %v, want exactly %v", got, want)
	}
	for name, target := range want {
		if tg, ok := got[name]; !ok || tg != target {
			t.Errorf("%s: target %q (present %v), want %q", name, tg, ok, target)
		}
	}
	for _, it := range items {
		if it.Event.Name == notify.HostCPUSaturated && it.Event.Count != 2 {
			t.Errorf("CPU saturated in two windows: count %d, want 2 (folded)", it.Event.Count)
		}
	}
}
