package clone

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/xid"
	passwordvalidator "github.com/wagslane/go-password-validator"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/runtime"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

// MinPasswordEntropy is DLE's minimum password strength (bits, as computed
// by go-password-validator).
const MinPasswordEntropy = 60

// opTimeout bounds one create, reset or delete.
const opTimeout = 10 * time.Minute

// Options configure a Manager.
type Options struct {
	// Config supplies provision, cloning and stateDir.
	Config *config.Config
	// Pools are the opened pools (agent/storage/backend.Open), in config
	// order.
	Pools  []storage.Pool
	Logger *slog.Logger

	// Now is the clock (time.Now when nil); tests move it to drive idle
	// cleanup and protection expiry.
	Now func() time.Time
	// CheckInterval is how often the idle/protection loop runs (one minute
	// when zero; negative disables the loop, and tests call CheckIdle).
	CheckInterval time.Duration
	// CgroupRoot is where the cgroup filesystems are mounted (the
	// runtime's default when empty); tests point it elsewhere.
	CgroupRoot string
}

// Manager owns every clone of the agent. It is safe for concurrent use.
type Manager struct {
	cfg        *config.Config
	log        *slog.Logger
	rt         *runtime.Runtime
	now        func() time.Time
	pools      []storage.Pool
	poolByName map[string]storage.Pool
	// connectHost is where the agent checks readiness over TCP.
	connectHost string

	mu      sync.Mutex
	clones  map[string]*record
	changed chan struct{} // closed and replaced on every change
	version uint64
	times   []time.Duration // recent cloning times
	closed  bool

	saveMu   sync.Mutex
	savedVer uint64

	ops    sync.WaitGroup
	loops  sync.WaitGroup
	cancel context.CancelFunc
}

// NewManager loads the state from the config's stateDir, reconciles it
// with the pools and running processes (restarting clones whose postgres
// died, dropping clones whose dataset is gone, finishing interrupted
// operations, cleaning up datasets and processes that belong to no clone)
// and starts the background loop.
func NewManager(ctx context.Context, opt Options) (*Manager, error) {
	if opt.Config == nil {
		return nil, errors.New("clone manager: no config")
	}
	if len(opt.Pools) == 0 {
		return nil, errors.New("clone manager: no pools")
	}
	cfg := opt.Config
	log := opt.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "clone")
	osUser, err := pgcluster.LookupUser(cfg.Provision.OSUser)
	if err != nil {
		return nil, fmt.Errorf("provision.osUser: %w", err)
	}
	if ids := cfg.Provision.CloneUIDs; osUser.UID >= ids.From && osUser.UID <= ids.To {
		return nil, fmt.Errorf("provision.cloneUIDs (%d-%d) contains the uid %d of provision.osUser %s: clones would share its data; choose a range without it", ids.From, ids.To, osUser.UID, osUser.Name)
	}
	m := &Manager{
		cfg:         cfg,
		log:         log,
		now:         opt.Now,
		pools:       opt.Pools,
		poolByName:  map[string]storage.Pool{},
		connectHost: connectHost(cfg.Provision.ListenAddresses),
		clones:      map[string]*record{},
		changed:     make(chan struct{}),
	}
	if m.now == nil {
		m.now = time.Now
	}
	for _, p := range opt.Pools {
		m.poolByName[p.Name()] = p
	}
	m.rt, err = runtime.New(runtime.Options{
		BinRoot:         cfg.Provision.PgBinRoot,
		User:            osUser,
		ListenAddresses: cfg.Provision.ListenAddresses,
		RunDir:          runtime.RunDirFor(cfg.StateDir),
		CloneUIDFrom:    cfg.Provision.CloneUIDs.From,
		CloneUIDTo:      cfg.Provision.CloneUIDs.To,
		CPU:             cfg.Provision.Resources.CPUQuota(),
		MemoryBytes:     cfg.Provision.Resources.MemoryBytes(),
		CgroupRoot:      opt.CgroupRoot,
		Logger:          log,
	})
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("stateDir: %w", err)
	}
	// The state holds password verifiers.
	if err := os.Chmod(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("stateDir: %w", err)
	}
	if err := m.restore(ctx); err != nil {
		return nil, err
	}
	bg, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	interval := opt.CheckInterval
	if interval == 0 {
		interval = time.Minute
	}
	if interval > 0 {
		m.loops.Add(1)
		go m.loop(bg, interval)
	}
	return m, nil
}

