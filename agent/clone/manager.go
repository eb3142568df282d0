package clone

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/agent/runtime"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

// opTimeout bounds one create, reset or delete.
const opTimeout = 10 * time.Minute

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
	// when zero; negative disables the loop, and tests call CheckIdle).
	CheckInterval time.Duration
	// CgroupRoot is where the cgroup filesystems are mounted (the
	// runtime's default when empty); tests point it elsewhere.
	CgroupRoot string
	// WarmInterval is how often the warm pool is checked and refilled
	// (10 s when zero; negative disables the loop, and tests call
	// FillWarm). A take kicks a pass at once.
	WarmInterval time.Duration
	// Events, when set, receives the clones' lifecycle events (creating,
	// ready, failed, reset, destroyed, protected).
	Events *events.Bus
	// Archive, when set, returns a pool's WAL archive for point-in-time
	// clones (nil: the pool has none).
	Archive func(pool string) Archive
}

// Manager owns every clone of the agent. It is safe for concurrent use.
type Manager struct {
	cfg        *config.Config
	log        *slog.Logger
	rt         *runtime.Runtime
	now        func() time.Time
	pools      []storage.Pool
	poolByName map[string]storage.Pool
	// connectHost is where the agent checks readiness over TCP.
	connectHost string
	events      *events.Bus
	archive     func(pool string) Archive
	// osUser owns the pools' data (provision.osUser).
	osUser pgcluster.OSUser

	mu     sync.Mutex
	clones map[string]*record
	// sleepers are the agent's listeners on hibernated clones' ports.
	sleepers map[string]*sleeper
	changed  chan struct{} // closed and replaced on every change
	version  uint64
	times    []time.Duration // recent cloning times
	closed   bool

	// warmKick asks the warm loop for a pass; warmPSS, warmTaken and
	// warmSnapshot are what Warm reports.
	warmKick     chan struct{}
	warmPSS      uint64
	warmTaken    uint64
	warmSnapshot string

	saveMu   sync.Mutex
	savedVer uint64

	ops    sync.WaitGroup
	loops  sync.WaitGroup
	cancel context.CancelFunc
}

// NewManager loads the state from the config's stateDir, reconciles it
// with the pools and running processes (restarting clones whose postgres
// died, dropping clones whose dataset is gone, finishing interrupted
// operations, cleaning up datasets and processes that belong to no clone)
// and starts the background loop.
func NewManager(ctx context.Context, opt Options) (*Manager, error) {
	if opt.Config == nil {
		return nil, errors.New("clone manager: no config")
	}
	if len(opt.Pools) == 0 {
		return nil, errors.New("clone manager: no pools")
	}
	cfg := opt.Config
	log := opt.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "clone")
	osUser, err := pgcluster.LookupUser(cfg.Provision.OSUser)
	if err != nil {
		return nil, fmt.Errorf("provision.osUser: %w", err)
	}
	if ids := cfg.Provision.CloneUIDs; osUser.UID >= ids.From && osUser.UID <= ids.To {
		return nil, fmt.Errorf("provision.cloneUIDs (%d-%d) contains the uid %d of provision.osUser %s: clones would share its data; choose a range without it", ids.From, ids.To, osUser.UID, osUser.Name)
	}
	m := &Manager{
		cfg:         cfg,
		log:         log,
		now:         opt.Now,
		pools:       opt.Pools,
		poolByName:  map[string]storage.Pool{},
		connectHost: connectHost(cfg.Provision.ListenAddresses),
		events:      opt.Events,
		archive:     opt.Archive,
		osUser:      osUser,
		clones:      map[string]*record{},
		sleepers:    map[string]*sleeper{},
		warmKick:    make(chan struct{}, 1),
		changed:     make(chan struct{}),
	}
	if m.now == nil {
		m.now = time.Now
	}
	for _, p := range opt.Pools {
		m.poolByName[p.Name()] = p
	}
	m.rt, err = runtime.New(runtime.Options{
		BinRoot:         cfg.Provision.PgBinRoot,
		User:            osUser,
		ListenAddresses: cfg.Provision.ListenAddresses,
		RunDir:          runtime.RunDirFor(cfg.StateDir),
		CloneUIDFrom:    cfg.Provision.CloneUIDs.From,
		CloneUIDTo:      cfg.Provision.CloneUIDs.To,
		CPU:             cfg.Provision.Resources.CPUQuota(),
		MemoryBytes:     cfg.Provision.Resources.MemoryBytes(),
		CgroupRoot:      opt.CgroupRoot,
		Logger:          log,
	})
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("stateDir: %w", err)
	}
	// The state holds password verifiers.
	if err := os.Chmod(cfg.StateDir, 0o700); err != nil { //nolint:gosec // a directory: 0700 is owner-only
		return nil, fmt.Errorf("stateDir: %w", err)
	}
	if err := m.restore(ctx); err != nil {
		return nil, err
	}
	bg, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	interval := opt.CheckInterval
	if interval == 0 {
		interval = time.Minute
		// A hibernation time under a minute is checked often enough to
		// keep it within twice the time (never more than every 5 s).
		if h := cfg.Cloning.HibernateAfter(); h > 0 && h < 2*interval {
			interval = max(h/2, 5*time.Second)
		}
	}
	if interval > 0 {
		m.loops.Add(1)
		go m.loop(bg, interval)
	}
	warmEvery := opt.WarmInterval
	if warmEvery == 0 {
		warmEvery = 10 * time.Second
	}
	m.mu.Lock()
	hasWarm := false
	for _, r := range m.clones {
		hasWarm = hasWarm || r.Warm
	}
	m.mu.Unlock()
	// With warm clones left from a config that had them, the loop runs
	// once more to recycle them.
	if warmEvery > 0 && (cfg.Cloning.Warm.Count > 0 || hasWarm) {
		m.loops.Add(1)
		go m.warmLoop(bg, warmEvery)
	}
	return m, nil
}

// connectHost is an address from listen_addresses the agent itself can
// dial.
func connectHost(listen string) string {
	first := strings.TrimSpace(strings.Split(listen, ",")[0])
	switch first {
	case "", "*", "0.0.0.0":
		return "127.0.0.1"
	case "::":
		return "::1"
	}
	return first
}

// Runtime exposes the clones' runtime (for status pages and tests).
func (m *Manager) Runtime() *runtime.Runtime { return m.rt }

// Pools returns the pools clones are made from.
func (m *Manager) Pools() []storage.Pool { return m.pools }

// Pool returns a pool by name.
func (m *Manager) Pool(name string) (storage.Pool, bool) {
	p, ok := m.poolByName[name]
	return p, ok
}

// Close stops the background loop and waits for running operations.
// Clones keep running: the next Manager finds them again.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.mu.Unlock()
	if m.cancel != nil {
		m.cancel()
	}
	m.closeSleepers()
	m.loops.Wait()
	m.ops.Wait()
	return m.save()
}
