package snapshot

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// MetaFile holds snapshot protection and scheduled deletion in the agent's
// state directory. The storage pools know nothing of either: they are the
// agent's policy, like clone protection.
const MetaFile = "snapshots.json"

// Meta is what PATCH /snapshot/{id} sets.
type Meta struct {
	Protected bool `json:"protected,omitempty"`
	// ProtectedTill ends the protection; zero means no expiry.
	ProtectedTill time.Time `json:"protectedTill,omitzero"`
	// DeleteAt schedules the snapshot's deletion; zero means never.
	DeleteAt time.Time `json:"deleteAt,omitzero"`
	// Labels are the snapshot's key=value labels.
	Labels map[string]string `json:"labels,omitempty"`
}

func (m Meta) empty() bool {
	return !m.Protected && m.ProtectedTill.IsZero() && m.DeleteAt.IsZero() && len(m.Labels) == 0
}

// ProtectedAt reports whether the protection holds at now.
func (m Meta) ProtectedAt(now time.Time) bool {
	return m.Protected && (m.ProtectedTill.IsZero() || now.Before(m.ProtectedTill))
}

// store persists Meta by snapshot ID in dir/MetaFile.
type store struct {
	dir string
	mu  sync.Mutex
	m   map[string]Meta
}

func loadStore(dir string) (*store, error) {
	s := &store{dir: dir, m: map[string]Meta{}}
	if dir == "" {
		return s, nil
	}
	raw, err := os.ReadFile(filepath.Join(dir, MetaFile)) //nolint:gosec // G304: the agent's own state directory, from its config
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read snapshot protection state: %w", err)
	}
	if err := json.Unmarshal(raw, &s.m); err != nil {
		return nil, fmt.Errorf("read snapshot protection state %s: %w", filepath.Join(dir, MetaFile), err)
	}
	return s, nil
}

func (s *store) get(id string) Meta {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[id]
}

func (s *store) all() map[string]Meta {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]Meta, len(s.m))
	maps.Copy(out, s.m)
	return out
}

// set stores meta for id (removing the entry when meta is empty) and
// writes the file atomically; on failure the previous entry stays.
func (s *store) set(id string, meta Meta) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, had := s.m[id]
	if meta.empty() {
		delete(s.m, id)
	} else {
		s.m[id] = meta
	}
	if err := s.writeLocked(); err != nil {
		if had {
			s.m[id] = old
		} else {
			delete(s.m, id)
		}
		return err
	}
	return nil
}

func (s *store) writeLocked() error {
	if s.dir == "" {
		return errors.New("no stateDir configured: snapshot protection cannot be saved")
	}
	raw, err := json.MarshalIndent(s.m, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("stateDir: %w", err)
	}
	tmp := filepath.Join(s.dir, MetaFile+".tmp")
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		return fmt.Errorf("write snapshot protection state: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, MetaFile)); err != nil {
		return fmt.Errorf("write snapshot protection state: %w", err)
	}
	return nil
}
