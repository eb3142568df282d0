package clone

import (
	"fmt"
	"maps"
	"slices"
)

// changedLocked records a change: wakes waiters and bumps the version the
// state file must reach.
func (m *Manager) changedLocked() {
	m.version++
	close(m.changed)
	m.changed = make(chan struct{})
}

// save writes the current state if it is newer than what is on disk.
func (m *Manager) save() error {
	m.saveMu.Lock()
	defer m.saveMu.Unlock()
	m.mu.Lock()
	ver := m.version
	if ver <= m.savedVer && m.savedVer != 0 {
		m.mu.Unlock()
		return nil
	}
	recs := m.recordsLocked("", nil)
	m.mu.Unlock()
	if err := m.write(recs); err != nil {
		return err
	}
	m.savedVer = ver
	return nil
}

// recordsLocked copies every record for the state file, with next in place
// of the record of id when next is set.
func (m *Manager) recordsLocked(id string, next *record) []*record {
	recs := make([]*record, 0, len(m.clones))
	for cid, r := range m.clones {
		c := *r
		if cid == id && next != nil {
			c = *next
		}
		c.ExtraConf = maps.Clone(c.ExtraConf)
		recs = append(recs, &c)
	}
	slices.SortFunc(recs, func(a, b *record) int { return a.CreatedAt.Compare(b.CreatedAt) })
	return recs
}

func (m *Manager) write(recs []*record) error {
	if err := writeState(m.cfg.StateDir, recs); err != nil {
		m.log.Error("could not write clone state", "dir", m.cfg.StateDir, "err", err)
		return fmt.Errorf("write clone state: %w", err)
	}
	return nil
}

// update changes one record and persists the change. The change is written
// to the state file before anyone can see it: a client told "OK" must find
// the clone OK after a kill -9 of the agent, not half-created. It reports
// false if the clone is gone.
func (m *Manager) update(id string, f func(r *record)) bool {
	m.saveMu.Lock()
	m.mu.Lock()
	r, ok := m.clones[id]
	if !ok {
		m.mu.Unlock()
		m.saveMu.Unlock()
		return false
	}
	next := *r
	next.ExtraConf = maps.Clone(r.ExtraConf)
	f(&next)
	recs := m.recordsLocked(id, &next)
	before := m.version
	m.mu.Unlock()
	written := m.write(recs) == nil

	m.mu.Lock()
	// Other fields may have changed meanwhile (they are saved by their own
	// writer), so f is applied to the live record rather than copying next.
	if cur, ok := m.clones[id]; ok {
		f(cur)
	}
	m.changedLocked()
	behind := m.version != before+1
	if written && !behind {
		m.savedVer = m.version
	}
	m.mu.Unlock()
	m.saveMu.Unlock()
	if behind || !written {
		_ = m.save() // save logs a failure, and the next change writes the state again
	}
	return ok
}

func (m *Manager) remove(id string) {
	m.mu.Lock()
	delete(m.clones, id)
	m.changedLocked()
	m.mu.Unlock()
	_ = m.save() // save logs a failure, and the next change writes the state again
}
