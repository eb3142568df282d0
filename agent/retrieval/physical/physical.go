// Package physical is retrieval.mode "physical": a first copy of the
// source's data directory into the pool's main dataset (pg_basebackup, a
// configured command, pgBackRest restore, Barman recover or WAL-G
// backup-fetch), a standby postgres there that keeps replaying (streaming
// from the source, or restore_command from the tool's archive), and a
// snapshot cycle on a schedule that never stops the standby:
//
//  1. a temporary snapshot of main as it is (crash-consistent, standby
//     running; on a pool that copies file by file, XFS reflink, replay
//     pauses for the copy) and a temporary clone of it;
//  2. a throwaway postgres on that clone replays what the clone holds,
//     reports pg_last_xact_replay_timestamp(), is promoted, checkpoints
//     and stops cleanly;
//  3. that clone is snapshotted (storage.CloneSnapshotter) as the real
//     snapshot, dataStateAt = the last replayed transaction's time;
//  4. the temporary clone and snapshot are destroyed.
//
// Every storage backend can do 3 (ZFS keeps the temporary snapshot, out of
// view, while the new one depends on it).
//
// Everything runs as provision.osUser, never as root: the tools, the
// standby and the throwaway postgres. The standby's settings are -c
// arguments, so nothing of them (restore_command, primary_conninfo) is
// written into the data directory and reaches a snapshot; the tools'
// environment (credentials) lives in a root-owned directory outside the
// pool that only provision.osUser's group reads.
package physical

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"path/filepath"
	"sync"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/agent/retrieval/pgsource"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

// Mode is the retrieval mode this package implements.
const Mode = "physical"

// Status values, as DLE reports them.
const (
	StatusInactive   = "inactive"
	StatusRefreshing = "refreshing"
	StatusFinished   = "finished"
	StatusFailed     = "failed"
)

// Alert keys.
const (
	AlertRefreshFailed     = "refresh_failed"
	AlertSnapshotFailed    = "snapshot_failed"
	AlertLagHigh           = "lag_high"
	AlertSourceUnreachable = "source_unreachable"
)

// Snapshot messages and the label that marks what the cycle made.
const (
	MessagePromoted = "physical: promoted standby state"
	MessagePre      = "physical: unpromoted standby state (point-in-time base; clones are promoted unless read-only)"
	messageTemp     = "physical: temporary, being promoted"
	// LabelKind is the label key whose value says what a snapshot is:
	// "promoted", "pre" or "temporary".
	LabelKind = "thinlab.physical"
	kindTemp  = "temporary"
	kindPre   = "pre"
	kindPromo = "promoted"
)

// tempClone is the temporary clone the cycle promotes in. One cycle runs
// at a time per pool, so one fixed name suffices and a restarted agent
// finds what a killed one left.
const tempClone = "thinlab-physical-promote"

// tempStateAt is the dataStateAt of the temporary snapshot: far older than
// any real one, so it never takes the ID a real snapshot needs, never is
// "the latest snapshot" a clone request picks, and sorts last.
var tempStateAt = time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC)

// Ports name the Unix sockets of the standby and the throwaway postgres;
// neither listens on TCP.
const (
	standbyPort = 5432
	promotePort = 5433
)

// ErrBusy is returned when a refresh or a snapshot cycle is requested
// while one runs.
var ErrBusy = errors.New("a physical refresh or snapshot cycle is already running")

// Retention deletes a pool's snapshots beyond what the agent keeps (the
// agent's snapshot Policy, or storage.Retain).
type Retention interface {
	Retain(ctx context.Context, p storage.Pool) ([]string, error)
}

// Alert is one kind of problem seen.
type Alert struct {
	Level    string
	Message  string
	LastSeen time.Time
	Count    int
}

// Lag is how far the standby is behind.
type Lag struct {
	// CheckedAt is when it was measured (zero: never).
	CheckedAt time.Time
	// Seconds is the time since the last replayed transaction when the
	// standby is behind (0 when it has replayed all the source has).
	Seconds float64
	// Bytes is the WAL the standby has not replayed yet: the source's
	// current LSN minus the replay LSN, or received minus replayed when
	// the source is not reachable.
	Bytes int64
	// ReplayLSN and ReplayTimestamp are the standby's position.
	ReplayLSN       string
	ReplayTimestamp time.Time
	// SourceReachable is false when the source could not be asked.
	SourceReachable bool
}