// connectHost is an address from listen_addresses the agent itself can
// dial.
func connectHost(listen string) string {
	first := strings.TrimSpace(strings.Split(listen, ",")[0])
	switch first {
	case "", "*", "0.0.0.0":
		return "127.0.0.1"
	case "::":
		return "::1"
	}
	return first
}

// Runtime exposes the clones' runtime (for status pages and tests).
func (m *Manager) Runtime() *runtime.Runtime { return m.rt }

// Pools returns the pools clones are made from.
func (m *Manager) Pools() []storage.Pool { return m.pools }

// Pool returns a pool by name.
func (m *Manager) Pool(name string) (storage.Pool, bool) {
	p, ok := m.poolByName[name]
	return p, ok
}

// ---- views ----

func (m *Manager) protectedNow(r *record, now time.Time) bool {
	return r.Protected && (r.ProtectedTill.IsZero() || now.Before(r.ProtectedTill))
}

func (m *Manager) view(r *record) Clone {
	now := m.now()
	c := Clone{
		ID:             r.ID,
		Pool:           r.Pool,
		SnapshotID:     r.SnapshotID,
		Status:         r.Status,
		StatusMessage:  r.StatusMessage,
		Host:           m.cfg.Provision.AccessHost,
		Port:           r.Port,
		DBName:         r.DBName,
		Username:       r.Username,
		Restricted:     r.Restricted,
		Protected:      m.protectedNow(r, now),
		CreatedAt:      r.CreatedAt,
		MaxIdleMinutes: r.MaxIdle,
		CloningTime:    r.CloningTime,
		DiffSize:       r.diffSize,
		LogicalSize:    r.LogicalSize,
		ExtraConf:      copyMap(r.ExtraConf),
	}
	if c.Protected {
		c.ProtectedTill = r.ProtectedTill
	}
	if r.Status == StatusOK && !c.Protected && r.MaxIdle > 0 {
		c.DeleteAt = r.LastActivity.Add(time.Duration(r.MaxIdle) * time.Minute)
	}
	return c
}

func copyMap(in map[string]string) map[string]string {
	if in == nil {
		return nil
	}
	out := make(map[string]string, len(in))
	for k, v := range in {
		out[k] = v
	}
	return out
}

// Get returns one clone.
func (m *Manager) Get(id string) (Clone, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.clones[id]
	if !ok {
		return Clone{}, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	return m.view(r), nil
}

// List returns all clones, newest first.
func (m *Manager) List() []Clone {
	m.mu.Lock()
	out := make([]Clone, 0, len(m.clones))
	for _, r := range m.clones {
		out = append(out, m.view(r))
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.After(out[j].CreatedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// Wait blocks until the clone is no longer being created, reset or
// deleted, and returns it (ErrNotFound once deleted).
func (m *Manager) Wait(ctx context.Context, id string) (Clone, error) {
	for {
		m.mu.Lock()
		r, ok := m.clones[id]
		if !ok {
			m.mu.Unlock()
			return Clone{}, fmt.Errorf("%w: %q", ErrNotFound, id)
		}
		if !transitional(r.Status) {
			c := m.view(r)
			m.mu.Unlock()
			return c, nil
		}
		ch := m.changed
		m.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return Clone{}, ctx.Err()
		}
	}
}

func transitional(s StatusCode) bool {
	return s == StatusCreating || s == StatusResetting || s == StatusDeleting
}

// ExpectedCloningTime is the mean cloning time of recent clones (the
// status endpoint's cloning.expectedCloningTime).
func (m *Manager) ExpectedCloningTime() time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.times) == 0 {
		return 0
	}
	var sum time.Duration
	for _, t := range m.times {
		sum += t
	}
	return sum / time.Duration(len(m.times))
}

// ---- state changes ----

// changedLocked records a change: wakes waiters and bumps the version the
// state file must reach.
func (m *Manager) changedLocked() {
	m.version++
	close(m.changed)
	m.changed = make(chan struct{})
}

// save writes the current state if it is newer than what is on disk.
func (m *Manager) save() error {
	m.saveMu.Lock()
	defer m.saveMu.Unlock()
	m.mu.Lock()
	ver := m.version
	if ver <= m.savedVer && m.savedVer != 0 {
		m.mu.Unlock()
		return nil
	}
	recs := m.recordsLocked("", nil)
	m.mu.Unlock()
	if err := m.write(recs); err != nil {
		return err
	}
	m.savedVer = ver
	return nil
}

// recordsLocked copies every record for the state file, with next in place
// of the record of id when next is set.
func (m *Manager) recordsLocked(id string, next *record) []*record {
	recs := make([]*record, 0, len(m.clones))
	for cid, r := range m.clones {
		c := *r
		if cid == id && next != nil {
			c = *next
		}
		c.ExtraConf = copyMap(c.ExtraConf)
		recs = append(recs, &c)
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].CreatedAt.Before(recs[j].CreatedAt) })
	return recs
}

