package clone

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

func (m *Manager) view(r *record) Clone {
	now := m.now()
	c := Clone{
		ID:             r.ID,
		Pool:           r.Pool,
		SnapshotID:     r.SnapshotID,
		Branch:         r.Branch,
		Status:         r.Status,
		StatusMessage:  r.StatusMessage,
		Host:           m.cfg.Provision.AccessHost,
		Port:           r.Port,
		DBName:         r.DBName,
		Username:       r.Username,
		Restricted:     r.Restricted,
		Protected:      m.protectedNow(r, now),
		CreatedAt:      r.CreatedAt,
		MaxIdleMinutes: r.MaxIdle,
		CloningTime:    r.CloningTime,
		DiffSize:       r.diffSize,
		LogicalSize:    r.LogicalSize,
		ExtraConf:      maps.Clone(r.ExtraConf),
		Labels:         maps.Clone(r.Labels),
		UID:            r.UID,
		ReadOnly:       r.ReadOnly || r.ReplicaOf != "",
		ReplicaOf:      r.ReplicaOf,
		Hibernated:     r.Hibernated,
	}
	if r.PointInTime != nil {
		pit := *r.PointInTime
		c.PointInTime = &pit
	}
	for _, o := range m.clones {
		if o.ReplicaOf == r.ID {
			c.Replicas = append(c.Replicas, o.ID)
		}
	}
	slices.Sort(c.Replicas)
	if c.Protected {
		c.ProtectedTill = r.ProtectedTill
	}
	if r.Status == StatusOK && !c.Protected && r.MaxIdle > 0 {
		c.DeleteAt = r.LastActivity.Add(inMinutes(r.MaxIdle))
	}
	return c
}

// Get returns one clone.
func (m *Manager) Get(id string) (Clone, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.clones[id]
	if !ok || r.Warm {
		return Clone{}, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	return m.view(r), nil
}

// List returns all clones, newest first.
func (m *Manager) List() []Clone {
	m.mu.Lock()
	out := make([]Clone, 0, len(m.clones))
	for _, r := range m.clones {
		if r.Warm {
			continue
		}
		out = append(out, m.view(r))
	}
	m.mu.Unlock()
	slices.SortFunc(out, func(a, b Clone) int {
		if c := b.CreatedAt.Compare(a.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out
}

// Wait blocks until the clone is no longer being created, reset or
// deleted, and returns it (ErrNotFound once deleted).
func (m *Manager) Wait(ctx context.Context, id string) (Clone, error) {
	for {
		m.mu.Lock()
		r, ok := m.clones[id]
		if !ok {
			m.mu.Unlock()
			return Clone{}, fmt.Errorf("%w: %q", ErrNotFound, id)
		}
		if !transitional(r.Status) {
			c := m.view(r)
			m.mu.Unlock()
			return c, nil
		}
		ch := m.changed
		m.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return Clone{}, ctx.Err()
		}
	}
}

func transitional(s StatusCode) bool {
	return s == StatusCreating || s == StatusResetting || s == StatusDeleting
}

// ExpectedCloningTime is the mean cloning time of recent clones (the
// status endpoint's cloning.expectedCloningTime).
func (m *Manager) ExpectedCloningTime() time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.times) == 0 {
		return 0
	}
	var sum time.Duration
	for _, t := range m.times {
		sum += t
	}
	return sum / time.Duration(len(m.times))
}
