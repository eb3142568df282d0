package clone

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// TestWakeHoldsAtMostMaxWaiting: while a clone wakes, at most maxWaiting
// connections are held; more are closed at once, and the wake-up starts
// once however many arrive. When the wake-up fails, the held ones are
// closed too (nothing is passed anywhere).
func TestWakeHoldsAtMostMaxWaiting(t *testing.T) {
	m := &Manager{clones: map[string]*record{}, sleepers: map[string]*sleeper{}}
	s := newSleeper("c1")
	wakes := 0
	s.once.Do(func() { wakes++ }) // the wake-up "runs": nothing ends it yet
	var clients []net.Conn
	for range maxWaiting + 6 {
		server, client := net.Pipe()
		clients = append(clients, client)
		m.admit(s, server)
	}
	if n := len(s.waiting); n != maxWaiting {
		t.Fatalf("%d connections held, want %d", n, maxWaiting)
	}
	closed := 0
	for _, c := range clients {
		_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe) {
			closed++
		}
	}
	if closed != 6 {
		t.Fatalf("%d connections closed at once, want the 6 over the bound", closed)
	}
	if wakes != 1 {
		t.Fatalf("%d wake-ups, want 1", wakes)
	}
	s.err = errors.New("start failed")
	close(s.done)
	for i, c := range clients {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrClosedPipe) {
			t.Fatalf("connection %d after a failed wake-up: %v, want closed", i, err)
		}
	}
}
