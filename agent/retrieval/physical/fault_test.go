package physical

import (
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

// TestSourceGoesAway: with the source stopped, the standby keeps running
// with its last state, the status says the source is unreachable and
// raises the lag alert, and the snapshots made before stay usable.
func TestSourceGoesAway(t *testing.T) {
	h := newHarness(t, config.ToolBasebackup, func(h *harness) {
		h.cfg.Retrieval.Physical.LagAlertSeconds = 1
	})
	if err := h.r.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	h.insert("last")
	h.waitReplayed("last")
	snap := h.cycle()
	if _, err := h.r.CheckLag(t.Context()); err != nil {
		t.Fatal(err)
	}
	if st := h.r.Status(); len(st.Alerts) != 0 || !st.Lag.SourceReachable {
		t.Fatalf("status %+v before the source went away: want no alerts and a reachable source", st)
	}

	var mu sync.Mutex
	var lagEvents int
	bus := events.NewBus()
	bus.Subscribe(func(e events.Event) {
		if e.Kind == events.LagHigh {
			mu.Lock()
			lagEvents++
			mu.Unlock()
		}
	})
	h.r.events = bus
	if err := h.src.Cluster.Stop(t.Context(), "immediate"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // past lagAlertSeconds since the last replayed transaction
	lag, err := h.r.CheckLag(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.r.CheckLag(t.Context()); err != nil { // a second check: no second event
		t.Fatal(err)
	}
	mu.Lock()
	if lagEvents != 1 {
		t.Errorf("%d %s events after two checks above the limit, want 1", lagEvents, events.LagHigh)
	}
	mu.Unlock()
	st := h.r.Status()
	if !st.StandbyRunning {
		t.Error("the standby stopped when the source went away")
	}
	if lag.SourceReachable || lag.Seconds < 1 {
		t.Errorf("lag %+v: want the source unreachable and at least 1 s since the last replayed transaction", lag)
	}
	for _, k := range []string{AlertSourceUnreachable, AlertLagHigh} {
		if st.Alerts[k].Count == 0 {
			t.Errorf("alerts %+v: want %s", st.Alerts, k)
		}
	}
	if notes := h.standbyNotes(); !slices.Contains(notes, "last") {
		t.Errorf("the standby has %v, want its last state with %q", notes, "last")
	}
	// Nothing new: a cycle makes no snapshot, the old one still clones.
	if _, err := h.r.SnapshotCycle(t.Context()); !errors.Is(err, ErrNoNewData) {
		t.Errorf("cycle without the source: %v, want ErrNoNewData", err)
	}
	if notes, _ := h.cloneNotes(snap.ID); !slices.Contains(notes, "last") {
		t.Errorf("a clone of %s has %v after the source went away", snap.ID, notes)
	}
	h.checkNoLeftovers()
}

// TestKilledMidCycle: an agent killed while the throwaway postgres runs
// leaves a temporary clone (with its postgres) and snapshot; the restarted
// agent removes them before anything else, and the next cycle succeeds.
func TestKilledMidCycle(t *testing.T) {
	h := newHarness(t, config.ToolBasebackup, nil)
	if err := h.r.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	h.insert("before-kill")
	h.waitReplayed("before-kill")
	h.r.simulateKill = true
	if _, err := h.r.SnapshotCycle(t.Context()); !errors.Is(err, errSimulatedKill) {
		t.Fatalf("cycle: %v, want the simulated kill", err)
	}
	// What the killed agent left: the temporary clone with a running
	// postgres, and the temporary snapshot.
	clones, _ := h.pool.Clones(t.Context())
	var tmp *pgcluster.Cluster
	for _, c := range clones {
		if c.Name == tempClone {
			tmp = h.r.throwaway(c.Mountpoint)
		}
	}
	if tmp == nil || !tmp.Running() {
		t.Fatalf("the simulated kill left no temporary clone with a running postgres (clones %v)", clones)
	}
	snaps, _ := h.pool.Snapshots(t.Context())
	if len(snaps) != 1 || snaps[0].Labels[LabelKind] != kindTemp {
		t.Fatalf("snapshots %v after the kill: want only the temporary one", snaps)
	}

	// The restarted agent.
	r2 := h.newRetriever()
	if err := r2.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	h.r = r2
	if tmp.Running() {
		t.Error("the temporary clone's postgres still runs after the restart")
	}
	h.checkNoLeftovers()
	if snaps, _ := h.pool.Snapshots(t.Context()); len(snaps) != 0 {
		t.Errorf("snapshots %v after the restart: want none (no half-made snapshot)", snaps)
	}
	h.insert("after-restart")
	h.waitReplayed("after-restart")
	snap := h.cycle()
	if notes, _ := h.cloneNotes(snap.ID); !slices.Contains(notes, "after-restart") {
		t.Errorf("a clone of the first snapshot after the restart has %v", notes)
	}
	h.checkNoLeftovers()
}
