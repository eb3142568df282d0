package store_test

import (
	"math"
	"sync"
	"testing"
	"time"

	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

func sample(at time.Time, cpu float64, used uint64, cloneCPU float64) tunnel.MetricsSample {
	util := cpu / 2
	return tunnel.MetricsSample{
		Time: at, Seconds: 30, CPUs: 2, CPUPercent: cpu, MemTotalBytes: 1000, MemAvailableBytes: 400,
		Pools:  []tunnel.PoolMetrics{{Name: "p1", SizeBytes: 100, UsedBytes: used, FreeBytes: 100 - used, IOUtilPercent: &util}},
		Clones: []tunnel.CloneMetrics{{ID: "c1", Pool: "p1", CPUPercent: cloneCPU, MemoryBytes: 64 << 20, Connections: 2}},
	}
}

// TestAgentMetricsStoredAndDownsampled: samples are stored once (a
// redelivered batch adds nothing), listed oldest first within the
// organization only; downsampling folds whole hours older than the raw
// retention into hourly averages (a late sample of an aggregated hour is
// folded in, weighted), two replicas downsampling at once count each
// sample once, and aggregates past their retention are deleted.
func TestAgentMetricsStoredAndDownsampled(t *testing.T) {
	st := open(t)
	ctx := t.Context()
	org, owner := enrollOrg(t, st, "metrics")
	_, secret, err := st.CreateEnrollmentToken(ctx, org.ID, owner.ID, "", time.Now().Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	ag, _, _, err := st.Enroll(ctx, secret, facts("m1"))
	if err != nil {
		t.Fatal(err)
	}
	h0 := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	// Hour 10: cpu 10, 20, 30 (avg 20); hour 11: cpu 50; hour 12: 70.
	batch := []tunnel.MetricsSample{
		sample(h0.Add(5*time.Minute), 10, 10, 100), sample(h0.Add(25*time.Minute), 20, 20, 50), sample(h0.Add(45*time.Minute), 30, 30, 0),
		sample(h0.Add(65*time.Minute), 50, 50, 10), sample(h0.Add(125*time.Minute), 70, 70, 10),
	}
	if n, err := st.InsertAgentMetrics(ctx, ag.ID, batch); err != nil || n != 5 {
		t.Fatalf("insert: %d %v", n, err)
	}
	if n, err := st.InsertAgentMetrics(ctx, ag.ID, batch[:2]); err != nil || n != 0 {
		t.Fatalf("redelivered batch: %d rows added (%v), want 0", n, err)
	}
	pts, err := st.AgentMetrics(ctx, org.ID, ag.ID, h0)
	if err != nil || len(pts) != 5 || pts[0].Sample.CPUPercent != 10 || pts[4].Sample.CPUPercent != 70 {
		t.Fatalf("list: %+v %v", pts, err)
	}
	if other, err := st.AgentMetrics(ctx, "org_other", ag.ID, h0); err != nil || len(other) != 0 {
		t.Fatalf("another organization sees %d points (%v)", len(other), err)
	}

	// Now is 12:30 + 48h: hours 10 and 11 are past the raw retention, 12
	// is not whole yet. Two replicas at once.
	now := h0.Add(2*time.Hour + 30*time.Minute + 48*time.Hour)
	var wg sync.WaitGroup
	folded := make([]int, 2)
	for i := range 2 {
		wg.Go(func() {
			n, err := st.DownsampleAgentMetrics(ctx, now, 48*time.Hour, 90*24*time.Hour)
			if err != nil {
				t.Error(err)
			}
			folded[i] = n
		})
	}
	wg.Wait()
	if folded[0]+folded[1] != 4 {
		t.Fatalf("folded %v samples, want 4 in all", folded)
	}
	pts, err = st.AgentMetrics(ctx, org.ID, ag.ID, h0)
	if err != nil || len(pts) != 3 {
		t.Fatalf("after downsampling: %d points %v, want 2 hours + 1 sample", len(pts), err)
	}
	hour := pts[0]
	near := func(what string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > 1e-6 {
			t.Errorf("%s = %v, want %v", what, got, want)
		}
	}
	if hour.Resolution != store.MetricsHour || hour.Samples != 3 || !hour.At.Equal(h0) {
		t.Fatalf("first point: %+v", hour)
	}
	near("hour cpu", hour.Sample.CPUPercent, 20)
	near("hour pool used", float64(hour.Sample.Pools[0].UsedBytes), 20)
	near("hour io util", *hour.Sample.Pools[0].IOUtilPercent, 10)
	near("hour clone cpu", hour.Sample.Clones[0].CPUPercent, 50)
	if pts[1].Resolution != store.MetricsHour || pts[2].Resolution != store.MetricsRaw {
		t.Fatalf("points: %+v", pts)
	}

	// A late sample of hour 10 (cpu 60): folded in with weight 1 of 4.
	if _, err := st.InsertAgentMetrics(ctx, ag.ID, []tunnel.MetricsSample{sample(h0.Add(50*time.Minute), 60, 60, 0)}); err != nil {
		t.Fatal(err)
	}
	if n, err := st.DownsampleAgentMetrics(ctx, now, 48*time.Hour, 90*24*time.Hour); err != nil || n != 1 {
		t.Fatalf("late sample: folded %d %v", n, err)
	}
	pts, _ = st.AgentMetrics(ctx, org.ID, ag.ID, h0)
	if pts[0].Samples != 4 {
		t.Fatalf("hour 10 after the late sample: %d samples", pts[0].Samples)
	}
	near("hour cpu with the late sample", pts[0].Sample.CPUPercent, 30)

	// 91 days later the aggregates are gone (and the rest downsampled).
	if _, err := st.DownsampleAgentMetrics(ctx, now.Add(91*24*time.Hour), 48*time.Hour, 90*24*time.Hour); err != nil {
		t.Fatal(err)
	}
	if pts, _ := st.AgentMetrics(ctx, org.ID, ag.ID, h0); len(pts) != 0 {
		t.Fatalf("%d points past every retention", len(pts))
	}
}
