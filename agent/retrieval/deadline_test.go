package retrieval

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/logtest"
)

// TestForcedRefreshDeadlineEvents: with retrieval.pools [a, b], b holding
// the newest snapshot and two clones on a, a refresh is skipped and
// retrieval.busyPool (forceAfterRetries 2, schedule 03:00) will force
// it at the scheduled run after one more skip: PendingForcedRefresh
// dates it, and one clone.refresh_deadline event per clone of a names
// the clone, the pool and the time. The next skip keeps that deadline
// and emits nothing; the attempt after it is forced, fills a and clears
// the deadline.
func TestForcedRefreshDeadlineEvents(t *testing.T) {
	a, b := clonetest.NewPool(t), clonetest.NewPool(t)
	ctx := t.Context()
	old, err := a.Snapshot(ctx, storage.SnapshotOptions{DataStateAt: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), Message: "old"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Snapshot(ctx, storage.SnapshotOptions{DataStateAt: time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC), Message: "newest"}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"c1", "c2"} {
		if _, err := a.Clone(ctx, old.ID, name); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := a.DestroyClone(context.Background(), name); err != nil {
				t.Errorf("destroy clone %s: %v", name, err)
			}
		})
	}
	cfg := config.Default()
	cfg.Pools = []config.Pool{{Name: a.Name(), Mode: a.Mode(), Path: a.MainDir()}, {Name: b.Name(), Mode: b.Mode(), Path: b.MainDir()}}
	cfg.StateDir = t.TempDir()
	cfg.Retrieval = config.Retrieval{Mode: "logical", Source: config.Source{Host: "127.0.0.1", Username: "x"}, Jobs: 1,
		Pools: []string{a.Name(), b.Name()}, RefreshSchedule: "0 3 * * *", BusyPool: config.BusyPool{ForceAfterRetries: 2}}
	bus := events.NewBus()
	var mu sync.Mutex
	var deadlines []events.Event
	bus.Subscribe(func(e events.Event) {
		if e.Kind == events.CloneRefreshDeadline {
			mu.Lock()
			deadlines = append(deadlines, e)
			mu.Unlock()
		}
	})
	fj := newFake()
	close(fj.release)
	r, err := New(Options{Config: cfg, Pools: []storage.Pool{a, b}, Logger: (&logtest.Buffer{}).Logger(), Events: bus, Job: fj})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("close the retriever: %v", err)
		}
	})
	clock := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	r.now = func() time.Time { return clock }

	if _, err := r.Refresh(ctx); !errors.Is(err, ErrAllPoolsBusy) {
		t.Fatalf("first refresh: %v, want ErrAllPoolsBusy", err)
	}
	// Skipped now (1 of 2); skipped at 12-04 03:00 (2 of 2); forced at
	// the run after: 12-05 03:00.
	want := time.Date(2026, 12, 5, 3, 0, 0, 0, time.UTC)
	f, ok := r.PendingForcedRefresh()
	if !ok || f.Pool != a.Name() || !f.At.Equal(want) || f.SkipsLeft != 1 {
		t.Fatalf("pending forced refresh %+v %v, want pool %s at %s after 1 more skip", f, ok, a.Name(), want)
	}
	if !strings.Contains(f.Message(), "refreshed anyway at 2026-12-05T03:00:00Z") {
		t.Fatalf("message %q", f.Message())
	}
	mu.Lock()
	if len(deadlines) != 2 {
		t.Fatalf("clone.refresh_deadline events %+v, want one per clone", deadlines)
	}
	seen := map[string]bool{}
	for _, e := range deadlines {
		var d deadlineData
		if err := json.Unmarshal(e.Data, &d); err != nil || !d.RefreshForcedAt.Equal(want) || e.Pool != a.Name() || e.Severity != events.Warning || !strings.Contains(e.Message, want.Format(time.RFC3339)) {
			t.Fatalf("event %+v (data %+v, %v)", e, d, err)
		}
		seen[e.Clone] = true
	}
	if !seen["c1"] || !seen["c2"] {
		t.Fatalf("events for clones %v, want c1 and c2", seen)
	}
	mu.Unlock()

	// The scheduled run: skipped again, same deadline, no new events.
	clock = time.Date(2026, 12, 4, 3, 0, 0, 0, time.UTC)
	if _, err := r.Refresh(ctx); !errors.Is(err, ErrAllPoolsBusy) {
		t.Fatalf("second refresh: %v, want ErrAllPoolsBusy", err)
	}
	if f, _ := r.PendingForcedRefresh(); !f.At.Equal(want) || f.SkipsLeft != 0 {
		t.Fatalf("after the second skip %+v, want the same deadline and no skips left", f)
	}
	mu.Lock()
	if len(deadlines) != 2 {
		t.Fatalf("the unchanged deadline was announced again: %d events", len(deadlines))
	}
	mu.Unlock()

	clock = want
	res, err := r.Refresh(ctx)
	if err != nil || res.Pool != a.Name() {
		t.Fatalf("forced refresh: %+v %v, want pool %s filled", res, err, a.Name())
	}
	if f, ok := r.PendingForcedRefresh(); ok {
		t.Fatalf("a forced refresh that ran is still pending: %+v", f)
	}
}

// TestForcedAtByWarningPeriod: forceAfterMinutes dates the forced
// refresh at the warning period's end, or with a schedule at the first
// scheduled run from then on; with both limits the earlier counts.
func TestForcedAtByWarningPeriod(t *testing.T) {
	since := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	sched, err := cron.ParseStandard("0 3 * * *")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		bp    config.BusyPool
		sched cron.Schedule
		skips int
		want  time.Time
	}{
		{"minutes, no schedule", config.BusyPool{ForceAfterMinutes: 90}, nil, 1, since.Add(90 * time.Minute)},
		{"minutes, schedule", config.BusyPool{ForceAfterMinutes: 90}, sched, 1, time.Date(2026, 12, 4, 3, 0, 0, 0, time.UTC)},
		{"minutes end on a run", config.BusyPool{ForceAfterMinutes: 15 * 60}, sched, 1, time.Date(2026, 12, 4, 3, 0, 0, 0, time.UTC)},
		{"retries first", config.BusyPool{ForceAfterMinutes: 5 * 24 * 60, ForceAfterRetries: 1}, sched, 1, time.Date(2026, 12, 4, 3, 0, 0, 0, time.UTC)},
		{"retries, no schedule", config.BusyPool{ForceAfterRetries: 3}, nil, 1, time.Time{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &Retriever{cfg: config.Retrieval{BusyPool: tc.bp}, sched: tc.sched, busySince: since, busySkips: tc.skips}
			if got := r.forcedAtLocked(since); !got.Equal(tc.want) {
				t.Fatalf("forced at %s, want %s", got, tc.want)
			}
		})
	}
}
