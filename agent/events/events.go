// Package events is the agent's one place where things that happened are
// announced: clone, snapshot and retrieval changes, alerts and usage.
// Producers call Bus.Emit; subscribers (the platform tunnel, logs, later
// notifications) attach with Bus.Subscribe. The bus keeps nothing: a
// subscriber that must not lose events (the tunnel) keeps its own journal.
package events

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"sync"
	"time"
)

// Kind names an event. Names are stable: the platform and notification
// rules match on them.
type Kind string

// The events the agent emits.
const (
	CloneCreating  Kind = "clone.creating"
	CloneReady     Kind = "clone.ready"
	CloneFailed    Kind = "clone.failed"
	CloneReset     Kind = "clone.reset"
	CloneDestroyed Kind = "clone.destroyed"
	CloneProtected Kind = "clone.protected" // protection changed (on or off)
	// CloneProtectionExpiring is sent once per protection, within
	// cloning.protectionExpiryWarningMinutes of its end, for the owner to
	// extend it; CloneProtectionExpired when it ended.
	CloneProtectionExpiring Kind = "clone.protection_expiring"
	CloneProtectionExpired  Kind = "clone.protection_expired"
	// CloneRefreshDeadline tells a clone's owner that the pool the clone
	// lives on will be refreshed anyway (retrieval.busyPool), and when:
	// once per clone and deadline.
	CloneRefreshDeadline Kind = "clone.refresh_deadline"

	SnapshotCreated Kind = "snapshot.created"
	SnapshotDeleted Kind = "snapshot.deleted"

	RetrievalStarted  Kind = "retrieval.started"
	RetrievalFinished Kind = "retrieval.finished"
	RetrievalFailed   Kind = "retrieval.failed"
	RefreshStarted    Kind = "refresh.started"
	RefreshFinished   Kind = "refresh.finished"
	RefreshSkipped    Kind = "refresh.skipped" // all pools busy, policy forbids forcing
	LagHigh           Kind = "replication.lag_high"

	// Health is a periodic summary of the agent's state.
	Health Kind = "agent.health"
	// Usage carries usage samples (clone-seconds, bytes per clone and pool).
	Usage Kind = "usage.sample"
	// Metrics carries host, pool and clone resource samples (agent/monitor).
	Metrics Kind = "agent.metrics"
)

// Severity orders events for notification rules.
type Severity string

// Severities, lowest first.
const (
	Info    Severity = "info"
	Warning Severity = "warning"
	Error   Severity = "error"
)

// Event is one thing that happened. ID is unique per event (random, set by
// Emit when empty) so that a receiver can drop a redelivered event.
type Event struct {
	ID       string          `json:"id"`
	Time     time.Time       `json:"time"`
	Kind     Kind            `json:"kind"`
	Severity Severity        `json:"severity"`
	Pool     string          `json:"pool,omitempty"`
	Clone    string          `json:"clone,omitempty"`
	Snapshot string          `json:"snapshot,omitempty"`
	Message  string          `json:"message,omitempty"`
	Data     json.RawMessage `json:"data,omitempty"`
}

// WithData returns e with v marshalled into Data. It panics on a value
// that cannot be marshalled: event payloads are the agent's own types.
func (e Event) WithData(v any) Event {
	b, err := json.Marshal(v)
	if err != nil {
		panic("events: payload does not marshal: " + err.Error())
	}
	e.Data = b
	return e
}

// Subscriber receives events in emission order. It is called synchronously
// by Emit, so it must return quickly (queue, never block on the network).
type Subscriber func(Event)

// Bus fans events out to subscribers. The zero value is ready; a nil *Bus
// drops everything, so components can take an optional bus.
type Bus struct {
	mu   sync.Mutex
	next int
	subs map[int]Subscriber
	now  func() time.Time
}

// NewBus returns an empty bus.
func NewBus() *Bus { return &Bus{} }

// Subscribe attaches fn and returns the function that detaches it.
func (b *Bus) Subscribe(fn Subscriber) (cancel func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.subs == nil {
		b.subs = map[int]Subscriber{}
	}
	id := b.next
	b.next++
	b.subs[id] = fn
	return func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		delete(b.subs, id)
	}
}

// Emit fills in ID, Time and Severity when empty and hands e to every
// subscriber. Emission is serialised, so subscribers see one order.
func (b *Bus) Emit(e Event) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if e.ID == "" {
		e.ID = newID()
	}
	if e.Time.IsZero() {
		if b.now != nil {
			e.Time = b.now()
		} else {
			e.Time = time.Now().UTC()
		}
	}
	if e.Severity == "" {
		e.Severity = Info
	}
	for _, fn := range b.subs {
		fn(e)
	}
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b[:])
}
