package clone

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"path/filepath"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/xid"
	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/agent/runtime"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

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
	extraConf, err := normalizeExtraConf(r.ExtraConf)
	if err != nil {
		return Clone{}, err
	}
	if err := validateLabels(r.Labels); err != nil {
		return Clone{}, err
	}
	verifier, err := scramVerifier(r.Password)
	if err != nil {
		return Clone{}, err
	}
	if err := validatePointInTime(r.PointInTime, "snapshot."); err != nil {
		return Clone{}, err
	}
	var snap storage.Snapshot
	if r.PointInTime != nil {
		if r.SnapshotID != "" {
			return Clone{}, &ValidationError{Field: "snapshot.id", Message: "and a point in time are both set: give snapshot.pointInTime (or snapshot.lsn) alone; the snapshot it starts from is chosen by the time"}
		}
		if snap, err = m.resolvePointInTime(ctx, *r.PointInTime, "snapshot."); err != nil {
			return Clone{}, err
		}
	} else if s, ok := m.warmSnapshotInfo(r.SnapshotID, dbName, extraConf); ok && !r.ReadOnly {
		// A warm clone of the named snapshot proves it exists and carries
		// what the record needs: no pool listing on the fast path.
		snap = s
	} else if snap, err = m.resolveSnapshot(ctx, r.SnapshotID); err != nil {
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
		Branch:        r.Branch,
		Status:        StatusCreating,
		StatusMessage: MessageCreating,
		DBName:        dbName,
		Username:      r.Username,
		Verifier:      verifier,
		Restricted:    r.Restricted,
		CreatedAt:     now,
		LastActivity:  now,
		MaxIdle:       m.cfg.Cloning.MaxIdleMinutes,
		ExtraConf:     extraConf,
		Labels:        maps.Clone(r.Labels),
		LogicalSize:   snap.LogicalSize,
		PointInTime:   r.PointInTime,
		ReadOnly:      r.ReadOnly,
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

	if r.PointInTime == nil && !r.ReadOnly && m.warmFits(dbName, extraConf) {
		if c, taken, err := m.takeWarm(ctx, rec, r.Password); taken {
			return c, err
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
	m.emit(events.CloneCreating, spec, events.Info, MessageCreating)
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
		err = m.teardown(ctx, oldPool, spec.dataset(), spec.Mountpoint, spec.UID)
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
		if rerr := m.teardown(context.Background(), spec.Pool, spec.dataset(), mount, spec.UID); rerr != nil {
			m.log.Error("clone rollback failed", "clone", spec.ID, "err", rerr)
		}
		reset := oldPool != ""
		m.emit(events.CloneFailed, spec, events.Error, err.Error())
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
	if spec.Warm {
		m.update(spec.ID, func(r *record) {
			r.Status = StatusOK
			r.StatusMessage = MessageOK
			r.LastActivity = m.now()
			r.Mountpoint = mount
		})
		m.log.Info("warm clone ready", "warm", spec.ID, "took", took)
		return
	}
	ready := cloneEvent(events.CloneReady, spec, events.Info, MessageOK)
	if spec.Protected {
		// Whoever tracks protection (the platform's "protection about to
		// expire" notification) learns of a clone created protected here.
		ready = ready.WithData(protectionData{Protected: true, Till: spec.ProtectedTill})
	}
	m.bus().Emit(ready)
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
	// The runtime's preparation forks a process: it overlaps with the
	// dataset's creation, which waits on the filesystem.
	prepared := make(chan struct{})
	go func() {
		defer close(prepared)
		m.rt.Prepare(m.instance(spec, ""))
	}()
	cl, err := pool.Clone(ctx, spec.SnapshotID, spec.dataset())
	<-prepared
	if err != nil {
		return "", fmt.Errorf("clone snapshot %s: %w", spec.SnapshotID, err)
	}
	mount := cl.Mountpoint
	m.update(spec.ID, func(r *record) { r.Mountpoint = mount })
	t1 := time.Now()
	dataDir := filepath.Join(mount, storage.DataSubdir)
	if spec.PointInTime != nil {
		if err := m.recoverToTarget(ctx, spec, dataDir); err != nil {
			return mount, err
		}
	}
	if spec.ReplicaOf != "" {
		if err := m.prepareReplica(spec, dataDir, true); err != nil {
			return mount, err
		}
	} else {
		hs, err := m.hotStandbyMinimums(ctx, spec, dataDir)
		if err != nil {
			return mount, err
		}
		if len(hs) == 0 {
			hs = nil
		}
		spec.HotStandby = hs
		m.update(spec.ID, func(r *record) { r.HotStandby = hs })
	}
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
		_ = m.save() // save logs a failure, and the next change writes the state again
	}
	t2 := time.Now()
	if spec.ReplicaOf == "" {
		// A replica has its parent's users already (and cannot write).
		if err := m.leaveRecovery(ctx, spec, dataDir); err != nil {
			return mount, err
		}
		if spec.Warm {
			// No user yet: the create that takes it makes one.
			return mount, lockLogins(ctx, m.socketConnect(dataDir, spec.Port))
		}
		if err := setupUser(ctx, m.socketConnect(dataDir, spec.Port), spec.Username, spec.Verifier, spec.Restricted); err != nil {
			return mount, err
		}
		if spec.ReadOnly {
			if err := m.demote(ctx, spec, dataDir); err != nil {
				return mount, err
			}
		}
	}
	t3 := time.Now()
	if err := m.checkLogin(ctx, spec, dataDir); err != nil {
		return mount, err
	}
	m.log.Debug("clone built", "clone", spec.ID, "dataset", t1.Sub(t0), "postgres", t2.Sub(t1), "user", t3.Sub(t2), "login", time.Since(t3))
	return mount, nil
}

func (m *Manager) instance(spec record, dataDir string) runtime.Instance {
	return runtime.Instance{
		Name:     spec.dataset(),
		DataDir:  dataDir,
		Mount:    filepath.Dir(dataDir),
		User:     cloneUser(spec.UID),
		Port:     spec.Port,
		Settings: runtime.MergeSettings(runtime.DefaultSettings, m.cfg.Provision.CloneDefaults.Settings, spec.ExtraConf, m.standbySettings(spec)),
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
	for range 20 {
		conn, err := pgx.ConnectConfig(ctx, cc)
		if err == nil {
			var one int
			err = conn.QueryRow(ctx, "SELECT 1").Scan(&one)
			_ = conn.Close(context.Background()) // a failed goodbye loses nothing
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
	_ = conn.Close(context.Background()) // a failed goodbye loses nothing
	var lastErr error
	for range 20 {
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