// Status is the physical retrieval state.
type Status struct {
	Mode   string
	Status string
	// LastRefresh is when the last first copy finished; LastSnapshot when
	// the last snapshot cycle did; NextSnapshot the next scheduled one.
	LastRefresh  time.Time
	LastSnapshot time.Time
	NextSnapshot time.Time
	SnapshotID   string
	// Running is "refresh", "snapshot" or empty.
	Running string
	Alerts  map[string]Alert
	Lag     Lag
	// StandbyRunning is whether the standby postgres is up.
	StandbyRunning bool
}

// Options configure a Retriever.
type Options struct {
	// Retrieval is the retrieval section (mode physical).
	Retrieval config.Retrieval
	// User is provision.osUser: every tool and postgres runs as it.
	User pgcluster.OSUser
	// BinRoot is provision.pgBinRoot (DefaultBinRoot when empty).
	BinRoot string
	// Pool is the pool named by retrieval.pool; it must implement
	// storage.CloneSnapshotter (every backend does).
	Pool      storage.Pool
	Logger    *slog.Logger
	Retention Retention
	// Events receives snapshot.created for scheduled cycles and
	// replication.lag_high; nil drops them.
	Events *events.Bus
	// PrivateDir holds the tools' environment and the source's password
	// file; default /run/thinlab/physical-<hash of the pool's main
	// dataset>-<pool> (the agent's state directory is 0700 root:
	// provision.osUser cannot reach into it).
	PrivateDir string
	// StartTimeout bounds how long a postgres (standby or throwaway) may
	// take to become ready (a standby replays up to a consistent state
	// first); default an hour.
	StartTimeout time.Duration
}

// Retriever runs physical retrieval for one pool.
type Retriever struct {
	cfg     config.Physical
	src     config.Source
	pool    storage.Pool
	snapper storage.CloneSnapshotter
	user    pgcluster.OSUser
	binRoot string
	priv    string
	log     *slog.Logger
	sched   cron.Schedule
	retain  Retention
	startTO time.Duration
	events  *events.Bus // nil drops events

	mu     sync.Mutex
	status Status
	busy   bool
	// window is the last archive window the status asked for, at
	// windowAt.
	window   ArchiveWindow
	windowAt time.Time
	// segments caches what archived segments (never the newest, which
	// may still be being copied) hold.
	segments map[string]segmentInfo

	// op serializes the refresh, the cycle and the lag check's use of
	// the standby's start.
	op sync.Mutex

	// dieWithParent (tests) gives the standby and the throwaway postgres
	// Pdeathsig, so a killed test binary leaves no server on its pool.
	dieWithParent bool

	// simulateKill (tests) stops a cycle once the throwaway postgres is
	// up, with no cleanup at all: what a killed agent leaves behind.
	simulateKill bool

	// beforePromote, when set (tests), runs in the cycle once the
	// throwaway postgres is up, before it is promoted.
	beforePromote func()

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	cron   *cron.Cron
}

// New builds a Retriever from the agent's config.
func New(opt Options) (*Retriever, error) {
	if opt.Pool == nil {
		return nil, errors.New("physical retrieval: no pool to fill (retrieval.pool)")
	}
	snapper, ok := opt.Pool.(storage.CloneSnapshotter)
	if !ok {
		return nil, fmt.Errorf("retrieval.mode physical: pool %s (mode %s) cannot snapshot a clone, which the snapshot cycle needs: use a zfs, lvm, btrfs or reflink pool", opt.Pool.Name(), opt.Pool.Mode())
	}
	log := opt.Logger
	if log == nil {
		log = slog.Default()
	}
	r := &Retriever{
		cfg:     opt.Retrieval.Physical,
		src:     opt.Retrieval.Source,
		pool:    opt.Pool,
		snapper: snapper,
		user:    opt.User,
		binRoot: opt.BinRoot,
		priv:    opt.PrivateDir,
		log:     log.With("component", "retrieval", "mode", Mode, "pool", opt.Pool.Name()),
		retain:  opt.Retention,
		events:  opt.Events,
		startTO: opt.StartTimeout,
	}
	if r.priv == "" {
		r.priv = defaultPrivateDir(opt.Pool.MainDir(), opt.Pool.Name())
	}
	if r.startTO == 0 {
		r.startTO = time.Hour
	}
	if r.user.UID == 0 {
		return nil, errors.New("physical retrieval: provision.osUser must not be root: postgres and the tools run as it")
	}
	var err error
	if r.cfg.SnapshotSchedule != "" {
		if r.sched, err = cron.ParseStandard(r.cfg.SnapshotSchedule); err != nil {
			return nil, fmt.Errorf("retrieval.physical.snapshotSchedule: %w", err)
		}
	}
	if _, err := r.tool(); err != nil {
		return nil, err
	}
	if r.src.SourceSet() {
		p, err := pgsource.Params(r.src)
		if err != nil {
			return nil, err
		}
		if why := pgsource.InsecureSSL(p); why != "" {
			r.log.Warn("the physical retrieval source connection is insecure: set retrieval.source.sslRootCert (sslMode verify-full)", "reason", why)
		}
	}
	r.status = Status{Mode: Mode, Status: StatusInactive, Alerts: map[string]Alert{}}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	// The last snapshot is known from the pool itself.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if snaps, err := r.pool.Snapshots(ctx); err == nil {
		for _, s := range snaps {
			if k := s.Labels[LabelKind]; k == kindPromo || k == kindPre {
				r.status.Status = StatusFinished
				r.status.LastSnapshot = s.CreatedAt
				r.status.SnapshotID = s.ID
				break
			}
		}
	}
	return r, nil
}

