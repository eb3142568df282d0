// Package logstream keeps the agent's recent log lines in memory and hands
// new ones to subscribers: what DLE's UI shows in its logs tab through the
// /instance/logs websocket. It sits between the agent's slog logger and
// its handler and never blocks logging: a subscriber that cannot keep up
// loses lines, not the agent.
package logstream

import (
	"bytes"
	"context"
	"log/slog"
	"sync"
	"time"
)

// Line is one formatted log line (slog's text format, no newline).
type Line struct {
	Time time.Time
	Text string
}

// Hub is the ring of recent lines and the set of subscribers. The zero
// value is not usable; call New.
type Hub struct {
	mu   sync.Mutex
	ring []Line
	next int
	full bool
	subs map[chan Line]struct{}
	now  func() time.Time
}

// New keeps up to capacity lines.
func New(capacity int) *Hub {
	if capacity < 1 {
		capacity = 1
	}
	return &Hub{ring: make([]Line, capacity), subs: map[chan Line]struct{}{}, now: time.Now}
}

// Write takes one line of slog's text handler (it writes each record in
// one call).
func (h *Hub) Write(p []byte) (int, error) {
	text := string(bytes.TrimRight(p, "\n"))
	l := Line{Time: h.now(), Text: text}
	h.mu.Lock()
	h.ring[h.next] = l
	h.next = (h.next + 1) % len(h.ring)
	if h.next == 0 {
		h.full = true
	}
	for ch := range h.subs {
		select {
		case ch <- l:
		default: // a slow reader loses the line
		}
	}
	h.mu.Unlock()
	return len(p), nil
}

// Since returns the kept lines at or after t, oldest first.
func (h *Hub) Since(t time.Time) []Line {
	h.mu.Lock()
	defer h.mu.Unlock()
	var all []Line
	if h.full {
		all = append(all, h.ring[h.next:]...)
	}
	all = append(all, h.ring[:h.next]...)
	out := make([]Line, 0, len(all))
	for _, l := range all {
		if !l.Time.Before(t) {
			out = append(out, l)
		}
	}
	return out
}

// Subscribe returns a channel of new lines and the function that ends
// the subscription (and closes the channel).
func (h *Hub) Subscribe() (<-chan Line, func()) {
	ch := make(chan Line, 256)
	h.mu.Lock()
	h.subs[ch] = struct{}{}
	h.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			h.mu.Lock()
			delete(h.subs, ch)
			close(ch)
			h.mu.Unlock()
		})
	}
}

// Handler returns a slog.Handler that passes every record to next and,
// when next takes it, writes it to the hub in slog's text format.
func (h *Hub) Handler(next slog.Handler) slog.Handler {
	return &tee{next: next, text: slog.NewTextHandler(h, &slog.HandlerOptions{Level: slog.LevelDebug})}
}

type tee struct {
	next slog.Handler
	text slog.Handler
}

func (t *tee) Enabled(ctx context.Context, l slog.Level) bool { return t.next.Enabled(ctx, l) }

func (t *tee) Handle(ctx context.Context, r slog.Record) error {
	err := t.next.Handle(ctx, r)
	_ = t.text.Handle(ctx, r) // the hub's Write never fails
	return err
}

func (t *tee) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &tee{next: t.next.WithAttrs(attrs), text: t.text.WithAttrs(attrs)}
}

func (t *tee) WithGroup(name string) slog.Handler {
	return &tee{next: t.next.WithGroup(name), text: t.text.WithGroup(name)}
}
