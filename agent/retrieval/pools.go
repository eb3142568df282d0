package retrieval

import (
	"context"
	"fmt"
	"time"

	"github.com/thinlab/thinlab/agent/events"
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
		r.busySince, r.busySkips, r.forced = time.Time{}, 0, nil
		return free.pool, "", nil
	}
	now := r.now()
	if r.busySince.IsZero() {
		r.busySince = now
	}
	bp := r.cfg.BusyPool
	byTime := bp.ForceAfterMinutes > 0 && !now.Before(r.busySince.Add(time.Duration(bp.ForceAfterMinutes)*time.Minute))
	byCount := bp.ForceAfterRetries > 0 && r.busySkips >= bp.ForceAfterRetries
	if byTime || byCount {
		r.log.Warn("refreshing a pool that still has clones (retrieval.busyPool): its clones keep working on their own datasets", "pool", busy.pool.Name(), "clones", busy.clones)
		r.busySince, r.busySkips, r.forced = time.Time{}, 0, nil
		return busy.pool, "", nil
	}
	r.busySkips++
	r.forced = nil
	if bp.ForceAfterMinutes > 0 || bp.ForceAfterRetries > 0 {
		f := ForcedRefresh{Pool: busy.pool.Name(), At: r.forcedAtLocked(now), SkipsLeft: max(bp.ForceAfterRetries-r.busySkips, 0)}
		if bp.ForceAfterRetries == 0 {
			f.SkipsLeft = -1
		}
		r.forced = &f
	}
	return nil, busy.pool.Name(), nil
}

// ForcedRefresh is a refresh that waits for a pool whose clones keep it
// busy and that retrieval.busyPool will force: what the clones' owners
// are shown.
type ForcedRefresh struct {
	Pool string
	// At is when the refresh will be forced: the warning period's end
	// (with a refresh schedule, the first scheduled run from then on), or
	// the scheduled run after the remaining skips, whichever is first.
	// Zero when only a count of skipped attempts forces it and no
	// schedule dates them.
	At time.Time
	// SkipsLeft is how many more attempts will be skipped before one is
	// forced (-1: the count forces nothing).
	SkipsLeft int
}

// Message says what happens to the pool, for a clone's status.
func (f ForcedRefresh) Message() string {
	var when string
	switch {
	case !f.At.IsZero():
		when = "at " + f.At.UTC().Format(time.RFC3339)
	case f.SkipsLeft == 0:
		when = "at the next refresh"
	default:
		when = fmt.Sprintf("after %d more skipped refreshes", f.SkipsLeft)
	}
	return fmt.Sprintf("Pool %s, which holds this clone, will be refreshed anyway %s (retrieval.busyPool). The clone keeps working on its own data; reset it to a newer snapshot or destroy it to release the pool.", f.Pool, when)
}

// PendingForcedRefresh is the refresh waiting for a busy pool that
// retrieval.busyPool will force, if any. A nil Retriever has none.
func (r *Retriever) PendingForcedRefresh() (ForcedRefresh, bool) {
	if r == nil {
		return ForcedRefresh{}, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.forced == nil {
		return ForcedRefresh{}, false
	}
	return *r.forced, true
}

// forcedAtLocked dates the forced refresh after a skip at now (see
// ForcedRefresh.At); r.mu is held.
func (r *Retriever) forcedAtLocked(now time.Time) time.Time {
	bp := r.cfg.BusyPool
	var at time.Time
	if bp.ForceAfterMinutes > 0 {
		at = r.busySince.Add(time.Duration(bp.ForceAfterMinutes) * time.Minute)
		if r.sched != nil {
			// The first scheduled run at or after the warning period's end.
			at = r.sched.Next(at.Add(-time.Second))
		}
	}
	if bp.ForceAfterRetries > 0 && r.sched != nil {
		// The attempt once busySkips reaches the limit: the remaining
		// skipped runs, then the one that forces.
		t := now
		for range max(bp.ForceAfterRetries-r.busySkips, 0) + 1 {
			t = r.sched.Next(t)
		}
		if at.IsZero() || t.Before(at) {
			at = t
		}
	}
	return at
}

// deadlineData is the payload of clone.refresh_deadline.
type deadlineData struct {
	RefreshForcedAt time.Time `json:"refreshForcedAt,omitzero"`
	SkipsLeft       int       `json:"skipsLeft"`
}

// announceDeadline emits clone.refresh_deadline for each clone on pool,
// once per deadline: a later skip that keeps the same deadline is quiet.
func (r *Retriever) announceDeadline(ctx context.Context, pool string) {
	r.mu.Lock()
	f := r.forced
	if f == nil || f.Pool != pool {
		r.mu.Unlock()
		return
	}
	key := f.Pool + "@" + f.At.UTC().Format(time.RFC3339)
	if f.At.IsZero() {
		key = f.Pool + "@count"
	}
	if r.announced == key {
		r.mu.Unlock()
		return
	}
	r.announced = key
	fr := *f
	r.mu.Unlock()
	for _, p := range r.pools {
		if p.Name() != pool {
			continue
		}
		clones, err := p.Clones(ctx)
		if err != nil {
			r.log.Warn("listing the busy pool's clones to tell them the refresh deadline failed", "pool", pool, "err", err)
			return
		}
		for _, c := range clones {
			r.events.Emit(events.Event{Kind: events.CloneRefreshDeadline, Severity: events.Warning, Pool: pool, Clone: c.Name, Message: fr.Message()}.
				WithData(deadlineData{RefreshForcedAt: fr.At, SkipsLeft: fr.SkipsLeft}))
		}
	}
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