// Start cleans up what a killed agent left of a snapshot cycle, starts the
// standby when the pool holds a copy and it is not running (a standby
// outlives the agent: a running one is kept), and begins the snapshot
// schedule and the lag check. The first copy is a refresh (Refresh,
// FullRefresh, or the core's refreshOnStart), never started here.
func (r *Retriever) Start(ctx context.Context) error {
	r.op.Lock()
	err := r.recoverLeftovers(ctx)
	if err == nil && r.hasCopy() {
		err = r.ensureStandby(ctx)
	}
	r.op.Unlock()
	if err != nil {
		return err
	}
	if r.sched != nil {
		r.cron = cron.New()
		r.cron.Schedule(r.sched, cron.FuncJob(func() {
			snap, err := r.SnapshotCycle(r.ctx)
			switch {
			case err == nil:
				r.events.Emit(events.Event{Kind: events.SnapshotCreated, Pool: r.pool.Name(), Snapshot: snap.ID,
					Message: "scheduled physical snapshot cycle, data as of " + snap.DataStateAt.Format(time.RFC3339)})
			case !errors.Is(err, ErrNoNewData):
				r.log.Warn("scheduled snapshot cycle failed", "err", err)
			}
		}))
		r.cron.Start()
	}
	r.wg.Go(func() {
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-r.ctx.Done():
				return
			case <-t.C:
				_, _ = r.CheckLag(r.ctx) // recorded in the status
			}
		}
	})
	return nil
}

// Close stops the schedule and waits for a running operation. The standby
// keeps running: it outlives the agent like the clones.
func (r *Retriever) Close() error {
	if r.cron != nil {
		<-r.cron.Stop().Done()
	}
	r.cancel()
	r.wg.Wait()
	return nil
}

// Status reports the retrieval state.
func (r *Retriever) Status() Status {
	r.mu.Lock()
	s := r.status
	s.Alerts = maps.Clone(r.status.Alerts)
	r.mu.Unlock()
	if r.sched != nil {
		s.NextSnapshot = r.sched.Next(time.Now())
	}
	s.StandbyRunning = r.standby().Running()
	return s
}

// FullRefresh starts a first copy (replacing the pool's main data) in the
// background, followed by a snapshot cycle.
func (r *Retriever) FullRefresh() error {
	if err := r.begin("refresh"); err != nil {
		return err
	}
	r.wg.Go(func() {
		defer r.end()
		if err := r.refreshAndRecord(r.ctx); err != nil {
			return
		}
		if _, err := r.cycleAndRecord(r.ctx); err != nil && !errors.Is(err, ErrNoNewData) {
			r.log.Warn("snapshot cycle after the first copy failed", "err", err)
		}
	})
	return nil
}

// Refresh runs a first copy and waits for it; the standby is running when
// it returns nil.
func (r *Retriever) Refresh(ctx context.Context) error {
	if err := r.begin("refresh"); err != nil {
		return err
	}
	defer r.end()
	return r.refreshAndRecord(ctx)
}

