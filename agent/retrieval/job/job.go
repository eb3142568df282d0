// Package job is the contract between the retrieval core (agent/retrieval)
// and a retrieval mode (agent/retrieval/logical, agent/retrieval/physical).
//
// The core owns everything around a refresh: the schedule and on-demand
// requests, "never two refreshes at once", choosing the pool to fill,
// events, status and alerts, and retention. A mode owns how data gets into
// the pool's main dataset. The core calls Job.Run once per refresh; the
// mode fills Target.Pool.MainDir()/storage.DataSubdir and either leaves a
// cleanly stopped PGDATA there for the core to snapshot, or (physical,
// which promotes a throwaway copy of a running standby) takes the snapshot
// itself and returns it in Outcome.Snapshot.
//
// A mode plugs in by one case in agent/retrieval's newJob (keyed by
// retrieval.mode). This package imports no mode and not the core, so both
// sides depend only on it.
package job

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

// Job fills a pool for one refresh.
type Job interface {
	// Mode is the retrieval mode's name as the API reports it: "logical"
	// or "physical".
	Mode() string
	// Run fills t.Pool. On error the core records the failure; the pool's
	// existing snapshots must stay intact (a mode never touches them, only
	// the main dataset). Run must stop every process it started before it
	// returns, also when ctx is cancelled.
	Run(ctx context.Context, t Target) (Outcome, error)
}

// Recoverer is optionally implemented by a Job that must clean up after a
// refresh the agent did not finish (killed mid-refresh): the core calls
// Recover for every pool the job may have been filling, once, when the
// retriever starts and before any refresh.
type Recoverer interface {
	Recover(ctx context.Context, t Target) error
}

// ErrNoNewData is returned by Run (wrapped) when the pool holds nothing
// newer than its newest snapshot, so a snapshot would repeat it: the core
// records a skip, not a failure.
var ErrNoNewData = errors.New("no new data since the newest snapshot")

// Reporter is optionally implemented by a Job whose pool keeps changing
// between refreshes (physical's standby, logical replication's
// subscription): its lag and alerts join the core's status.
type Reporter interface {
	Report(pool storage.Pool) (Report, bool)
}

// Report is a continuously updated pool's state; ok false from Reporter
// means the job never saw the pool.
type Report struct {
	// Lag is nil until first measured.
	Lag    *Lag
	Alerts map[string]Alert
}

// Lag kinds.
const (
	LagStandby      = "standby"
	LagSubscription = "subscription"
)

// Lag is how far the pool's copy is behind the source.
type Lag struct {
	// Kind is LagStandby or LagSubscription.
	Kind string
	// Seconds and Bytes behind the source (0 when caught up).
	Seconds float64
	Bytes   int64
	// CheckedAt is when it was measured.
	CheckedAt time.Time
	// SourceReachable is false when the source could not be asked: Bytes
	// is then what the copy received but did not apply yet, Seconds the
	// time since its last known position.
	SourceReachable bool
}

// Alert is one kind of problem a Reporter saw (the API's alert shape).
type Alert struct {
	Level    string
	Message  string
	LastSeen time.Time
	Count    int
}

// Target is what the core hands to a Job for one refresh.
type Target struct {
	// Pool is the pool to fill. Its main dataset (MainDir) is the job's
	// to overwrite; its snapshots and clones are not.
	Pool storage.Pool
	// BinDir is the newest installed PostgreSQL's bin directory
	// (provision.pgBinRoot): pg_dump must not be older than the source.
	BinDir string
	// User is the unprivileged OS user (provision.osUser) every tool and
	// postgres runs as; nothing a job starts runs as root.
	User pgcluster.OSUser
	// NotBefore is the earliest DataStateAt the new snapshot may have:
	// snapshot IDs have second precision, so it is after the newest
	// existing snapshot's DataStateAt. A job waits (or fails) rather than
	// return an earlier one.
	NotBefore time.Time
	// Progress receives the job's progress; never nil.
	Progress *Progress
	Logger   *slog.Logger
}

// Outcome describes a finished Run.
type Outcome struct {
	// DataStateAt is the moment the data reflects (second precision):
	// the dump's start for logical, the last replayed transaction for
	// physical. It becomes the snapshot's DataStateAt.
	DataStateAt time.Time
	// Databases copied (informational).
	Databases []string
	// Bytes moved from the source (informational).
	Bytes int64
	// Snapshot is set when the job took the snapshot itself; otherwise
	// the core snapshots the pool's main dataset with DataStateAt.
	Snapshot *storage.Snapshot
}

// Progress units.
const (
	UnitBytes     = "bytes"
	UnitRelations = "relations"
	UnitSteps     = "steps" // pre-processing SQL files and scripts
)

// Progress is a running job's progress, updated by the job and read by
// the core for the status. A nil *Progress ignores updates.
type Progress struct {
	mu sync.Mutex
	st ProgressState
}

// ProgressState is one reading of a Progress.
type ProgressState struct {
	// Phase says what the job does now ("dump", "restore", "preprocess").
	Phase string
	// Unit is UnitBytes or UnitRelations; Done counts it, Total is 0 when
	// unknown.
	Unit        string
	Done, Total int64
	// PhaseStarted is when Phase began (for the rate).
	PhaseStarted time.Time
}

// Rate is Done per second since the phase started (0 when unknown).
func (s ProgressState) Rate(now time.Time) float64 {
	el := now.Sub(s.PhaseStarted).Seconds()
	if s.PhaseStarted.IsZero() || el <= 0 {
		return 0
	}
	return float64(s.Done) / el
}

// Phase starts a new phase measured in unit with total (0 if unknown).
func (p *Progress) Phase(phase, unit string, total int64) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.st = ProgressState{Phase: phase, Unit: unit, Total: total, PhaseStarted: time.Now()}
}

// Add counts n more units done.
func (p *Progress) Add(n int64) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.st.Done += n
}

// AddTotal raises the total by n (work discovered on the way).
func (p *Progress) AddTotal(n int64) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.st.Total += n
}

// State reads the progress.
func (p *Progress) State() ProgressState {
	if p == nil {
		return ProgressState{}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st
}
