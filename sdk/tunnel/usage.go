package tunnel

import "time"

// EventKindUsage is the kind of the agent's usage sample events; their
// Data is a UsageSample and their ID is fixed by the sample's period, so
// a sample sent again after a reconnect has the same ID.
const EventKindUsage = "usage.sample"

// UsageSample is what an agent used in the period [From, To): the wire
// form of the agent's usage sampler (agent/usage.Sample).
type UsageSample struct {
	From   time.Time          `json:"from"`
	To     time.Time          `json:"to"`
	Clones []UsageCloneSample `json:"clones"`
	Pools  []UsagePool        `json:"pools"`
}

// UsageCloneSample is one clone's use in a sample period.
type UsageCloneSample struct {
	ID   string `json:"id"`
	Pool string `json:"pool"`
	// Seconds the clone existed (running or being reset) in the period.
	Seconds float64 `json:"seconds"`
	// DiffBytes is the space the clone has written (what it costs on
	// disk); LogicalBytes the size of its data as a full copy.
	DiffBytes    uint64 `json:"diffBytes"`
	LogicalBytes uint64 `json:"logicalBytes,omitempty"`
	// CloningSeconds is how long the clone took to be made.
	CloningSeconds float64 `json:"cloningSeconds,omitempty"`
	Destroyed      bool    `json:"destroyed,omitempty"`
}

// UsagePool is one pool's state at the end of a sample period.
type UsagePool struct {
	Name      string `json:"Name"`
	SizeBytes uint64 `json:"SizeBytes"`
	UsedBytes uint64 `json:"UsedBytes"`
	FreeBytes uint64 `json:"FreeBytes"`
	Snapshots int    `json:"Snapshots"`
	Clones    int    `json:"Clones"`
}
