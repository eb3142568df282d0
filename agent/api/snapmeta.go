package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// snapshotMetaFile holds snapshot protection and scheduled deletion in the
// agent's state directory. The storage pools know nothing of either: they
// are API policy, like clone protection.
const snapshotMetaFile = "snapshots.json"

// snapshotMeta is what PATCH /snapshot/{id} sets.
type snapshotMeta struct {
	Protected bool `json:"protected,omitempty"`
	// ProtectedTill ends the protection; zero means no expiry.
	ProtectedTill time.Time `json:"protectedTill,omitzero"`
	// DeleteAt schedules the snapshot's deletion; zero means never.
	DeleteAt time.Time `json:"deleteAt,omitzero"`
}

// protectedAt reports whether the protection holds at now.
func (m snapshotMeta) protectedAt(now time.Time) bool {
	return m.Protected && (m.ProtectedTill.IsZero() || now.Before(m.ProtectedTill))
}

// snapshotStore persists snapshotMeta by snapshot ID.
type snapshotStore struct {
	dir string
	mu  sync.Mutex
	m   map[string]snapshotMeta
}

func loadSnapshotStore(dir string) (*snapshotStore, error) {
	s := &snapshotStore{dir: dir, m: map[string]snapshotMeta{}}
	if dir == "" {
		return s, nil
	}
	raw, err := os.ReadFile(filepath.Join(dir, snapshotMetaFile))
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read snapshot protection state: %w", err)
	}
	if err := json.Unmarshal(raw, &s.m); err != nil {
		return nil, fmt.Errorf("read snapshot protection state %s: %w", filepath.Join(dir, snapshotMetaFile), err)
	}
	return s, nil
}

func (s *snapshotStore) get(id string) snapshotMeta {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[id]
}

func (s *snapshotStore) all() map[string]snapshotMeta {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]snapshotMeta, len(s.m))
	for k, v := range s.m {
		out[k] = v
	}
	return out
}

// set stores meta for id (removing the entry when meta is empty) and
// writes the file atomically.
func (s *snapshotStore) set(id string, meta snapshotMeta) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, had := s.m[id]
	if meta == (snapshotMeta{}) {
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

func (s *snapshotStore) writeLocked() error {
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
	tmp := filepath.Join(s.dir, snapshotMetaFile+".tmp")
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		return fmt.Errorf("write snapshot protection state: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, snapshotMetaFile)); err != nil {
		return fmt.Errorf("write snapshot protection state: %w", err)
	}
	return nil
}
