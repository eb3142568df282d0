package retrieval

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/agent/retrieval/job"
	"github.com/thinlab/thinlab/agent/retrieval/logical"
	"github.com/thinlab/thinlab/agent/retrieval/physical"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

// SnapshotMessage is the message of snapshots made by a refresh of mode.
func SnapshotMessage(mode string) string { return mode + " refresh" }

// Retention deletes a pool's snapshots beyond what the agent keeps
// (agent/snapshot's Policy); it logs each deletion itself.
type Retention interface {
	Retain(ctx context.Context, p storage.Pool) ([]string, error)
}

// Options configure a Retriever.
type Options struct {
	Config *config.Config
	// Pool is the pool named by retrieval.pool.
	Pool storage.Pool
	// Pools, with retrieval.pools, are the pools a refresh rotates
	// between (Pool is then unused).
	Pools  []storage.Pool
	Logger *slog.Logger
	// Retention, when set, runs after every successful refresh; its
	// errors are logged and never fail the refresh.
	Retention Retention
	// Events, when set, receives retrieval and refresh events.
	Events *events.Bus
	// Job, when set, replaces the job retrieval.mode selects (tests).
	Job job.Job
}

// newJob is the one place a retrieval mode plugs in: retrieval.mode
// selects the job.Job that fills the pool.
func newJob(cfg config.Retrieval, log *slog.Logger) (job.Job, error) {
	switch cfg.Mode {
	case logical.Mode:
		return logical.New(cfg, log)
	case physical.Mode:
		return physical.NewJob(cfg, log)
	}
	return nil, fmt.Errorf("retrieval.mode %q is not supported", cfg.Mode)
}

// Retriever runs refreshes, on demand and on the schedule: it owns the
// schedule, mutual exclusion, status, events and retention, and hands the
// filling of the pool to the mode's job.Job.
type Retriever struct {
	cfg    config.Retrieval
	job    job.Job
	pools  []storage.Pool // the pools a refresh may fill (one unless rotating)
	binDir string         // newest installed PostgreSQL (pg_dump must not be older than the source)
	user   pgcluster.OSUser
	log    *slog.Logger
	sched  cron.Schedule
	retain Retention
	events *events.Bus
	// stateDir keeps the marker of a running refresh (runningFile).
	stateDir string

	mu      sync.Mutex
	status  Status
	running bool
	before  string // the status before the running refresh (restored on a skip)
	// busySince and busySkips count refreshes skipped because every idle
	// pool had clones (retrieval.busyPool); reset when one runs.
	busySince time.Time
	busySkips int
	// forced is the refresh waiting for a busy pool that
	// retrieval.busyPool will force (nil when none); announced is the
	// deadline whose clone.refresh_deadline events went out.
	forced    *ForcedRefresh
	announced string
	// now is the clock of the busy-pool policy (time.Now; tests fix it).
	now      func() time.Time
	current  *JobStatus    // the running refresh, nil when none
	progress *job.Progress // its progress

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	cron   *cron.Cron
}

// ErrAllPoolsBusy is returned when every pool a refresh could fill still
// has clones and retrieval.busyPool does not force it yet.
var ErrAllPoolsBusy = errors.New("every idle pool still has clones")

// Result describes one finished refresh.
type Result struct {
	// Pool is the pool the refresh filled.
	Pool     string
	Snapshot storage.Snapshot
	// DumpStartedAt is the snapshot's DataStateAt: for logical, when
	// pg_dump started (second precision).
	DumpStartedAt time.Time
	Databases     []string
	// Bytes is the size of the data moved from the source.
	Bytes int64
}

