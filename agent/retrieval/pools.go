package retrieval

import (
	"context"
	"fmt"
	"time"

	"github.com/thinlab/thinlab/agent/storage"
)

// poolState is what choosePool knows of one candidate pool.
type poolState struct {
	pool   storage.Pool
	newest time.Time // newest snapshot's DataStateAt; zero when none
	clones int
}

// choosePool picks the pool a refresh fills. With one pool, that pool
// (refreshed in place, as its clones live on their own datasets). With
// rotation: never the active pool (the one with the newest snapshot, which
// new clones use), preferably an idle pool without clones, the least
// recently refreshed first. When every idle pool has clones it returns
// nil and the name of the pool it would fill, unless retrieval.busyPool
// forces that pool now.
func (r *Retriever) choosePool(ctx context.Context) (storage.Pool, string, error) {
	if len(r.pools) == 1 {
		return r.pools[0], "", nil
	}
	states := make([]poolState, 0, len(r.pools))
	active := -1
	for _, p := range r.pools {
		st := poolState{pool: p}
		snaps, err := p.Snapshots(ctx)
		if err != nil {
			return nil, "", fmt.Errorf("list pool %s's snapshots: %w", p.Name(), err)
		}
		if len(snaps) > 0 {
			st.newest = snaps[0].DataStateAt
		}
		clones, err := p.Clones(ctx)
		if err != nil {
			return nil, "", fmt.Errorf("list pool %s's clones: %w", p.Name(), err)
		}
		st.clones = len(clones)
		states = append(states, st)
		if !st.newest.IsZero() && (active < 0 || st.newest.After(states[active].newest)) {
			active = len(states) - 1
		}
	}
	var free, busy *poolState
	for i := range states {
		st := &states[i]
		if i == active {
			continue
		}
		pick := &free
		if st.clones > 0 {
			pick = &busy
		}
		if *pick == nil || st.newest.Before((*pick).newest) {
			*pick = st
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if free != nil {
		r.busySince, r.busySkips = time.Time{}, 0
		return free.pool, "", nil
	}
	now := time.Now()
	if r.busySince.IsZero() {
		r.busySince = now
	}
	bp := r.cfg.BusyPool
	byTime := bp.ForceAfterMinutes > 0 && !now.Before(r.busySince.Add(time.Duration(bp.ForceAfterMinutes)*time.Minute))
	byCount := bp.ForceAfterRetries > 0 && r.busySkips >= bp.ForceAfterRetries
	if byTime || byCount {
		r.log.Warn("refreshing a pool that still has clones (retrieval.busyPool): its clones keep working on their own datasets", "pool", busy.pool.Name(), "clones", busy.clones)
		r.busySince, r.busySkips = time.Time{}, 0
		return busy.pool, "", nil
	}
	r.busySkips++
	return nil, busy.pool.Name(), nil
}

// busyMessage says why a refresh was skipped and when it will be forced:
// the deadline clone owners see in the refresh.skipped event.
func (r *Retriever) busyMessage(pool string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	msg := fmt.Sprintf("%v: pool %s would be refreshed but has clones", ErrAllPoolsBusy, pool)
	bp := r.cfg.BusyPool
	retries := "at the next attempt"
	if n := bp.ForceAfterRetries - r.busySkips; n > 0 {
		retries = fmt.Sprintf("after %d more skipped attempts", n)
	}
	switch {
	case bp.ForceAfterMinutes > 0:
		msg += fmt.Sprintf("; it will be refreshed anyway from %s on", r.busySince.Add(time.Duration(bp.ForceAfterMinutes)*time.Minute).UTC().Format(time.RFC3339))
		if bp.ForceAfterRetries > 0 {
			msg += " or " + retries
		}
	case bp.ForceAfterRetries > 0:
		msg += "; it will be refreshed anyway " + retries
	default:
		msg += " (retrieval.busyPool forces nothing: destroy its clones or set forceAfterMinutes)"
	}
	return msg
}
