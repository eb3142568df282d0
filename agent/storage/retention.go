package storage

import (
	"context"
	"errors"
	"fmt"
)

// LabelTransient marks a snapshot that exists only during one operation
// (physical retrieval's temporary snapshot of the running standby, which
// the operation itself removes): retention neither counts nor deletes it.
const LabelTransient = "thinlab.transient"

// Retain deletes the oldest snapshots of p so that at most keep remain. It
// never deletes a snapshot that a clone depends on, nor one for which
// keepAlso (when not nil) reports true, e.g. a protected one: those count
// towards keep but are skipped. Snapshots of clones (branch commits,
// Snapshot.OfClone) are no part of it. It returns the IDs it deleted, also when it
// stops at an error.
func Retain(ctx context.Context, p Pool, keep int, keepAlso func(Snapshot) bool) ([]string, error) {
	if keep < 1 {
		return nil, fmt.Errorf("retention: keep must be at least 1, got %d", keep)
	}
	all, err := p.Snapshots(ctx) // newest first
	if err != nil {
		return nil, err
	}
	snaps := make([]Snapshot, 0, len(all))
	for _, s := range all {
		if s.Labels[LabelTransient] == "" && !s.OfClone() {
			snaps = append(snaps, s)
		}
	}
	var deleted []string
	remaining := len(snaps)
	for i := len(snaps) - 1; i >= 0 && remaining > keep; i-- {
		s := snaps[i]
		if len(s.Clones) > 0 || (keepAlso != nil && keepAlso(s)) {
			continue
		}
		err := p.DestroySnapshot(ctx, s.ID, false)
		switch {
		case errors.Is(err, ErrHasDependents):
			// A clone made since the listing keeps its snapshot.
			continue
		case errors.Is(err, ErrNotFound):
			// Deleted meanwhile by someone else.
			remaining--
			continue
		}
		if err != nil {
			return deleted, fmt.Errorf("retention: delete %s: %w", s.ID, err)
		}
		deleted = append(deleted, s.ID)
		remaining--
	}
	return deleted, nil
}
