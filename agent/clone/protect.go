package clone

import (
	"fmt"
	"maps"
	"math"
	"time"

	"github.com/thinlab/thinlab/agent/events"
)

// UpdateProtection protects or unprotects a clone. durationMinutes nil
// means the configured lease, 0 no expiry; both are capped by the
// configured maximum.
func (m *Manager) UpdateProtection(id string, protected bool, durationMinutes *uint) (Clone, error) {
	m.mu.Lock()
	rec, ok := m.clones[id]
	if !ok {
		m.mu.Unlock()
		return Clone{}, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	rec.Protected = protected
	rec.ProtectedTill = time.Time{}
	rec.ExpiryWarned = false // a new protection, a new warning
	if protected {
		rec.ProtectedTill = m.protectionTill(m.now(), durationMinutes)
	} else {
		// Idle time starts over: unprotecting must not delete a clone that
		// sat idle under protection the very next minute.
		rec.LastActivity = m.now()
	}
	m.changedLocked()
	view := m.view(rec)
	spec := *rec
	m.mu.Unlock()
	if err := m.save(); err != nil {
		return Clone{}, err
	}
	m.bus().Emit(cloneEvent(events.CloneProtected, spec, events.Info, "").WithData(protectionData{Protected: protected, Till: view.ProtectedTill}))
	m.log.Info("clone protection changed", "clone", id, "protected", protected, "till", view.ProtectedTill)
	return view, nil
}

// SetLabels replaces a clone's labels (validated as at creation).
func (m *Manager) SetLabels(id string, set map[string]string) (Clone, error) {
	if err := validateLabels(set); err != nil {
		return Clone{}, err
	}
	m.mu.Lock()
	rec, ok := m.clones[id]
	if !ok {
		m.mu.Unlock()
		return Clone{}, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	rec.Labels = maps.Clone(set)
	m.changedLocked()
	view := m.view(rec)
	m.mu.Unlock()
	if err := m.save(); err != nil {
		return Clone{}, err
	}
	m.log.Info("clone labels changed", "clone", id, "labels", len(set))
	return view, nil
}

// protectionTill turns a requested duration into an expiry: nil means the
// configured lease, 0 no expiry; both are capped by the configured maximum.
func (m *Manager) protectionTill(now time.Time, minutes *uint) time.Time {
	d := m.cfg.Cloning.ProtectionLeaseDurationMinutes
	if minutes != nil {
		d = *minutes
	}
	if max := m.cfg.Cloning.ProtectionMaxDurationMinutes; max > 0 && (d == 0 || d > max) {
		d = max
	}
	if d == 0 {
		return time.Time{}
	}
	return now.Add(inMinutes(d))
}

func (m *Manager) protectedNow(r *record, now time.Time) bool {
	return r.Protected && (r.ProtectedTill.IsZero() || now.Before(r.ProtectedTill))
}

// inMinutes converts a configured or requested number of minutes, capped so
// that an absurd value means "practically never" instead of overflowing
// into the past.
func inMinutes(n uint) time.Duration {
	const maxMinutes = uint(math.MaxInt64 / int64(time.Minute))
	return time.Duration(min(n, maxMinutes)) * time.Minute
}
