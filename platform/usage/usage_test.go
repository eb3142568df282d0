package usage_test

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"math"
	"testing"
	"time"

	"github.com/thinlab/thinlab/platform/platformtest"
	"github.com/thinlab/thinlab/platform/usage"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

func sampleEvent(t *testing.T, id string, from, to time.Time, clones []tunnel.UsageCloneSample, used uint64) tunnel.Event {
	t.Helper()
	raw, err := json.Marshal(tunnel.UsageSample{From: from, To: to, Clones: clones, Pools: []tunnel.UsagePool{{Name: "p1", UsedBytes: used, Snapshots: 2}}})
	if err != nil {
		t.Fatal(err)
	}
	return tunnel.Event{ID: id, Time: to, Kind: tunnel.EventKindUsage, Data: raw}
}

// TestReportsByKeyAndPeriodWithSavingsAndCSV: samples of two agents over
// two days are summed per day and month, by organization, agent, user
// and clone; a sample claiming more seconds than its period is capped; a
// replayed batch counts once; another organization's usage never shows;
// the savings compare full copies with what the clones wrote; the CSV
// defuses cells that would be formulas (an agent named "=cmd()").
func TestReportsByKeyAndPeriodWithSavingsAndCSV(t *testing.T) {
	env := platformtest.New(t)
	ctx := t.Context()
	owner := env.User("owner@a.example")
	org := env.Org("acme", owner)
	other := env.Org("other", env.User("o@b.example"))
	enroll := func(orgID, name string) string {
		_, secret, err := env.Store.CreateEnrollmentToken(ctx, orgID, owner.ID, name, time.Now().Add(time.Hour), nil)
		if err != nil {
			t.Fatal(err)
		}
		ag, _, _, err := env.Store.Enroll(ctx, secret, tunnel.AgentFacts{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		return ag.ID
	}
	// Enrollment tokens are made by owner, who is not in other: use the
	// store directly for both (it takes the organization ID).
	a1, a2 := enroll(org.ID, "=cmd()"), enroll(org.ID, "db2")
	b1 := enroll(other.ID, "theirs")
	if err := env.Store.RecordCloneOwner(ctx, org.ID, a1, "c1", owner.ID); err != nil {
		t.Fatal(err)
	}
	day1 := time.Date(2026, 11, 2, 10, 0, 0, 0, time.UTC)
	day2 := day1.Add(24 * time.Hour)
	gib := uint64(1 << 30)
	batch1 := []tunnel.Event{
		sampleEvent(t, "s1", day1, day1.Add(time.Hour), []tunnel.UsageCloneSample{
			{ID: "c1", Pool: "p1", Seconds: 3600, DiffBytes: gib, LogicalBytes: 10 * gib, CloningSeconds: 0.5},
			{ID: "c2", Pool: "p1", Seconds: 99999, DiffBytes: 0, LogicalBytes: 10 * gib}, // capped to the period
		}, 4*gib),
		sampleEvent(t, "s2", day2, day2.Add(30*time.Minute), []tunnel.UsageCloneSample{{ID: "c1", Pool: "p1", Seconds: 1800, DiffBytes: gib, LogicalBytes: 10 * gib, CloningSeconds: 0.5}}, 2*gib),
	}
	for range 2 { // the second time is a replay
		if err := usage.Ingest(ctx, env.Store, a1, batch1); err != nil {
			t.Fatal(err)
		}
	}
	if err := usage.Ingest(ctx, env.Store, a2, []tunnel.Event{sampleEvent(t, "s1", day1, day1.Add(time.Hour), []tunnel.UsageCloneSample{{ID: "c9", Pool: "p1", Seconds: 600}}, gib)}); err != nil {
		t.Fatal(err)
	}
	if err := usage.Ingest(ctx, env.Store, b1, []tunnel.Event{sampleEvent(t, "s1", day1, day1.Add(time.Hour), []tunnel.UsageCloneSample{{ID: "c1", Pool: "p1", Seconds: 3600}}, gib)}); err != nil {
		t.Fatal(err)
	}
	from, to := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	near := func(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

	month, err := usage.Report(ctx, env.Store, org.ID, from, to, "month", "org")
	if err != nil || len(month.Items) != 1 {
		t.Fatalf("month by org: %+v %v", month, err)
	}
	// c1 1.5 h + c2 1 h (capped) + c9 600 s; 3 clones.
	m := month.Items[0]
	if !near(m.CloneHours, 1.5+1+600.0/3600) || m.Clones != 3 || !near(m.CloneStorageGiBHours, 1.5) {
		t.Errorf("month: %+v, want 2.6667 clone-hours of 3 clones, 1.5 GiB-h of clone storage", m)
	}
	// Snapshots: day 1 (4-1 GiB) x 1 h of a1 + 1 GiB x 1 h of a2; day 2 (2-1) x 0.5 h.
	if !near(m.SnapshotStorageGiBHours, 3+1+0.5) || m.Snapshots != 2 {
		t.Errorf("month snapshot storage: %+v, want 4.5 GiB-h", m)
	}

	days, err := usage.Report(ctx, env.Store, org.ID, from, to, "day", "agent")
	if err != nil || len(days.Items) != 3 {
		t.Fatalf("days by agent: %+v %v", days, err)
	}
	if it := days.Items[0]; !it.Bucket.Equal(time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC)) || it.Name == "" {
		t.Errorf("first row %+v, want 2026-11-02 with the agent's name", it)
	}
	byUser, err := usage.Report(ctx, env.Store, org.ID, from, to, "month", "user")
	if err != nil {
		t.Fatal(err)
	}
	users := map[string]float64{}
	for _, it := range byUser.Items {
		users[it.Key] += it.CloneHours
	}
	if !near(users[owner.ID], 1.5) || !near(users[""], 1+600.0/3600) {
		t.Errorf("by user: %v, want 1.5 h for the owner (c1) and the rest unattributed", users)
	}

	sav, err := usage.Savings(ctx, env.Store, org.ID, from, to, 512)
	if err != nil || len(sav.Items) != 1 {
		t.Fatalf("savings: %+v %v", sav, err)
	}
	s := sav.Items[0]
	// Full copies: c1 10 GiB x 1.5 h + c2 10 GiB x 1 h = 25 GiB-h; thin 1.5.
	// Copy time: 20 GiB of logical size at 512 MiB/s = 40 s.
	if !near(s.FullCopyGiBHours, 25) || !near(s.ThinGiBHours, 1.5) || !near(s.SavedGiBHours, 23.5) ||
		!near(s.FullCopyHours*3600, 40) || !near(s.ThinProvisionHours*3600, 0.5) || s.Clones != 3 {
		t.Errorf("savings %+v, want 25 vs 1.5 GiB-h, 40 s vs 0.5 s", s)
	}

	var buf bytes.Buffer
	if err := usage.WriteCSV(&buf, days); err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(&buf).ReadAll()
	if err != nil || len(recs) != 4 || recs[0][0] != "bucket" {
		t.Fatalf("CSV: %v %v", recs, err)
	}
	defused := false
	for _, r := range recs[1:] {
		if r[4] == "'=cmd()" {
			defused = true
		}
		if r[4] == "=cmd()" {
			t.Errorf("CSV cell %q is a live formula", r[4])
		}
	}
	if !defused {
		t.Errorf("CSV rows %v lack the defused agent name", recs)
	}
}
