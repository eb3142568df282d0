package tunnel

import "time"

// MetricsKind is the event kind of resource samples.
const MetricsKind = "agent.metrics"

// MetricsSample is the payload of an "agent.metrics" event: one sample
// of the agent's host, pools and clones (agent/monitor).
type MetricsSample struct {
	Time time.Time `json:"time"`
	// Seconds is the period the rates and percentages cover.
	Seconds float64 `json:"seconds"`
	CPUs    int     `json:"cpus"`
	// CPUPercent is the host's busy time over all CPUs (0-100); IOWait
	// the share spent waiting for disks.
	CPUPercent        float64        `json:"cpuPercent"`
	IOWaitPercent     float64        `json:"ioWaitPercent"`
	Load1             float64        `json:"load1"`
	MemTotalBytes     uint64         `json:"memTotalBytes"`
	MemAvailableBytes uint64         `json:"memAvailableBytes"`
	Pools             []PoolMetrics  `json:"pools"`
	Clones            []CloneMetrics `json:"clones"`
}

// PoolMetrics is one pool: its space, and the IO of the block device it
// is on (absent when the pool has no block device of its own, as a ZFS
// pool).
type PoolMetrics struct {
	Name           string   `json:"name"`
	SizeBytes      uint64   `json:"sizeBytes"`
	UsedBytes      uint64   `json:"usedBytes"`
	FreeBytes      uint64   `json:"freeBytes"`
	Device         string   `json:"device,omitempty"`
	IOUtilPercent  *float64 `json:"ioUtilPercent,omitempty"`
	ReadBytesPerS  float64  `json:"readBytesPerS,omitempty"`
	WriteBytesPerS float64  `json:"writeBytesPerS,omitempty"`
}

// CloneMetrics is one clone: CPU in percent of one CPU (200 = two busy
// CPUs), proportional set size of its processes, client connections.
type CloneMetrics struct {
	ID          string  `json:"id"`
	Pool        string  `json:"pool"`
	CPUPercent  float64 `json:"cpuPercent"`
	MemoryBytes uint64  `json:"memoryBytes"`
	Connections int     `json:"connections"`
}
