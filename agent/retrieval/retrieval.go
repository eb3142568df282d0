package retrieval

import (
	"context"
	"log/slog"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/storage"
)

// Options configure a Retriever.
type Options struct {
	Config *config.Config
	// Pool is the pool named by retrieval.pool.
	Pool   storage.Pool
	Logger *slog.Logger
}

// Retriever runs logical refreshes, on demand and on the schedule.
type Retriever struct {
	opt Options
}

// New builds a Retriever; Start begins the schedule.
func New(opt Options) (*Retriever, error) { return &Retriever{opt: opt}, nil }

// Start begins the refresh schedule (if any) in the background.
func (r *Retriever) Start(ctx context.Context) {}

// Status reports the retrieval state.
func (r *Retriever) Status() Status { return Status{Mode: ModeLogical, Status: StatusInactive} }

// FullRefresh starts a full refresh in the background; ErrRefreshRunning
// while one runs.
func (r *Retriever) FullRefresh() error { return ErrNotConfigured }

// Refresh runs a full refresh and waits for it (used by tests, the demo
// and FullRefresh).
func (r *Retriever) Refresh(ctx context.Context) (storage.Snapshot, error) {
	return storage.Snapshot{}, ErrNotConfigured
}

// Close stops the schedule and waits for a running refresh to stop.
func (r *Retriever) Close() error { return nil }
