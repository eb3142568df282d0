package clone

import (
	"time"

	"github.com/thinlab/thinlab/agent/events"
)

// emit announces a clone's lifecycle step on the bus (nothing without one).
func (m *Manager) emit(kind events.Kind, r record, sev events.Severity, msg string) {
	if r.Warm {
		return // not a user's clone
	}
	m.bus().Emit(cloneEvent(kind, r, sev, msg))
}

// bus is the manager's event bus; a nil *events.Bus drops everything.
func (m *Manager) bus() *events.Bus { return m.events }

func cloneEvent(kind events.Kind, r record, sev events.Severity, msg string) events.Event {
	return events.Event{Kind: kind, Severity: sev, Pool: r.Pool, Clone: r.ID, Snapshot: r.SnapshotID, Message: msg}
}

// protectionData is the payload of clone.protected.
type protectionData struct {
	Protected bool      `json:"protected"`
	Till      time.Time `json:"till,omitzero"`
}
