// Package snapshot is the agent's policy over its pools' snapshots:
// protection and scheduled deletion (set through the API, kept in
// stateDir/snapshots.json) and retention (retrieval.keepSnapshots). The
// pools only store snapshots; what may be deleted, and when, is decided
// here, by one periodic sweep and after every refresh.
package snapshot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/agent/storage"
)

// DefaultSweepInterval is how often the sweep runs when Options leave it
// zero.
const DefaultSweepInterval = time.Minute

// Clones are the clones the agent runs (clone.Manager): a snapshot one of
// them was made from is never deleted by the sweep or by retention.
type Clones interface {
	List() []clone.Clone
}

// Options configure a Policy.
type Options struct {
	// Config supplies stateDir, retrieval.keepSnapshots and retrieval.pool.
	Config *config.Config
	// Pools are the agent's pools in config order.
	Pools []storage.Pool
	// Clones may be nil (then only the clones the pools report count).
	Clones Clones
	Logger *slog.Logger
	// Now is the clock (time.Now when nil); tests move it to expire
	// protection.
	Now func() time.Time
	// SweepInterval is how often Start's loop sweeps (DefaultSweepInterval
	// when zero; negative: Start runs no loop and tests call Sweep).
	SweepInterval time.Duration
	// Events receives snapshot.deleted for every snapshot the policy
	// deletes (nil: none sent).
	Events *events.Bus
}

// Policy holds snapshot protection and scheduled deletion and applies them,
// with retention, to the pools. It is safe for concurrent use.
type Policy struct {
	pools map[string]storage.Pool
	// retained are the pools retention applies to: the pools a refresh
	// fills (each keeps its own newest N).
	retained []storage.Pool
	keep     int
	clones   Clones
	log      *slog.Logger
	now      func() time.Time
	interval time.Duration
	events   *events.Bus

	store *store
	// loadErr is why snapshots.json could not be read: changes and
	// deletions are then refused rather than made without the protection
	// the file holds.
	loadErr error

	// deleting serialises the sweep and retention after a refresh.
	deleting sync.Mutex

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New loads the state from stateDir. An unreadable state file does not
// fail New: it is logged and reported by Err, and the policy then deletes
// nothing.
func New(opt Options) *Policy {
	log := opt.Logger
	if log == nil {
		log = slog.Default()
	}
	p := &Policy{
		pools:    map[string]storage.Pool{},
		clones:   opt.Clones,
		log:      log.With("component", "snapshots"),
		now:      opt.Now,
		interval: opt.SweepInterval,
		events:   opt.Events,
	}
	if p.now == nil {
		p.now = time.Now
	}
	if p.interval == 0 {
		p.interval = DefaultSweepInterval
	}
	for _, pl := range opt.Pools {
		p.pools[pl.Name()] = pl
	}
	var stateDir string
	if opt.Config != nil {
		stateDir = opt.Config.StateDir
		p.keep = opt.Config.Retrieval.KeepSnapshots
		// Retention applies to the pools retrieval fills, each on its
		// own: every pool of retrieval.pools when refreshes rotate (a
		// rotated pool keeps its newest N, not the newest N of all pools
		// together), else retrieval.pool, else the first pool.
		switch r := opt.Config.Retrieval; {
		case len(r.Pools) > 0:
			for _, name := range r.Pools {
				if pl, ok := p.pools[name]; ok {
					p.retained = append(p.retained, pl)
				}
			}
		case r.Pool != "":
			if pl, ok := p.pools[r.Pool]; ok {
				p.retained = append(p.retained, pl)
			}
		case len(opt.Pools) > 0:
			p.retained = append(p.retained, opt.Pools[0])
		}
	}
	p.store, p.loadErr = loadStore(stateDir)
	if p.loadErr != nil {
		p.log.Error("snapshot protection state unreadable: snapshot updates and deletes are refused until it is fixed", "err", p.loadErr)
		p.store = &store{m: map[string]Meta{}}
	}
	return p
}

// Err is why the protection state could not be loaded (nil when it was).
func (p *Policy) Err() error { return p.loadErr }

// Get returns the protection and scheduled deletion of a snapshot (zero
// when none is set).
func (p *Policy) Get(id string) Meta { return p.store.get(id) }

// Set stores meta for a snapshot; the zero Meta removes its entry.
func (p *Policy) Set(id string, meta Meta) error {
	if p.loadErr != nil {
		return p.loadErr
	}
	return p.store.set(id, meta)
}

// Forget drops the state of a deleted snapshot.
func (p *Policy) Forget(id string) {
	if p.loadErr != nil {
		return
	}
	if err := p.store.set(id, Meta{}); err != nil {
		p.log.Warn("could not drop the state of a deleted snapshot", "snapshot", id, "err", err)
	}
}

// Start runs Sweep every SweepInterval until Close.
func (p *Policy) Start() {
	if p.interval < 0 || p.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	p.wg.Go(func() {
		t := time.NewTicker(p.interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				p.Sweep(ctx)
			}
		}
	})
}

