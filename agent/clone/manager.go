package clone

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/storage"
)

// Options configure a Manager.
type Options struct {
	// Config supplies provision, cloning and stateDir.
	Config *config.Config
	// Pools are the opened pools (agent/storage/backend.Open), in config
	// order.
	Pools  []storage.Pool
	Logger *slog.Logger

	// Now is the clock (time.Now when nil); tests move it to drive idle
	// cleanup and protection expiry.
	Now func() time.Time
	// CheckInterval is how often the idle/protection loop runs (one minute
	// when zero). Tests call CheckIdle directly instead.
	CheckInterval time.Duration
}

// Manager owns every clone of the agent.
type Manager struct {
	opt Options
}

var errUnimplemented = errors.New("clone manager: not implemented yet (contract commit)")

// NewManager loads the state from cfg.StateDir, reconciles it with the
// pools and running processes, and starts the background loops.
func NewManager(ctx context.Context, opt Options) (*Manager, error) {
	return nil, errUnimplemented
}

// Create validates r, registers the clone with status CREATING and
// returns at once; the clone is built in the background.
func (m *Manager) Create(ctx context.Context, r CreateRequest) (Clone, error) {
	return Clone{}, errUnimplemented
}

// Get returns one clone.
func (m *Manager) Get(id string) (Clone, error) { return Clone{}, errUnimplemented }

// List returns all clones, newest first.
func (m *Manager) List() []Clone { return nil }

// Reset re-creates the clone from another snapshot keeping id, port and
// credentials; it returns at once with status RESETTING.
func (m *Manager) Reset(ctx context.Context, id string, r ResetRequest) (Clone, error) {
	return Clone{}, errUnimplemented
}

// Destroy deletes a clone (status DELETING, then gone). A protected clone
// gives ErrProtected.
func (m *Manager) Destroy(ctx context.Context, id string) error { return errUnimplemented }

// UpdateProtection protects or unprotects a clone; durationMinutes nil
// means the configured lease, 0 no expiry (both capped by the maximum).
func (m *Manager) UpdateProtection(id string, protected bool, durationMinutes *uint) (Clone, error) {
	return Clone{}, errUnimplemented
}

// Pools returns the pools clones are made from.
func (m *Manager) Pools() []storage.Pool { return m.opt.Pools }

// ExpectedCloningTime is the mean cloning time of recent clones (for the
// status endpoint's cloning.expectedCloningTime).
func (m *Manager) ExpectedCloningTime() time.Duration { return 0 }

// Close stops the background loops. Clones keep running: the next Manager
// finds them again.
func (m *Manager) Close() error { return nil }
