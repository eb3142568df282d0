// Package retrieval is the retrieval core: it fills a pool with data on a
// schedule and on demand, one refresh at a time, and reports status,
// progress and events. How data gets into the pool is a mode's business:
// a job.Job (agent/retrieval/job) chosen by retrieval.mode in newJob,
// today agent/retrieval/logical; the physical mode plugs in the same way.
package retrieval

import (
	"errors"
	"time"

	"github.com/thinlab/thinlab/agent/retrieval/job"
)

// Mode and status values, as DLE reports them.
const (
	ModeLogical = "logical"
	ModeUnknown = "unknown"

	StatusInactive   = "inactive"
	StatusRefreshing = "refreshing"
	StatusFinished   = "finished"
	StatusFailed     = "failed"
)

// Alert keys: a failed refresh (level "error"); a refresh skipped because
// another ran or no pool could take it (level "warning").
const (
	AlertRefreshFailed  = "refresh_failed"
	AlertRefreshSkipped = "refresh_skipped"
)

// ErrRefreshRunning is returned when a full refresh is requested while one
// runs.
var ErrRefreshRunning = errors.New("a refresh is already running")

// ErrNotConfigured is returned by FullRefresh when retrieval.mode is empty.
var ErrNotConfigured = errors.New("retrieval is not configured (set retrieval.mode and retrieval.source)")

// Alert is one kind of problem seen during retrieval.
type Alert struct {
	Level    string // "error" for refresh_failed
	Message  string
	LastSeen time.Time
	Count    int
}

// Status is what GET /status shows under "retrieving".
type Status struct {
	Mode   string
	Status string
	// LastRefresh is when the last successful refresh finished (zero if
	// never); NextRefresh the next scheduled one (zero if unscheduled).
	LastRefresh time.Time
	NextRefresh time.Time
	Alerts      map[string]Alert
	// SnapshotID is the snapshot the last successful refresh made.
	SnapshotID string
	// Job is the running refresh, nil when none runs.
	Job *JobStatus
	// Lag is how far a continuously updated pool (physical standby,
	// logical replication) is behind the source; nil otherwise or until
	// first measured.
	Lag *job.Lag
}

// JobStatus is a running refresh and its progress.
type JobStatus struct {
	Mode      string
	Pool      string
	StartedAt time.Time
	Progress  job.ProgressState
}