// SnapshotCycle runs one snapshot cycle and waits for it. It returns
// ErrNoNewData (and no snapshot) when the standby has replayed no
// transaction since the newest snapshot.
func (r *Retriever) SnapshotCycle(ctx context.Context) (storage.Snapshot, error) {
	if err := r.begin("snapshot"); err != nil {
		return storage.Snapshot{}, err
	}
	defer r.end()
	return r.cycleAndRecord(ctx)
}

func (r *Retriever) begin(what string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.busy {
		return ErrBusy
	}
	if r.ctx.Err() != nil {
		return errors.New("physical retrieval is shutting down")
	}
	r.busy = true
	r.status.Running = what
	if what == "refresh" {
		r.status.Status = StatusRefreshing
	}
	return nil
}

func (r *Retriever) end() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.busy = false
	r.status.Running = ""
}

func (r *Retriever) alert(key, level string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	a := r.status.Alerts[key]
	a.Level = level
	a.Message = err.Error()
	a.LastSeen = time.Now()
	a.Count++
	r.status.Alerts[key] = a
}

func (r *Retriever) clearAlert(key string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.status.Alerts, key)
}

func (r *Retriever) refreshAndRecord(ctx context.Context) error {
	start := time.Now()
	r.log.Info("physical first copy started", "tool", r.cfg.Tool)
	r.op.Lock()
	err := r.refresh(ctx)
	r.op.Unlock()
	if err != nil {
		r.mu.Lock()
		r.status.Status = StatusFailed
		r.mu.Unlock()
		r.alert(AlertRefreshFailed, "error", err)
		r.log.Error("physical first copy failed", "err", err, "elapsed", time.Since(start))
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.segments = nil // a new copy may come with a new archive
	r.status.Status = StatusFinished
	r.status.LastRefresh = time.Now()
	delete(r.status.Alerts, AlertRefreshFailed)
	r.log.Info("physical first copy finished; the standby is replaying", "elapsed", time.Since(start))
	return nil
}

func (r *Retriever) cycleAndRecord(ctx context.Context) (storage.Snapshot, error) {
	start := time.Now()
	r.op.Lock()
	snap, err := r.cycle(ctx)
	r.op.Unlock()
	switch {
	case errors.Is(err, ErrNoNewData):
		r.log.Info("snapshot cycle: no transaction replayed since the newest snapshot", "elapsed", time.Since(start))
		return snap, err
	case err != nil:
		r.alert(AlertSnapshotFailed, "error", err)
		r.log.Error("snapshot cycle failed", "err", err, "elapsed", time.Since(start))
		return snap, err
	}
	r.mu.Lock()
	r.status.Status = StatusFinished
	r.status.LastSnapshot = time.Now()
	r.status.SnapshotID = snap.ID
	delete(r.status.Alerts, AlertSnapshotFailed)
	r.mu.Unlock()
	r.log.Info("snapshot cycle finished", "snapshot", snap.ID, "dataStateAt", snap.DataStateAt, "elapsed", time.Since(start))
	if r.retain != nil {
		if _, err := r.retain.Retain(ctx, r.pool); err != nil {
			r.log.Warn("snapshot retention after the cycle failed", "err", err)
		}
	}
	return snap, nil
}

// dataDir is PGDATA of the pool's main dataset.
func (r *Retriever) dataDir() string {
	return filepath.Join(r.pool.MainDir(), storage.DataSubdir)
}

func (r *Retriever) hasCopy() bool {
	_, err := pgcluster.ReadDataFile(r.dataDir(), "PG_VERSION", 64)
	return err == nil
}

// standby is the pool's main postgres.
func (r *Retriever) standby() *pgcluster.Cluster {
	bin, _ := pgcluster.BinDirFor(r.binRoot, r.dataDir()) // empty without a copy: Running is false then
	return &pgcluster.Cluster{DataDir: r.dataDir(), BinDir: bin, User: r.user, Logger: r.log, DieWithParent: r.dieWithParent}
}

// defaultPrivateDir is under /run like the clones' runtime files: the
// state directory is 0700 root, and the directory is rewritten at every
// start, so losing it at a reboot loses nothing. The hash of the pool's
// main dataset keeps two agents on one host apart.
func defaultPrivateDir(mainDir, pool string) string {
	abs, err := filepath.Abs(mainDir)
	if err != nil {
		abs = mainDir
	}
	sum := sha256.Sum256([]byte(abs))
	return filepath.Join("/run/thinlab", "physical-"+hex.EncodeToString(sum[:6])+"-"+pool)
}
