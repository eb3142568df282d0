package tunnel

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

func TestBackoffGrowsCappedAndJittered(t *testing.T) {
	b := Backoff{Min: 100 * time.Millisecond, Max: 2 * time.Second}
	// The bounds of attempt n: [d/2, d) with d = min(Min*2^n, Max).
	for n := range 10 {
		d := min(b.Min<<n, b.Max)
		lo, hi := b.Delay(n), b.Delay(n)
		for range 50 {
			x := b.Delay(n)
			lo, hi = min(lo, x), max(hi, x)
		}
		if lo < d/2 || hi >= d {
			t.Fatalf("attempt %d: delays in [%v, %v], want within [%v, %v)", n, lo, hi, d/2, d)
		}
		if lo == hi {
			t.Fatalf("attempt %d: 51 delays all %v: no jitter", n, lo)
		}
	}
	// Deterministic ends of the jitter.
	zero := Backoff{Min: time.Second, Max: time.Minute, Rand: func() float64 { return 0 }}
	if got := zero.Delay(3); got != 4*time.Second {
		t.Fatalf("Delay(3) with jitter 0 = %v, want 4s", got)
	}
	if got := zero.Delay(40); got != 30*time.Second {
		t.Fatalf("Delay(40) = %v, want the cap's lower half 30s", got)
	}
}

func TestEndpointPolicy(t *testing.T) {
	for _, tc := range []struct {
		url      string
		insecure bool
		ok       bool
		ws       string
	}{
		{"https://thinlab.example.com", false, true, "wss://thinlab.example.com/api/agent/v1/tunnel"},
		{"https://thinlab.example.com/prefix/", false, true, "wss://thinlab.example.com/prefix/api/agent/v1/tunnel"},
		{"wss://thinlab.example.com", false, true, "wss://thinlab.example.com/api/agent/v1/tunnel"},
		{"http://thinlab.example.com", false, false, ""},
		{"ws://10.0.0.1", false, false, ""},
		{"http://thinlab.example.com", true, true, "ws://thinlab.example.com/api/agent/v1/tunnel"},
		{"http://127.0.0.1:8080", false, true, "ws://127.0.0.1:8080/api/agent/v1/tunnel"},
		{"http://[::1]:8080", false, true, "ws://[::1]:8080/api/agent/v1/tunnel"},
		{"http://localhost", false, true, "ws://localhost/api/agent/v1/tunnel"},
		{"ftp://thinlab.example.com", true, false, ""},
		{"thinlab.example.com", false, false, ""},
	} {
		ep, err := ParseEndpoint(tc.url, "", tc.insecure)
		if (err == nil) != tc.ok {
			t.Errorf("%s insecure=%v: err = %v", tc.url, tc.insecure, err)
			continue
		}
		if err != nil {
			if !strings.Contains(err.Error(), "platform.url") {
				t.Errorf("%s: error %q does not name platform.url", tc.url, err)
			}
			continue
		}
		if got := ep.url(tunnel.TunnelPath, true); got != tc.ws {
			t.Errorf("%s: tunnel URL %s, want %s", tc.url, got, tc.ws)
		}
	}
	if _, err := ParseEndpoint("https://x", filepath.Join(t.TempDir(), "none.pem"), false); err == nil || !strings.Contains(err.Error(), "platform.caFile") {
		t.Errorf("missing CA file: %v", err)
	}
}

func makeEvents(prefix string, n int) []tunnel.Event {
	out := make([]tunnel.Event, n)
	for i := range out {
		out[i] = tunnel.Event{ID: fmt.Sprintf("%s-%d", prefix, i), Kind: "clone.ready", Message: strings.Repeat("x", 100)}
	}
	return out
}

func ids(evs []tunnel.Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.ID
	}
	return out
}

func TestJournalAckReopenAndTornRecord(t *testing.T) {
	dir := t.TempDir()
	j, err := OpenJournal(dir, 1024, 100)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := j.Append(makeEvents("a", 30)); err != nil {
		t.Fatal(err)
	}
	evs, last, err := j.Pending(10)
	if err != nil || len(evs) != 10 || last != 10 || evs[0].ID != "a-0" {
		t.Fatalf("pending: %v %d %v", ids(evs), last, err)
	}
	if err := j.Ack(last); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	// A crash in the middle of an append leaves half a line.
	segs, _ := filepath.Glob(filepath.Join(dir, "seg-*"))
	f, err := os.OpenFile(segs[len(segs)-1], os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.WriteString(`{"seq":31,"event":{"id":"torn"`)
	_ = f.Close()

	j, err = OpenJournal(dir, 1024, 100)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = j.Close() }()
	if _, err := j.Append(makeEvents("b", 1)); err != nil {
		t.Fatal(err)
	}
	evs, last, err = j.Pending(1000)
	if err != nil || len(evs) != 21 || evs[0].ID != "a-10" || evs[20].ID != "b-0" || last != 31 {
		t.Fatalf("after reopen: %v last %d %v", ids(evs), last, err)
	}
	if err := j.Ack(last); err != nil {
		t.Fatal(err)
	}
	if evs, _, _ := j.Pending(1000); len(evs) != 0 {
		t.Fatalf("pending after full ack: %v", ids(evs))
	}
	if segs, _ := filepath.Glob(filepath.Join(dir, "seg-*")); len(segs) > 1 {
		t.Fatalf("acked segments kept: %v", segs)
	}
}

func TestJournalBoundDropsOldestAndCounts(t *testing.T) {
	j, err := OpenJournal(t.TempDir(), 1024, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = j.Close() }()
	var dropped uint64
	for i := range 20 {
		d, err := j.Append(makeEvents(fmt.Sprint("e", i), 5))
		if err != nil {
			t.Fatal(err)
		}
		dropped += d
	}
	evs, _, err := j.Pending(1000)
	if err != nil {
		t.Fatal(err)
	}
	if dropped == 0 || j.Dropped() != dropped || uint64(len(evs))+dropped != 100 {
		t.Fatalf("kept %d, dropped %d (Dropped() %d): want kept+dropped = 100, dropped > 0", len(evs), dropped, j.Dropped())
	}
	if last := evs[len(evs)-1].ID; last != "e19-4" {
		t.Fatalf("newest kept event %s, want e19-4", last)
	}
}

// TestCloseJournalsEventsEmittedAfterRun: an agent that shuts down waits
// for its running operations after the tunnel stopped; the events they
// emit then (a clone becoming ready) are journaled by Close and delivered
// by the next start, not lost.
func TestCloseJournalsEventsEmittedAfterRun(t *testing.T) {
	state := t.TempDir()
	bus := events.NewBus()
	c, err := New(Options{URL: "http://127.0.0.1:1", StateDir: state, Events: bus})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := c.Run(ctx); err != nil {
		t.Fatal(err)
	}
	bus.Emit(events.Event{ID: "after-run", Kind: events.CloneReady, Clone: "c1"})
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	j, err := OpenJournal(filepath.Join(state, JournalDir), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = j.Close() }()
	evs, _, err := j.Pending(100)
	if err != nil || len(evs) != 1 || evs[0].ID != "after-run" || evs[0].Kind != string(events.CloneReady) {
		t.Fatalf("journal after Close: %v %v, want the event emitted after Run", ids(evs), err)
	}
}
