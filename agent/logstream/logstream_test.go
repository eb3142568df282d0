package logstream

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestHubKeepsRecentLinesAndFeedsSubscribers(t *testing.T) {
	h := New(3)
	var out bytes.Buffer
	log := slog.New(h.Handler(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelInfo}))).With("component", "x")
	ch, stop := h.Subscribe()
	defer stop()
	log.Debug("not enabled downstream, not kept")
	for _, m := range []string{"one", "two", "three", "four"} {
		log.Info(m, "n", 1)
	}
	lines := h.Since(time.Time{})
	if len(lines) != 3 || !strings.Contains(lines[0].Text, "msg=two") || !strings.Contains(lines[2].Text, "msg=four component=x n=1") {
		t.Fatalf("kept lines %+v, want two..four with their attributes", lines)
	}
	if strings.Count(out.String(), "\n") != 4 {
		t.Fatalf("the wrapped handler got %q, want the 4 info lines", out.String())
	}
	got := 0
	for range 4 {
		select {
		case l := <-ch:
			if strings.Contains(l.Text, "not kept") {
				t.Fatalf("a disabled record reached the subscriber: %s", l.Text)
			}
			got++
		case <-time.After(time.Second):
			t.Fatalf("subscriber got %d lines, want 4", got)
		}
	}
	if future := h.Since(time.Now().Add(time.Hour)); len(future) != 0 {
		t.Fatalf("lines from the future: %+v", future)
	}
	stop()
	stop() // idempotent
}

func TestSlowSubscriberDoesNotBlockLogging(t *testing.T) {
	h := New(10)
	_, stop := h.Subscribe()
	defer stop()
	log := slog.New(h.Handler(slog.NewTextHandler(&bytes.Buffer{}, nil)))
	done := make(chan struct{})
	go func() {
		for range 1000 {
			log.Info("line")
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("logging blocked on a subscriber that never reads")
	}
}
