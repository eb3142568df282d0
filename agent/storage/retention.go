package storage

import (
	"context"
	"fmt"
)

// Retain deletes the oldest snapshots of p so that at most keep remain,
// never deleting a snapshot that a clone depends on (those count towards
// keep but are skipped). It returns the IDs it deleted.
func Retain(ctx context.Context, p Pool, keep int) ([]string, error) {
	if keep < 1 {
		return nil, fmt.Errorf("retention: keep must be at least 1, got %d", keep)
	}
	snaps, err := p.Snapshots(ctx) // newest first
	if err != nil {
		return nil, err
	}
	var deleted []string
	remaining := len(snaps)
	for i := len(snaps) - 1; i >= 0 && remaining > keep; i-- {
		s := snaps[i]
		if len(s.Clones) > 0 {
			continue
		}
		if err := p.DestroySnapshot(ctx, s.ID, false); err != nil {
			return deleted, fmt.Errorf("retention: delete %s: %w", s.ID, err)
		}
		deleted = append(deleted, s.ID)
		remaining--
	}
	return deleted, nil
}
