// Package logtest captures log output in tests, so that a test can show
// it on failure and check that no secret was logged.
package logtest

import (
	"bytes"
	"log/slog"
	"sync"
)

// Buffer collects output from several goroutines (servers, managers,
// child processes' pipes).
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Logger logs everything down to debug level as text into s.
func (s *Buffer) Logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(s, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