// New builds a Retriever. With retrieval.mode empty it only reports
// status "inactive" and refuses refreshes.
func New(opt Options) (*Retriever, error) {
	if opt.Config == nil {
		return nil, errors.New("retrieval: no config")
	}
	log := opt.Logger
	if log == nil {
		log = slog.Default()
	}
	r := &Retriever{cfg: opt.Config.Retrieval, retain: opt.Retention, events: opt.Events, stateDir: opt.Config.StateDir, log: log.With("component", "retrieval"), now: time.Now}
	r.status = Status{Mode: ModeUnknown, Status: StatusInactive, Alerts: map[string]Alert{}}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	if r.cfg.Mode == "" {
		return r, nil
	}
	r.pools = opt.Pools
	if len(r.pools) == 0 && opt.Pool != nil {
		r.pools = []storage.Pool{opt.Pool}
	}
	if len(r.pools) == 0 {
		return nil, errors.New("retrieval: no pool to fill (retrieval.pool)")
	}
	r.job = opt.Job
	if r.job == nil {
		var err error
		if r.job, err = newJob(r.cfg, r.log); err != nil {
			return nil, err
		}
	}
	// A mode that emits events of its own (physical: scheduled snapshot
	// cycles, standby lag) gets the bus.
	if es, ok := r.job.(interface{ SetEvents(*events.Bus) }); ok {
		es.SetEvents(r.events)
	}
	r.status.Mode = r.job.Mode()
	u, err := pgcluster.LookupUser(opt.Config.Provision.OSUser)
	if err != nil {
		return nil, fmt.Errorf("provision.osUser: %w", err)
	}
	r.user = u
	if r.binDir, err = pgcluster.NewestBinDir(opt.Config.Provision.PgBinRoot); err != nil {
		return nil, fmt.Errorf("provision.pgBinRoot: %w", err)
	}
	if r.cfg.RefreshSchedule != "" {
		if r.sched, err = cron.ParseStandard(r.cfg.RefreshSchedule); err != nil {
			return nil, fmt.Errorf("retrieval.refreshSchedule: %w", err)
		}
	}
	// The last refresh is known from the pools themselves: the newest
	// snapshot made by a refresh of this mode.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, p := range r.pools {
		snaps, err := p.Snapshots(ctx)
		if err != nil {
			continue
		}
		for _, s := range snaps {
			if s.Message == SnapshotMessage(r.job.Mode()) {
				if s.CreatedAt.After(r.status.LastRefresh) {
					r.status.Status = StatusFinished
					r.status.LastRefresh = s.CreatedAt
					r.status.SnapshotID = s.ID
				}
				break
			}
		}
	}
	// A refresh the agent did not finish (killed, host crash) left its
	// marker: it failed, and the status says so until the next refresh.
	if m, ok := r.readMarker(); ok {
		r.status.Status = StatusFailed
		r.status.Alerts[AlertRefreshFailed] = Alert{Level: "error", Count: 1, LastSeen: m.StartedAt,
			Message: fmt.Sprintf("the %s refresh of pool %s started at %s was interrupted: the agent stopped before it finished", m.Mode, m.Pool, m.StartedAt.Format(time.RFC3339))}
	}
	return r, nil
}

// target is what the job gets for one refresh of pool p.
func (r *Retriever) target(p storage.Pool, progress *job.Progress) job.Target {
	return job.Target{Pool: p, BinDir: r.binDir, User: r.user, Progress: progress, Logger: r.log}
}

// Start lets the job clean up after a refresh the agent did not finish,
// then begins the refresh schedule (if any), and a first refresh when
// retrieval.refreshOnStart is set and the pool has no snapshot.
func (r *Retriever) Start(ctx context.Context) {
	if r.cfg.Mode == "" {
		return
	}
	if rec, ok := r.job.(job.Recoverer); ok {
		for _, p := range r.pools {
			if err := rec.Recover(ctx, r.target(p, nil)); err != nil {
				r.log.Warn("cleaning up after an interrupted refresh failed", "pool", p.Name(), "err", err)
			}
		}
	}
	if r.sched != nil {
		r.cron = cron.New()
		r.cron.Schedule(r.sched, cron.FuncJob(r.scheduledRefresh))
		r.cron.Start()
	}
	if r.cfg.RefreshOnStart {
		empty := true
		for _, p := range r.pools {
			if snaps, err := p.Snapshots(ctx); err != nil || len(snaps) > 0 {
				empty = false
			}
		}
		if empty {
			if err := r.FullRefresh(); err != nil {
				r.skipped("refresh on start skipped: " + err.Error())
			}
		}
	}
}

// Refreshing says whether a refresh is filling the pool named pool.
func (r *Retriever) Refreshing(pool string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.current != nil && r.current.Pool == pool
}

// scheduledRefresh is the schedule's job: a refresh, or a skip recorded.
func (r *Retriever) scheduledRefresh() {
	if err := r.FullRefresh(); err != nil {
		r.skipped("scheduled refresh skipped: " + err.Error())
	}
}

// Status reports the retrieval state.
func (r *Retriever) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.status
	s.Alerts = make(map[string]Alert, len(r.status.Alerts))
	maps.Copy(s.Alerts, r.status.Alerts)
	if r.sched != nil {
		s.NextRefresh = r.sched.Next(time.Now())
	}
	if r.current != nil {
		js := *r.current
		js.Progress = r.progress.State()
		s.Job = &js
	}
	// A continuously updated pool's alerts (lag_high, source_unreachable,
	// a failed scheduled snapshot cycle) join the refresh's, and its lag
	// is reported. Such modes fill one pool (retrieval.pools is refused).
	if rp, ok := r.job.(job.Reporter); ok && len(r.pools) > 0 {
		if rep, ok := rp.Report(r.pools[0]); ok {
			for k, a := range rep.Alerts {
				s.Alerts[k] = Alert(a)
			}
			s.Lag = rep.Lag
		}
	}
	return s
}