func (m *Manager) write(recs []*record) error {
	if err := writeState(m.cfg.StateDir, recs); err != nil {
		m.log.Error("could not write clone state", "dir", m.cfg.StateDir, "err", err)
		return fmt.Errorf("write clone state: %w", err)
	}
	return nil
}

// update changes one record and persists the change. The change is written
// to the state file before anyone can see it: a client told "OK" must find
// the clone OK after a kill -9 of the agent, not half-created. It reports
// false if the clone is gone.
func (m *Manager) update(id string, f func(r *record)) bool {
	m.saveMu.Lock()
	m.mu.Lock()
	r, ok := m.clones[id]
	if !ok {
		m.mu.Unlock()
		m.saveMu.Unlock()
		return false
	}
	next := *r
	next.ExtraConf = copyMap(r.ExtraConf)
	f(&next)
	recs := m.recordsLocked(id, &next)
	before := m.version
	m.mu.Unlock()
	written := m.write(recs) == nil

	m.mu.Lock()
	// Other fields may have changed meanwhile (they are saved by their own
	// writer), so f is applied to the live record rather than copying next.
	if cur, ok := m.clones[id]; ok {
		f(cur)
	}
	m.changedLocked()
	behind := m.version != before+1
	if written && !behind {
		m.savedVer = m.version
	}
	m.mu.Unlock()
	m.saveMu.Unlock()
	if behind || !written {
		m.save()
	}
	return ok
}

func (m *Manager) remove(id string) {
	m.mu.Lock()
	delete(m.clones, id)
	m.changedLocked()
	m.mu.Unlock()
	m.save()
}

// ---- validation ----

var cloneIDRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)
var dbNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$-]{0,62}$`)

func validateID(id string) error {
	if len(id) > 63 || !cloneIDRE.MatchString(id) || strings.Contains(id, "..") {
		return &ValidationError{Field: "id", Message: fmt.Sprintf("%q is not a valid clone id: use up to 63 letters, digits, '_', '.' or '-', starting with a letter or digit", id)}
	}
	return nil
}

func validatePassword(pw string) error {
	if pw == "" {
		return &ValidationError{Field: "db.password", Message: "is required: give a password for the clone's database user"}
	}
	if err := passwordvalidator.Validate(pw, MinPasswordEntropy); err != nil {
		return &ValidationError{Field: "db.password", Message: err.Error()}
	}
	return nil
}

func validateExtraConf(conf map[string]string) error {
	keys := make([]string, 0, len(conf))
	for k := range conf {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := runtime.ValidateSetting(k, conf[k]); err != nil {
			return &ValidationError{Field: "extra_conf." + k, Message: err.Error()}
		}
	}
	return nil
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
	return now.Add(time.Duration(d) * time.Minute)
}

// resolveSnapshot finds the snapshot (and its pool) for id, or the newest
// snapshot of any pool when id is empty.
func (m *Manager) resolveSnapshot(ctx context.Context, id string) (storage.Snapshot, error) {
	if id == "" {
		var latest storage.Snapshot
		found := false
		for _, p := range m.pools {
			snaps, err := p.Snapshots(ctx)
			if err != nil {
				return storage.Snapshot{}, fmt.Errorf("list snapshots of pool %s: %w", p.Name(), err)
			}
			if len(snaps) > 0 && (!found || snaps[0].DataStateAt.After(latest.DataStateAt)) {
				latest, found = snaps[0], true
			}
		}
		if !found {
			return storage.Snapshot{}, fmt.Errorf("%w: no pool has a snapshot (run a data refresh first)", ErrNoSnapshots)
		}
		return latest, nil
	}
	poolName, _, err := storage.ParseSnapshotID(id)
	if err != nil {
		return storage.Snapshot{}, &ValidationError{Field: "snapshot.id", Message: fmt.Sprintf("%q is not a snapshot id (want <pool>@snapshot_<YYYYMMDDhhmmss>; list them with GET /snapshots)", id), Err: ErrSnapshotNotFound}
	}
	p, ok := m.poolByName[poolName]
	if !ok {
		return storage.Snapshot{}, &ValidationError{Field: "snapshot.id", Message: fmt.Sprintf("snapshot %q not found: there is no pool %q", id, poolName), Err: ErrSnapshotNotFound}
	}
	s, err := p.GetSnapshot(ctx, id)
	if errors.Is(err, storage.ErrNotFound) {
		return storage.Snapshot{}, &ValidationError{Field: "snapshot.id", Message: fmt.Sprintf("snapshot %q not found (list snapshots with GET /snapshots)", id), Err: ErrSnapshotNotFound}
	}
	if err != nil {
		return storage.Snapshot{}, fmt.Errorf("get snapshot %s: %w", id, err)
	}
	return s, nil
}

// ---- ports ----

// allocPortLocked picks the lowest port of the range that no clone holds
// and nothing else listens on.
func (m *Manager) allocPortLocked() (int, error) {
	used := map[int]bool{}
	for _, r := range m.clones {
		if r.Port > 0 {
			used[r.Port] = true
		}
	}
	pp := m.cfg.Provision.PortPool
	for port := pp.From; port <= pp.To; port++ {
		if used[port] || !m.portFree(port) {
			continue
		}
		return port, nil
	}
	return 0, fmt.Errorf("%w: all %d ports of provision.portPool (%d-%d) are in use; destroy clones or widen the range", ErrNoPorts, pp.Size(), pp.From, pp.To)
}

// allocUIDLocked picks the lowest uid of provision.cloneUIDs that no clone
// holds, no process runs as (a clone of another agent on the host, or a
// leftover) and no account of the host has.
func (m *Manager) allocUIDLocked() (uint32, error) {
	used := map[uint32]bool{}
	for _, r := range m.clones {
		if r.UID != 0 {
			used[r.UID] = true
		}
	}
	ids := m.cfg.Provision.CloneUIDs
	for uid := ids.From; uid <= ids.To && uid >= ids.From; uid++ {
		if used[uid] || runtime.UIDInUse(uid) {
			continue
		}
		if _, err := user.LookupId(strconv.FormatUint(uint64(uid), 10)); err == nil {
			continue
		}
		return uid, nil
	}
	return 0, fmt.Errorf("all %d uids of provision.cloneUIDs (%d-%d) are in use; destroy clones or widen the range", ids.To-ids.From+1, ids.From, ids.To)
}

// portFree tries to listen on port on every configured address.
func (m *Manager) portFree(port int) bool {
	for _, a := range strings.Split(m.cfg.Provision.ListenAddresses, ",") {
		a = strings.TrimSpace(a)
		if a == "*" {
			a = ""
		}
		l, err := net.Listen("tcp", net.JoinHostPort(a, strconv.Itoa(port)))
		if err != nil {
			return false
		}
		l.Close()
	}
	return true
}

// ---- create ----

// Create validates r, registers the clone with status CREATING and
// returns at once; the clone is built in the background and ends OK, or
// FATAL with the reason and nothing left behind but the record.
func (m *Manager) Create(ctx context.Context, r CreateRequest) (Clone, error) {
	if r.ID != "" {
		if err := validateID(r.ID); err != nil {
			return Clone{}, err
		}
	}
	if err := validateUsername(r.Username); err != nil {
		return Clone{}, err
	}
	if err := validatePassword(r.Password); err != nil {
		return Clone{}, err
	}
	dbName := r.DBName
	if dbName == "" {
		dbName = m.cfg.Provision.CloneDefaults.DBName
	}
	if !dbNameRE.MatchString(dbName) {
		return Clone{}, &ValidationError{Field: "db.db_name", Message: fmt.Sprintf("%q is not a valid database name: use letters, digits, '_', '$' or '-', starting with a letter or '_'", dbName)}
	}
	if err := validateExtraConf(r.ExtraConf); err != nil {
		return Clone{}, err
	}
	verifier, err := scramVerifier(r.Password)
	if err != nil {
		return Clone{}, err
	}
	snap, err := m.resolveSnapshot(ctx, r.SnapshotID)
	if err != nil {
		return Clone{}, err
	}
	id := r.ID
	if id == "" {
		id = xid.New().String()
	}
	now := m.now()
	rec := &record{
		ID:            id,
		Pool:          snap.Pool,
		SnapshotID:    snap.ID,
		Status:        StatusCreating,
		StatusMessage: MessageCreating,
		DBName:        dbName,
		Username:      r.Username,
		Verifier:      verifier,
		Restricted:    r.Restricted,
		CreatedAt:     now,
		LastActivity:  now,
		MaxIdle:       m.cfg.Cloning.MaxIdleMinutes,
		ExtraConf:     copyMap(r.ExtraConf),
		LogicalSize:   snap.LogicalSize,
		opStart:       time.Now(),
	}
	if r.Protected {
		rec.Protected = true
		rec.ProtectedTill = m.protectionTill(now, r.ProtectionDurationMinutes)
	}
	if rec.Pool == "" {
		if p, _, err := storage.ParseSnapshotID(snap.ID); err == nil {
			rec.Pool = p
		}
	}

	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return Clone{}, errors.New("clone manager is shutting down")
	}
	if _, ok := m.clones[id]; ok {
		m.mu.Unlock()
		return Clone{}, fmt.Errorf("%w: %q (choose another id or destroy it first)", ErrExists, id)
	}
	port, err := m.allocPortLocked()
	if err != nil {
		m.mu.Unlock()
		return Clone{}, err
	}
	rec.Port = port
	if rec.UID, err = m.allocUIDLocked(); err != nil {
		m.mu.Unlock()
		return Clone{}, err
	}
	m.clones[id] = rec
	m.changedLocked()
	spec := *rec
	// Only this create's readiness check sees the plaintext.
	spec.password = r.Password
	view := m.view(rec)
	m.ops.Add(1)
	m.mu.Unlock()

	if err := m.save(); err != nil {
		m.remove(id)
		m.ops.Done()
		return Clone{}, err
	}
	m.log.Info("creating clone", "clone", id, "snapshot", snap.ID, "port", port, "user", r.Username, "restricted", r.Restricted)
	go func() {
		defer m.ops.Done()
		m.runBuild(spec, "")
	}()
	return view, nil
}

// runBuild builds the clone described by spec (create, or the second half
// of a reset) and records the outcome. oldPool is the pool of the dataset
// to destroy first (reset), or "".
func (m *Manager) runBuild(spec record, oldPool string) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	start := spec.opStart
	if start.IsZero() {
		start = time.Now()
	}
	var err error
	if oldPool != "" {
		err = m.teardown(ctx, oldPool, spec.ID, spec.Mountpoint, spec.UID)
		if err != nil {
			err = fmt.Errorf("remove the old data: %w", err)
		}
	}
	mount := ""
	if err == nil {
		mount, err = m.build(ctx, spec, oldPool == "")
	}
	if err != nil {
		m.log.Error("clone failed", "clone", spec.ID, "snapshot", spec.SnapshotID, "err", err)
		if rerr := m.teardown(context.Background(), spec.Pool, spec.ID, mount, spec.UID); rerr != nil {
			m.log.Error("clone rollback failed", "clone", spec.ID, "err", rerr)
		}
		reset := oldPool != ""
		m.update(spec.ID, func(r *record) {
			r.Status = StatusFatal
			r.StatusMessage = err.Error()
			r.Mountpoint = ""
			r.LastActivity = m.now()
			if !reset {
				// A failed create gives its port back; a failed reset keeps
				// it, so that a retry keeps the clone's address.
				r.Port = 0
			}
		})
		return
	}
	took := time.Since(start)
	m.update(spec.ID, func(r *record) {
		r.Status = StatusOK
		r.StatusMessage = MessageOK
		r.CloningTime = took
		r.LastActivity = m.now()
		r.Mountpoint = mount
	})
	m.mu.Lock()
	m.times = append(m.times, took)
	if len(m.times) > 20 {
		m.times = m.times[len(m.times)-20:]
	}
	m.mu.Unlock()
	m.log.Info("clone ready", "clone", spec.ID, "took", took)
}

// build makes the dataset, starts postgres, sets up the user and checks
// that the user can log in over TCP. It returns the dataset's mountpoint
// (also on failure, when the dataset was made, for the rollback).
func (m *Manager) build(ctx context.Context, spec record, fresh bool) (string, error) {
	pool, ok := m.poolByName[spec.Pool]
	if !ok {
		return "", fmt.Errorf("pool %q is not configured", spec.Pool)
	}
	t0 := time.Now()
	cl, err := pool.Clone(ctx, spec.SnapshotID, spec.ID)
	if err != nil {
		return "", fmt.Errorf("clone snapshot %s: %w", spec.SnapshotID, err)
	}
	mount := cl.Mountpoint
	m.update(spec.ID, func(r *record) { r.Mountpoint = mount })
	t1 := time.Now()
	dataDir := filepath.Join(mount, storage.DataSubdir)
	for attempt := 0; ; attempt++ {
		err := m.rt.Start(ctx, m.instance(spec, dataDir))
		if err == nil {
			break
		}
		// Another program took the port between allocation and postgres'
		// bind. A new clone has not shown its port to anyone yet, so it
		// may move; a reset keeps its port and fails.
		if !fresh || attempt >= 3 || !portTaken(err) {
			return mount, fmt.Errorf("start postgres: %w", err)
		}
		port, perr := m.movePort(spec.ID)
		if perr != nil {
			return mount, fmt.Errorf("start postgres: %w (and no other port: %v)", err, perr)
		}
		m.log.Warn("clone port was taken by another program; trying another", "clone", spec.ID, "old_port", spec.Port, "port", port)
		spec.Port = port
		m.save()
	}
	t2 := time.Now()
	if err := setupUser(ctx, m.socketConnect(dataDir, spec.Port), spec.Username, spec.Verifier, spec.Restricted); err != nil {
		return mount, err
	}
	t3 := time.Now()
	if err := m.checkLogin(ctx, spec, dataDir); err != nil {
		return mount, err
	}
	m.log.Debug("clone built", "clone", spec.ID, "dataset", t1.Sub(t0), "postgres", t2.Sub(t1), "user", t3.Sub(t2), "login", time.Since(t3))
	return mount, nil
}

// portTaken recognizes postgres failing to bind its port.
func portTaken(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "Address already in use") || strings.Contains(msg, "could not create any TCP/IP sockets")
}

// movePort gives a clone being created a new port.
func (m *Manager) movePort(id string) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.clones[id]
	if !ok {
		return 0, ErrNotFound
	}
	old := r.Port
	r.Port = 0
	port, err := m.allocPortLocked()
	if err != nil {
		r.Port = old
		return 0, err
	}
	r.Port = port
	m.changedLocked()
	return port, nil
}

func (m *Manager) instance(spec record, dataDir string) runtime.Instance {
	return runtime.Instance{
		Name:     spec.ID,
		DataDir:  dataDir,
		Mount:    filepath.Dir(dataDir),
		User:     cloneUser(spec.UID),
		Port:     spec.Port,
		Settings: runtime.MergeSettings(runtime.DefaultSettings, m.cfg.Provision.CloneDefaults.Settings, spec.ExtraConf),
	}
}

// cloneUser is a clone's own OS user: uid and gid of the same number, no
// account needed.
func cloneUser(uid uint32) pgcluster.OSUser {
	return pgcluster.OSUser{Name: strconv.FormatUint(uint64(uid), 10), UID: uid, GID: uid}
}

func (m *Manager) socketConnect(dataDir string, port int) func(ctx context.Context, db string) (*pgx.Conn, error) {
	return func(ctx context.Context, db string) (*pgx.Conn, error) {
		return pgcluster.Connect(ctx, m.rt.SocketConnString(dataDir, port, bootstrapSuperuser, db))
	}
}

// checkLogin is the readiness check: the clone's user logs in over TCP
// with its password and runs a query. Without the password (a reset, or a
// restart: the agent keeps only the verifier) the bootstrap superuser
// checks over the socket that the database exists, and a SCRAM login
// started over TCP must present the salt of the user's verifier.
func (m *Manager) checkLogin(ctx context.Context, spec record, dataDir string) error {
	if spec.password == "" {
		return m.checkVerifierLogin(ctx, spec, dataDir)
	}
	cc, err := pgcluster.SessionConfig(fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable connect_timeout=10", m.connectHost, spec.Port, spec.Username, spec.DBName))
	if err != nil {
		return err
	}
	cc.Password = spec.password
	var lastErr error
	for attempt := 0; attempt < 20; attempt++ {
		conn, err := pgx.ConnectConfig(ctx, cc)
		if err == nil {
			var one int
			err = conn.QueryRow(ctx, "SELECT 1").Scan(&one)
			conn.Close(context.Background())
			if err == nil {
				return nil
			}
		}
		lastErr = err
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) || ctx.Err() != nil {
			break // the server answered: retrying will not help
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("clone user %s cannot log in over TCP to database %s: %w", spec.Username, spec.DBName, lastErr)
}

func (m *Manager) checkVerifierLogin(ctx context.Context, spec record, dataDir string) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := m.socketConnect(dataDir, spec.Port)(cctx, spec.DBName)
	if err != nil {
		return fmt.Errorf("clone database %s is not reachable: %w", spec.DBName, err)
	}
	conn.Close(context.Background())
	var lastErr error
	for attempt := 0; attempt < 20; attempt++ {
		lastErr = probeSCRAM(cctx, net.JoinHostPort(m.connectHost, strconv.Itoa(spec.Port)), spec.Username, spec.DBName, spec.Verifier)
		var ne net.Error
		if lastErr == nil || !errors.As(lastErr, &ne) || cctx.Err() != nil {
			break // the server answered: retrying will not help
		}
		time.Sleep(50 * time.Millisecond)
	}
	if lastErr != nil {
		return fmt.Errorf("clone user %s cannot log in over TCP to database %s: %w", spec.Username, spec.DBName, lastErr)
	}
	return nil
}

// teardown stops postgres in the clone's dataset (and every process of the
// clone's OS user uid), removes its idmapped mount and destroys the dataset
// (if they exist). mount may be empty: the dataset is then found by name.
func (m *Manager) teardown(ctx context.Context, poolName, id, mount string, uid uint32) error {
	pool, ok := m.poolByName[poolName]
	if !ok {
		return fmt.Errorf("pool %q is not configured", poolName)
	}
	exists := false
	if clones, err := pool.Clones(ctx); err == nil {
		for _, c := range clones {
			if c.Name == id {
				exists, mount = true, c.Mountpoint
			}
		}
	} else {
		return fmt.Errorf("list clones of pool %s: %w", poolName, err)
	}
	if mount != "" {
		inst := runtime.Instance{Name: id, DataDir: filepath.Join(mount, storage.DataSubdir), Mount: mount, User: cloneUser(uid)}
		if err := m.rt.Stop(ctx, inst, "immediate"); err != nil {
			m.log.Warn("stopping clone postgres failed; killing it", "clone", id, "err", err)
			m.rt.Kill(inst)
		}
		if err := m.rt.Release(inst); err != nil {
			return fmt.Errorf("release clone %s: %w", id, err)
		}
	}
	if !exists {
		return nil
	}
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if err = pool.DestroyClone(ctx, id); err == nil || errors.Is(err, storage.ErrNotFound) {
			return nil
		}
		time.Sleep(time.Duration(attempt+1) * 100 * time.Millisecond)
	}
	return fmt.Errorf("destroy dataset of clone %s: %w", id, err)
}

// ---- reset ----

// Reset re-creates the clone from another snapshot (or the latest)
// keeping id, port, user and password; it returns at once with status
// RESETTING. A clone in FATAL may be reset too (a retry).
func (m *Manager) Reset(ctx context.Context, id string, r ResetRequest) (Clone, error) {
	snapID := r.SnapshotID
	if r.Latest {
		snapID = ""
	}
	snap, err := m.resolveSnapshot(ctx, snapID)
	if err != nil {
		return Clone{}, err
	}
	m.mu.Lock()
	rec, ok := m.clones[id]
	if !ok {
		m.mu.Unlock()
		return Clone{}, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	if m.closed {
		m.mu.Unlock()
		return Clone{}, errors.New("clone manager is shutting down")
	}
	if (rec.Status != StatusOK && rec.Status != StatusFatal) || rec.busy {
		m.mu.Unlock()
		return Clone{}, fmt.Errorf("%w: clone %q is %s; wait until it is OK", ErrNotReady, id, rec.Status)
	}
	if rec.Port == 0 {
		port, err := m.allocPortLocked()
		if err != nil {
			m.mu.Unlock()
			return Clone{}, err
		}
		rec.Port = port
	}
	if rec.UID == 0 {
		uid, err := m.allocUIDLocked()
		if err != nil {
			m.mu.Unlock()
			return Clone{}, err
		}
		rec.UID = uid
	}
	oldPool := rec.Pool
	rec.Status = StatusResetting
	rec.StatusMessage = MessageResetting
	rec.SnapshotID = snap.ID
	rec.Pool = snap.Pool
	rec.LogicalSize = snap.LogicalSize
	rec.opStart = time.Now()
	m.changedLocked()
	spec := *rec
	spec.ExtraConf = copyMap(rec.ExtraConf)
	view := m.view(rec)
	m.ops.Add(1)
	m.mu.Unlock()
	m.save()
	m.log.Info("resetting clone", "clone", id, "snapshot", snap.ID)
	go func() {
		defer m.ops.Done()
		m.runBuild(spec, oldPool)
	}()
	return view, nil
}

// ---- destroy ----

// Destroy deletes a clone: status DELETING at once, then gone. A protected
// clone gives ErrProtected; one being created or reset ErrNotReady.
func (m *Manager) Destroy(ctx context.Context, id string) error {
	m.mu.Lock()
	rec, ok := m.clones[id]
	if !ok {
		m.mu.Unlock()
		return fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	if m.protectedNow(rec, m.now()) {
		m.mu.Unlock()
		return fmt.Errorf("%w: %q cannot be destroyed; remove its protection first", ErrProtected, id)
	}
	if transitional(rec.Status) || rec.busy {
		m.mu.Unlock()
		return fmt.Errorf("%w: clone %q is %s", ErrNotReady, id, rec.Status)
	}
	rec.Status = StatusDeleting
	rec.StatusMessage = MessageDeleting
	m.changedLocked()
	spec := *rec
	m.ops.Add(1)
	m.mu.Unlock()
	m.save()
	m.log.Info("destroying clone", "clone", id)
	go func() {
		defer m.ops.Done()
		m.runDestroy(spec)
	}()
	return nil
}

func (m *Manager) runDestroy(spec record) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := m.teardown(ctx, spec.Pool, spec.ID, spec.Mountpoint, spec.UID); err != nil {
		m.log.Error("destroy clone failed", "clone", spec.ID, "err", err)
		m.update(spec.ID, func(r *record) {
			r.Status = StatusFatal
			r.StatusMessage = "delete failed: " + err.Error()
		})
		return
	}
	m.remove(spec.ID)
	m.log.Info("clone destroyed", "clone", spec.ID)
}

// ---- protection ----

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
	if protected {
		rec.ProtectedTill = m.protectionTill(m.now(), durationMinutes)
	} else {
		// Idle time starts over: unprotecting must not delete a clone that
		// sat idle under protection the very next minute.
		rec.LastActivity = m.now()
	}
	m.changedLocked()
	view := m.view(rec)
	m.mu.Unlock()
	if err := m.save(); err != nil {
		return Clone{}, err
	}
	m.log.Info("clone protection changed", "clone", id, "protected", protected, "till", view.ProtectedTill)
	return view, nil
}

// Close stops the background loop and waits for running operations.
// Clones keep running: the next Manager finds them again.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.mu.Unlock()
	if m.cancel != nil {
		m.cancel()
	}
	m.loops.Wait()
	m.ops.Wait()
	return m.save()
}
