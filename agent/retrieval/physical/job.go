package physical

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/agent/retrieval/job"
	"github.com/thinlab/thinlab/agent/storage"
)

// Job adapts physical retrieval to the retrieval core (agent/retrieval):
// a refresh (job.Job.Run) is a first copy into the pool, the standby's
// start and a first snapshot cycle, whose snapshot it returns. Recover,
// which the core calls once per pool at start, removes what a killed
// agent left of a cycle, starts the standby again if it does not run, and
// starts the pool's continuous part: snapshot cycles on
// retrieval.physical.snapshotSchedule and the lag check.
type Job struct {
	cfg    config.Retrieval
	log    *slog.Logger
	events *events.Bus

	mu sync.Mutex
	r  map[string]*Retriever // by pool name
}

var (
	_ job.Job       = (*Job)(nil)
	_ job.Recoverer = (*Job)(nil)
	_ job.Reporter  = (*Job)(nil)
)

// NewJob builds the job for retrieval.mode physical.
func NewJob(cfg config.Retrieval, log *slog.Logger) (*Job, error) {
	if log == nil {
		log = slog.Default()
	}
	return &Job{cfg: cfg, log: log, r: map[string]*Retriever{}}, nil
}

// SetEvents gives the job the agent's event bus (before any Run or
// Recover).
func (j *Job) SetEvents(b *events.Bus) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.events = b
}

// Mode implements job.Job.
func (j *Job) Mode() string { return Mode }

// retriever is the pool's Retriever, made on first use.
func (j *Job) retriever(t job.Target) (*Retriever, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if r, ok := j.r[t.Pool.Name()]; ok {
		return r, nil
	}
	log := t.Logger
	if log == nil {
		log = j.log
	}
	// Target.BinDir is <root>/<major>/bin: the root finds each data
	// directory's own major version.
	root := ""
	if t.BinDir != "" {
		root = filepath.Dir(filepath.Dir(t.BinDir))
	}
	r, err := New(Options{Retrieval: j.cfg, Pool: t.Pool, User: t.User, BinRoot: root, Logger: log, Events: j.events})
	if err != nil {
		return nil, err
	}
	j.r[t.Pool.Name()] = r
	return r, nil
}

// Run implements job.Job.
func (j *Job) Run(ctx context.Context, t job.Target) (job.Outcome, error) {
	r, err := j.retriever(t)
	if err != nil {
		return job.Outcome{}, err
	}
	t.Progress.Phase("copy", "", 0)
	if err := r.Refresh(ctx); err != nil {
		return job.Outcome{}, err
	}
	t.Progress.Phase("snapshot", "", 0)
	snap, err := r.SnapshotCycle(ctx)
	if errors.Is(err, ErrNoNewData) {
		return job.Outcome{}, fmt.Errorf("the new copy holds no transaction after the newest snapshot (%w): nothing to snapshot", err)
	}
	if err != nil {
		return job.Outcome{}, err
	}
	return job.Outcome{DataStateAt: snap.DataStateAt, Snapshot: &snap}, nil
}

// Recover implements job.Recoverer.
func (j *Job) Recover(ctx context.Context, t job.Target) error {
	r, err := j.retriever(t)
	if err != nil {
		return err
	}
	return r.Start(ctx)
}

// Status is the physical state of a pool (standby lag, alerts, the last
// snapshot cycle); ok is false for a pool the job never saw.
func (j *Job) Status(pool storage.Pool) (Status, bool) {
	j.mu.Lock()
	r, ok := j.r[pool.Name()]
	j.mu.Unlock()
	if !ok {
		return Status{}, false
	}
	return r.Status(), true
}

// Retriever is the pool's physical retrieval, once the job has seen the
// pool (ok false before).
func (j *Job) Retriever(pool string) (*Retriever, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	r, ok := j.r[pool]
	return r, ok
}

// Alerts are the pool's physical alerts (lag_high, source_unreachable,
// snapshot_failed, refresh_failed), for the core's status.
func (j *Job) Alerts(pool storage.Pool) map[string]Alert {
	st, ok := j.Status(pool)
	if !ok {
		return nil
	}
	return st.Alerts
}

// Report implements job.Reporter: the standby's replay lag and the
// pool's physical alerts.
func (j *Job) Report(pool storage.Pool) (job.Report, bool) {
	st, ok := j.Status(pool)
	if !ok {
		return job.Report{}, false
	}
	rep := job.Report{Alerts: map[string]job.Alert{}}
	for k, a := range st.Alerts {
		rep.Alerts[k] = job.Alert(a)
	}
	if l := st.Lag; !l.CheckedAt.IsZero() {
		rep.Lag = &job.Lag{Kind: job.LagStandby, Seconds: l.Seconds, Bytes: l.Bytes, CheckedAt: l.CheckedAt, SourceReachable: l.SourceReachable}
	}
	return rep, true
}

// Close stops every pool's schedule and lag check; the standbys keep
// running.
func (j *Job) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, r := range j.r {
		_ = r.Close() // never fails
	}
	return nil
}