// Physical is the physical retrieval of pool (point-in-time clones use its
// WAL archive); ok is false in another mode or before the pool was seen.
func (r *Retriever) Physical(pool string) (*physical.Retriever, bool) {
	if r == nil {
		return nil, false
	}
	pj, ok := r.job.(*physical.Job)
	if !ok {
		return nil, false
	}
	return pj.Retriever(pool)
}

// PointInTimeWindow is the archive window of the physical pool (ok false
// in another mode or before the pool's retrieval started).
func (r *Retriever) PointInTimeWindow(ctx context.Context) (pool string, w physical.ArchiveWindow, ok bool) {
	if r == nil || len(r.pools) == 0 {
		return "", w, false
	}
	pr, ok := r.Physical(r.pools[0].Name())
	if !ok {
		return "", w, false
	}
	return r.pools[0].Name(), pr.CachedArchiveWindow(ctx, 5*time.Second), true
}

// FullRefresh starts a full refresh in the background. It returns
// ErrRefreshRunning while one runs and ErrNotConfigured without a
// retrieval mode.
func (r *Retriever) FullRefresh() error {
	if err := r.begin(); err != nil {
		return err
	}
	r.wg.Go(func() {
		// refreshAndRecord logs the outcome and keeps it in the status.
		_, _ = r.run(r.ctx)
	})
	return nil
}

// Refresh runs a full refresh and waits for it.
func (r *Retriever) Refresh(ctx context.Context) (Result, error) {
	if err := r.begin(); err != nil {
		return Result{}, err
	}
	return r.run(ctx)
}