// Close stops the sweep loop and waits for a running sweep.
func (p *Policy) Close() {
	if p.cancel != nil {
		p.cancel()
	}
	p.wg.Wait()
}

// Sweep deletes snapshots whose deleteAt has passed, unless they are
// protected or clones still use them (then it tries again on the next
// sweep), forgets the state of snapshots that no longer exist, and applies
// retention. It returns the IDs it deleted.
func (p *Policy) Sweep(ctx context.Context) []string {
	if p.loadErr != nil {
		return nil
	}
	p.deleting.Lock()
	defer p.deleting.Unlock()
	now := p.now()
	inUse := p.inUse()
	var deleted []string
	for id, meta := range p.store.all() {
		poolName, _, err := storage.ParseSnapshotID(id)
		pl, ok := p.pools[poolName]
		if err != nil || !ok {
			continue
		}
		sn, err := pl.GetSnapshot(ctx, id)
		if errors.Is(err, storage.ErrNotFound) {
			p.Forget(id)
			continue
		}
		if err != nil || meta.DeleteAt.IsZero() || now.Before(meta.DeleteAt) || meta.ProtectedAt(now) {
			continue
		}
		if inUse[id] || len(sn.Clones) > 0 {
			p.log.Warn("snapshot past its deleteAt still has clones; deleting it once they are gone", "snapshot", id)
			continue
		}
		if err := pl.DestroySnapshot(ctx, id, false); err != nil {
			p.log.Warn("scheduled snapshot deletion failed", "snapshot", id, "err", err)
			continue
		}
		p.Forget(id)
		p.log.Info("snapshot deleted at its deleteAt", "snapshot", id, "reason", "deleteAt", "delete_at", meta.DeleteAt)
		p.events.Emit(events.Event{Kind: events.SnapshotDeleted, Pool: pl.Name(), Snapshot: id, Message: "deleted at its scheduled time"})
		deleted = append(deleted, id)
	}
	for _, pl := range p.retained {
		gone, err := p.retainLocked(ctx, pl)
		deleted = append(deleted, gone...)
		if err != nil {
			p.log.Warn("snapshot retention failed", "pool", pl.Name(), "err", err)
		}
	}
	return deleted
}

// Retain deletes the oldest snapshots of pl beyond retrieval.keepSnapshots
// (nothing when it is 0), never one a clone depends on and never a
// protected one; both count towards the number kept. Each deletion is
// logged. It returns the IDs it deleted, also when it stops at an error.
func (p *Policy) Retain(ctx context.Context, pl storage.Pool) ([]string, error) {
	if p.keep < 1 {
		return nil, nil
	}
	if p.loadErr != nil {
		return nil, fmt.Errorf("retention skipped: %w", p.loadErr)
	}
	p.deleting.Lock()
	defer p.deleting.Unlock()
	return p.retainLocked(ctx, pl)
}

func (p *Policy) retainLocked(ctx context.Context, pl storage.Pool) ([]string, error) {
	if p.keep < 1 {
		return nil, nil
	}
	now := p.now()
	inUse := p.inUse()
	keepAlso := func(s storage.Snapshot) bool {
		return inUse[s.ID] || p.store.get(s.ID).ProtectedAt(now)
	}
	deleted, err := storage.Retain(ctx, pl, p.keep, keepAlso)
	for _, id := range deleted {
		p.Forget(id)
		p.log.Info("snapshot deleted by retention", "snapshot", id, "reason", "retention", "keep", p.keep)
		p.events.Emit(events.Event{Kind: events.SnapshotDeleted, Pool: pl.Name(), Snapshot: id, Message: fmt.Sprintf("deleted by retention (keep %d)", p.keep)})
	}
	return deleted, err
}

// inUse is the set of snapshot IDs the clone manager's clones were made
// from.
func (p *Policy) inUse() map[string]bool {
	out := map[string]bool{}
	if p.clones == nil {
		return out
	}
	for _, c := range p.clones.List() {
		out[c.SnapshotID] = true
	}
	return out
}
