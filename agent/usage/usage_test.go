package usage

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/events"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type world struct {
	clock  *clock
	bus    *events.Bus
	clones []Clone
	got    []events.Event
}

func newWorld(t *testing.T) *world {
	w := &world{clock: &clock{t: time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)}, bus: events.NewBus()}
	t.Cleanup(w.bus.Subscribe(func(e events.Event) {
		if e.Kind == events.Usage {
			w.got = append(w.got, e)
		}
	}))
	return w
}

func (w *world) sampler(t *testing.T, dir string) *Sampler {
	t.Helper()
	s, err := New(Options{
		StateDir: dir, InstanceID: "inst", Events: w.bus, Now: w.clock.now,
		Clones: func() []Clone { return w.clones },
		Pools:  func(context.Context) []Pool { return []Pool{{Name: "p", UsedBytes: 7}} },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.cancelSub)
	return s
}

func sample(t *testing.T, e events.Event) Sample {
	t.Helper()
	var s Sample
	if err := json.Unmarshal(e.Data, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

func secondsOf(s Sample) map[string]float64 {
	out := map[string]float64{}
	for _, c := range s.Clones {
		out[c.ID] = c.Seconds
	}
	return out
}

// Periods follow each other without gaps; a clone made and destroyed
// between two samples counts for its lifetime; after a restart the first
// sample spans the time the agent was down (clones outlive it).
func TestSamplesCoverEveryClonesLifetimeAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	w := newWorld(t)
	start := w.clock.now()
	w.clones = []Clone{{ID: "a", Pool: "p", Running: true, CreatedAt: start.Add(-time.Hour)}}
	s := w.sampler(t, dir)
	cursor, err := s.loadCursor()
	if err != nil || !cursor.IsZero() {
		t.Fatalf("first cursor: %v %v", cursor, err)
	}
	cursor = start
	s.look()

	w.clock.add(30 * time.Second)
	w.bus.Emit(events.Event{Kind: events.CloneCreating, Clone: "b", Pool: "p", Time: w.clock.now()})
	w.clock.add(20 * time.Second)
	w.bus.Emit(events.Event{Kind: events.CloneDestroyed, Clone: "b", Time: w.clock.now()})
	w.clock.add(10 * time.Second)
	if cursor, err = s.Take(t.Context(), cursor); err != nil {
		t.Fatal(err)
	}
	if len(w.got) != 1 {
		t.Fatalf("%d samples, want 1", len(w.got))
	}
	first := sample(t, w.got[0])
	if got := secondsOf(first); got["a"] != 60 || got["b"] != 20 || len(got) != 2 {
		t.Fatalf("clone seconds %v, want a=60 b=20", got)
	}
	if !first.From.Equal(start) || !first.To.Equal(cursor) || w.got[0].ID != SampleID("inst", start) {
		t.Fatalf("period [%v, %v) id %s", first.From, first.To, w.got[0].ID)
	}

	// The agent is down for an hour; the clone keeps running.
	w.clock.add(time.Hour)
	s2 := w.sampler(t, dir)
	from, err := s2.loadCursor()
	if err != nil || !from.Equal(cursor) {
		t.Fatalf("cursor after restart %v %v, want %v", from, err, cursor)
	}
	if _, err := s2.Take(t.Context(), from); err != nil {
		t.Fatal(err)
	}
	second := sample(t, w.got[1])
	if got := secondsOf(second); got["a"] != 3600 || len(got) != 1 {
		t.Fatalf("after the restart: %v, want a=3600", got)
	}
	if !second.From.Equal(first.To) {
		t.Fatalf("gap or overlap: %v then %v", first.To, second.From)
	}
}

// A crash after a sample was written down but before it was recorded as
// sent: the next start sends the same sample (same ID and content) again,
// and the next period starts where it ended.
func TestPendingSampleIsSentAgainAfterACrash(t *testing.T) {
	dir := t.TempDir()
	w := newWorld(t)
	w.clones = []Clone{{ID: "a", Pool: "p", Running: true, CreatedAt: w.clock.now()}}
	from := w.clock.now()
	w.clock.add(time.Minute)
	pending := events.Event{ID: SampleID("inst", from), Time: w.clock.now(), Kind: events.Usage}.WithData(Sample{From: from, To: w.clock.now()})
	raw, _ := json.Marshal(cursorFile{To: w.clock.now(), Pending: &pending})
	if err := os.WriteFile(filepath.Join(dir, CursorFile), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	s := w.sampler(t, dir)
	to, err := s.loadCursor()
	if err != nil || !to.Equal(w.clock.now()) {
		t.Fatalf("cursor %v %v", to, err)
	}
	if len(w.got) != 1 || w.got[0].ID != pending.ID || string(w.got[0].Data) != string(pending.Data) {
		t.Fatalf("re-sent %+v, want the pending sample", w.got)
	}
	// Recorded as sent now: a second start sends nothing.
	if _, err := w.sampler(t, dir).loadCursor(); err != nil || len(w.got) != 1 {
		t.Fatalf("second start: %d samples, %v", len(w.got), err)
	}
}

func TestCorruptCursorNamesTheFix(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, CursorFile), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	w := newWorld(t)
	if _, err := w.sampler(t, dir).loadCursor(); err == nil {
		t.Fatal("a corrupt cursor was accepted")
	}
}