func (r *Retriever) begin() error {
	if r.cfg.Mode == "" {
		return ErrNotConfigured
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.running {
		return ErrRefreshRunning
	}
	if r.ctx.Err() != nil {
		return errors.New("retrieval is shutting down")
	}
	r.running = true
	r.before = r.status.Status
	r.status.Status = StatusRefreshing
	return nil
}

func (r *Retriever) run(ctx context.Context) (Result, error) {
	res, err := r.refreshAndRecord(ctx)
	// Retention runs once the refresh is recorded as finished: its new
	// snapshot is the newest, so it is always kept.
	if err == nil && r.retain != nil {
		for _, p := range r.pools {
			if p.Name() != res.Pool {
				continue
			}
			if _, rerr := r.retain.Retain(ctx, p); rerr != nil {
				r.log.Warn("snapshot retention after the refresh failed", "pool", p.Name(), "err", rerr)
			}
		}
	}
	return res, err
}

// skipped records a refresh that did not start: an alert, the log and a
// refresh.skipped event.
func (r *Retriever) skipped(why string) { r.skippedPool("", why) }

func (r *Retriever) skippedPool(pool, why string) {
	r.mu.Lock()
	a := r.status.Alerts[AlertRefreshSkipped]
	a.Level = "warning"
	a.Message = why
	a.LastSeen = time.Now()
	a.Count++
	r.status.Alerts[AlertRefreshSkipped] = a
	r.mu.Unlock()
	r.log.Warn(why)
	r.events.Emit(events.Event{Kind: events.RefreshSkipped, Severity: events.Warning, Pool: pool, Message: why})
}

// eventData is the payload of retrieval and refresh events.
type eventData struct {
	Mode           string    `json:"mode"`
	Databases      []string  `json:"databases,omitempty"`
	Bytes          int64     `json:"bytes,omitempty"`
	DataStateAt    time.Time `json:"dataStateAt,omitzero"`
	ElapsedSeconds float64   `json:"elapsedSeconds,omitempty"`
}

// refreshAndRecord runs one refresh and records its outcome in the
// status, the log and events.
func (r *Retriever) refreshAndRecord(ctx context.Context) (Result, error) {
	start := time.Now()
	mode := r.job.Mode()
	p, busy, err := r.choosePool(ctx)
	if err != nil || p == nil {
		r.mu.Lock()
		r.running = false
		r.status.Status = r.before
		r.mu.Unlock()
		if err == nil {
			r.skippedPool(busy, "refresh skipped: "+r.busyMessage(busy))
			r.announceDeadline(ctx, busy)
			return Result{}, ErrAllPoolsBusy
		}
		r.skipped("refresh skipped: " + err.Error())
		return Result{}, err
	}
	pool := p.Name()
	r.log.Info(mode+" refresh started", "pool", pool)
	r.events.Emit(events.Event{Kind: events.RefreshStarted, Pool: pool, Message: mode + " refresh started"}.WithData(eventData{Mode: mode}))
	res, err := r.refresh(ctx, p)
	res.Pool = pool
	data := eventData{Mode: mode, Databases: res.Databases, Bytes: res.Bytes, DataStateAt: res.DumpStartedAt, ElapsedSeconds: time.Since(start).Seconds()}
	switch {
	case errors.Is(err, job.ErrNoNewData):
		r.events.Emit(events.Event{Kind: events.RefreshSkipped, Pool: pool, Message: err.Error()}.WithData(data))
	case err != nil:
		r.events.Emit(events.Event{Kind: events.RetrievalFailed, Severity: events.Error, Pool: pool, Message: err.Error()}.WithData(data))
	default:
		r.events.Emit(events.Event{Kind: events.SnapshotCreated, Pool: pool, Snapshot: res.Snapshot.ID, Message: SnapshotMessage(mode)})
		r.events.Emit(events.Event{Kind: events.RefreshFinished, Pool: pool, Snapshot: res.Snapshot.ID, Message: mode + " refresh finished"}.WithData(data))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.running = false
	if errors.Is(err, job.ErrNoNewData) {
		// Nothing to snapshot is no failure: the newest snapshot is current.
		r.status.Status = r.before
		r.log.Info(mode+" refresh: nothing new to snapshot", "pool", pool, "reason", err, "elapsed", time.Since(start))
		return res, err
	}
	if err != nil {
		r.status.Status = StatusFailed
		a := r.status.Alerts[AlertRefreshFailed]
		a.Level = "error"
		a.Message = err.Error()
		a.LastSeen = time.Now()
		a.Count++
		r.status.Alerts[AlertRefreshFailed] = a
		r.log.Error(mode+" refresh failed", "pool", pool, "err", err, "elapsed", time.Since(start))
		return res, err
	}
	r.status.Status = StatusFinished
	r.status.LastRefresh = time.Now()
	r.status.SnapshotID = res.Snapshot.ID
	delete(r.status.Alerts, AlertRefreshFailed)
	r.log.Info(mode+" refresh finished", "pool", pool, "snapshot", res.Snapshot.ID, "databases", res.Databases, "bytes", res.Bytes, "elapsed", time.Since(start))
	return res, nil
}

// refresh has the job fill pool p and snapshots the result.
func (r *Retriever) refresh(ctx context.Context, p storage.Pool) (Result, error) {
	var res Result
	progress := &job.Progress{}
	r.mu.Lock()
	r.progress = progress
	r.current = &JobStatus{Mode: r.job.Mode(), Pool: p.Name(), StartedAt: time.Now()}
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.progress, r.current = nil, nil
		r.mu.Unlock()
	}()
	r.writeMarker(runningMarker{Pool: p.Name(), Mode: r.job.Mode(), StartedAt: time.Now().UTC().Truncate(time.Second)})
	defer r.removeMarker()
	t := r.target(p, progress)
	// Snapshot IDs have second precision: the new data must be dated
	// after the newest snapshot's.
	snaps, err := p.Snapshots(ctx)
	if err != nil {
		return res, fmt.Errorf("list the pool's snapshots: %w", err)
	}
	if len(snaps) > 0 {
		t.NotBefore = snaps[0].DataStateAt
	}
	mode := r.job.Mode()
	r.events.Emit(events.Event{Kind: events.RetrievalStarted, Pool: p.Name(), Message: mode + " retrieval started"}.WithData(eventData{Mode: mode}))
	out, err := r.job.Run(ctx, t)
	res.DumpStartedAt = out.DataStateAt
	res.Databases = out.Databases
	res.Bytes = out.Bytes
	if err != nil {
		return res, err
	}
	r.events.Emit(events.Event{Kind: events.RetrievalFinished, Pool: p.Name(), Message: mode + " retrieval finished"}.WithData(eventData{Mode: mode, Databases: out.Databases, Bytes: out.Bytes, DataStateAt: out.DataStateAt}))
	if out.Snapshot != nil {
		res.Snapshot = *out.Snapshot
		return res, nil
	}
	snap, err := p.Snapshot(ctx, storage.SnapshotOptions{DataStateAt: out.DataStateAt, Message: SnapshotMessage(r.job.Mode())})
	if err != nil {
		return res, fmt.Errorf("snapshot the pool: %w", err)
	}
	res.Snapshot = snap
	return res, nil
}

// Close stops the schedule and a running refresh, and waits for it.
func (r *Retriever) Close() error {
	if r.cron != nil {
		<-r.cron.Stop().Done()
	}
	r.cancel()
	r.wg.Wait()
	// A mode with its own schedule (physical's snapshot cycles) stops it.
	if c, ok := r.job.(io.Closer); ok {
		return c.Close()
	}
	return nil
}
