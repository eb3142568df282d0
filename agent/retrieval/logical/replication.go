package logical

// Logical replication (retrieval.logical.replication): the pool's postgres
// subscribes to a publication on the source and stays current; a refresh
// snapshots the replicated state instead of copying everything again.
//
// First copy: the schema by pg_dump --schema-only | pg_restore (the
// existing restore, as provision.osUser), then one subscription per
// database with copy_data = true. PostgreSQL creates the subscription's
// slot and each table's initial copy from a snapshot consistent with that
// slot, so the copy plus the replicated changes hold every row exactly
// once: no hand-made snapshot juggling can lose or double a row. The
// subscriptions' conninfo names a password file (passfile=) in a private
// directory outside the pool, never the password: pg_subscription, which
// any superuser of the pool's postgres reads, holds no secret.
//
// A snapshot ("cycle") of the running subscriber:
//  1. wait (bounded) until every subscription has caught up with the
//     source's WAL position read at time T0; dataStateAt = T0 (without
//     the source or when it does not catch up in time: the time of the
//     last keepalive each subscription processed, which the source sends
//     once it has sent everything, so all it committed before is applied);
//  2. CHECKPOINT: the apply workers commit asynchronously, and only WAL
//     written to files reaches a filesystem snapshot;
//  3. a temporary snapshot of main, a temporary clone of it, and a
//     throwaway postgres there started with max_logical_replication_workers
//     = 0 (no apply worker can start: it never connects to the source);
//  4. each subscription is disabled, detached from its slot (slot_name =
//     NONE: DROP then leaves the source's slot alone) and dropped;
//     pre-processing (masking) runs; CHECKPOINT, clean stop;
//  5. that clone is snapshotted as the real snapshot; the temporary clone
//     and snapshot are destroyed.
//
// So no clone holds a subscription (none can connect to the source or
// touch its slot), and the subscriber never stops. A throwaway promotion
// costs a clone start (crash recovery of a btrfs snapshot, well under a
// second for a small WAL tail) but keeps the subscriber streaming; the
// alternative, disabling the subscription while snapshotting, would still
// leave pg_subscription rows (and the source's address) in every clone.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"golang.org/x/sys/unix"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/agent/retrieval/job"
	"github.com/thinlab/thinlab/agent/retrieval/pgsource"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

// Alert keys of a replicating pool.
const (
	AlertLagHigh              = "lag_high"
	AlertSourceUnreachable    = "source_unreachable"
	AlertSubscriptionDisabled = "subscription_disabled"
)

// Snapshot labels: LabelKind's value says what a snapshot is.
const (
	LabelKind      = "thinlab.logical"
	kindTemp       = "temporary"
	kindReplicated = "replicated"
	messageTemp    = "logical: temporary, subscriptions being removed"
)

// tempClone is the cycle's temporary clone; one cycle runs at a time per
// pool, so a fixed name lets a restarted agent find what a killed one left.
const tempClone = "thinlab-logical-snapshot"

// throwawayPort names the throwaway postgres' socket (main uses localPort).
const throwawayPort = 5433

// markerFile, in the pool's main dataset next to PGDATA, records a
// finished first copy (no secret: names only).
const markerFile = "replication.json"

// tempStateAt dates the temporary snapshot far before any real one.
var tempStateAt = time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC)

// Tunables (tests shorten them).
var (
	// catchUpTimeout bounds the cycle's wait for the subscriptions to
	// reach the source's position.
	catchUpTimeout = time.Minute
	// lagInterval is how often the lag is measured.
	lagInterval = 10 * time.Second
)

// replicationMarker is markerFile's content.
type replicationMarker struct {
	Publication string `json:"publication"`
	// Subscriptions by database.
	Subscriptions map[string]string `json:"subscriptions"`
	CopiedAt      time.Time         `json:"copiedAt"`
}

// replica is the replication state of one pool.
type replica struct {
	j       *Job
	pool    storage.Pool
	snapper storage.CloneSnapshotter
	user    pgcluster.OSUser
	binDir  string
	priv    string
	log     *slog.Logger

	// op serializes the first copy, the cycle and the lag check.
	op sync.Mutex

	mu          sync.Mutex
	lag         *job.Lag
	alerts      map[string]job.Alert
	caughtUpAt  time.Time // the last check that found no lag
	loopStarted bool
}

// SetEvents gives the job the agent's event bus (before any Run or
// Recover): replication's lag_high goes there.
func (j *Job) SetEvents(b *events.Bus) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.events = b
}

func (j *Job) replicating() bool { return j.cfg.Logical.Replication.Enabled }

// replica is pool t.Pool's replication state, made on first use.
func (j *Job) replica(t job.Target) (*replica, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if r, ok := j.replicas[t.Pool.Name()]; ok {
		return r, nil
	}
	snapper, ok := t.Pool.(storage.CloneSnapshotter)
	if !ok {
		return nil, fmt.Errorf("retrieval.logical.replication: pool %s (mode %s) cannot snapshot a clone, which snapshots of a running subscriber need: use a btrfs pool", t.Pool.Name(), t.Pool.Mode())
	}
	if t.User.UID == 0 {
		return nil, errors.New("retrieval.logical.replication: provision.osUser must not be root")
	}
	log := t.Logger
	if log == nil {
		log = j.log
	}
	r := &replica{j: j, pool: t.Pool, snapper: snapper, user: t.User, binDir: t.BinDir,
		priv: j.privateDir, log: log.With("replication", t.Pool.Name()), alerts: map[string]job.Alert{}}
	if r.priv == "" {
		r.priv = PrivateDir(t.Pool.MainDir(), t.Pool.Name())
	}
	j.replicas[t.Pool.Name()] = r
	return r, nil
}

// PrivateDir holds the source's password file and TLS files for the
// subscriptions of the pool whose main dataset is mainDir: under /run
// (the agent's state directory is 0700 root), one per main dataset.
func PrivateDir(mainDir, pool string) string {
	abs, err := filepath.Abs(mainDir)
	if err != nil {
		abs = mainDir
	}
	sum := sha256.Sum256([]byte(abs))
	return filepath.Join("/run/thinlab", "logical-"+hex.EncodeToString(sum[:6])+"-"+pool)
}

// subscriptionName is the subscription's (and its slot's) name for db:
// <slotName>_<db> in the characters slot names allow.
func subscriptionName(prefix, db string) string {
	var b strings.Builder
	b.WriteString(prefix + "_")
	for _, c := range strings.ToLower(db) {
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' {
			b.WriteRune(c)
		} else {
			b.WriteByte('_')
		}
	}
	s := b.String()
	if len(s) > 63 {
		s = s[:63]
	}
	return s
}

func (j *Job) subscriptions(dbs []string) (map[string]string, error) {
	out := map[string]string{}
	seen := map[string]string{}
	for _, db := range dbs {
		n := subscriptionName(j.cfg.Logical.Replication.Slot(), db)
		if other, ok := seen[n]; ok {
			return nil, fmt.Errorf("databases %q and %q would share the subscription and slot name %s: list fewer databases in retrieval.databases", other, db, n)
		}
		seen[n] = db
		out[db] = n
	}
	return out, nil
}

func (r *replica) dataDir() string { return filepath.Join(r.pool.MainDir(), storage.DataSubdir) }

// main is the subscriber: the pool's main postgres. DieWithParent: it
// lives as long as the agent, which starts it again (Recover); the source
// keeps the slot's changes meanwhile.
func (r *replica) main() *pgcluster.Cluster {
	return &pgcluster.Cluster{DataDir: r.dataDir(), BinDir: r.binDir, User: r.user, Logger: r.log, DieWithParent: true}
}

// subscriberSettings are the main postgres' -c settings: no TCP, no WAL
// senders, enough workers for one apply worker per database plus the
// initial copy's table sync workers.
func subscriberSettings(dbs int) map[string]string {
	return map[string]string{
		"wal_level":                         "minimal",
		"max_wal_senders":                   "0",
		"archive_mode":                      "off",
		"max_logical_replication_workers":   strconv.Itoa(dbs + 4),
		"max_sync_workers_per_subscription": "2",
		"max_worker_processes":              strconv.Itoa(dbs + 12),
	}
}

func (r *replica) readMarker() (replicationMarker, bool) {
	var m replicationMarker
	b, err := os.ReadFile(filepath.Join(r.pool.MainDir(), markerFile))
	if err != nil || json.Unmarshal(b, &m) != nil || len(m.Subscriptions) == 0 {
		return m, false
	}
	return m, true
}

func (r *replica) writeMarker(m replicationMarker) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	p := filepath.Join(r.pool.MainDir(), markerFile)
	if err := os.WriteFile(p+".tmp", b, 0o600); err != nil {
		return err
	}
	return os.Rename(p+".tmp", p)
}

// stop stops the subscriber (its data is about to be replaced): fast,
// killed when that fails.
func (r *replica) stop(ctx context.Context) {
	c := r.main()
	if !c.Running() {
		return
	}
	if err := c.Stop(ctx, "fast"); err != nil {
		c.Kill()
	}
}

// ensureRunning starts the subscriber unless it runs (the private
// directory first: the apply workers read the password file).
func (r *replica) ensureRunning(ctx context.Context, dbs int) error {
	c := r.main()
	if c.Running() {
		return nil
	}
	if err := r.writePrivate(); err != nil {
		return err
	}
	if err := c.Start(ctx, localPort, "", subscriberSettings(dbs)); err != nil {
		return fmt.Errorf("start the pool's subscriber postgres: %w", err)
	}
	return nil
}

// runReplication is Run with retrieval.logical.replication: a first copy
// when the pool has no working subscriptions for the configured
// publication and databases, then a snapshot of the replicated state.
func (j *Job) runReplication(ctx context.Context, t job.Target) (job.Outcome, error) {
	var out job.Outcome
	r, err := j.replica(t)
	if err != nil {
		return out, err
	}
	params, err := pgsource.Params(j.cfg.Source)
	if err != nil {
		return out, err
	}
	out, err = r.refresh(ctx, t, params)
	if err == nil {
		// The status shows the lag from the first snapshot on.
		if _, lerr := r.CheckLag(ctx); lerr != nil {
			r.log.Warn("measuring the subscription's lag failed", "err", lerr)
		}
	}
	return out, err
}

func (r *replica) refresh(ctx context.Context, t job.Target, params map[string]string) (job.Outcome, error) {
	var out job.Outcome
	var err error
	j := r.j
	r.op.Lock()
	defer r.op.Unlock()
	dbs := j.cfg.Databases
	if len(dbs) == 0 {
		if dbs, err = j.listDatabases(ctx, params); err != nil {
			return out, err
		}
	}
	if len(dbs) == 0 {
		return out, errors.New("the source has no databases to replicate")
	}
	out.Databases = dbs
	subs, err := j.subscriptions(dbs)
	if err != nil {
		return out, err
	}
	if why := r.reusable(ctx, subs); why != "" {
		r.log.Info("logical replication: first copy", "reason", why)
		if err := r.firstCopy(ctx, t, params, dbs, subs, &out.Bytes); err != nil {
			return out, err
		}
	}
	r.startLagLoop()
	snap, err := r.cycle(ctx, t, params, subs)
	if err != nil {
		return out, err
	}
	out.DataStateAt = snap.DataStateAt
	out.Snapshot = &snap
	return out, nil
}

// reusable says why the pool's subscriptions cannot simply be snapshotted
// ("" when they can): no finished first copy, other databases or
// publication, or a subscription an apply error disabled.
func (r *replica) reusable(ctx context.Context, subs map[string]string) string {
	m, ok := r.readMarker()
	switch {
	case !ok:
		return "the pool holds no replicated copy yet"
	case m.Publication != r.j.cfg.Logical.Replication.Publication:
		return "the publication changed"
	case !maps.Equal(m.Subscriptions, subs):
		return "the replicated databases changed"
	}
	if err := r.ensureRunning(ctx, len(subs)); err != nil {
		return err.Error()
	}
	conn, err := pgcluster.Connect(ctx, r.main().SocketConnString(localPort, "postgres", "postgres"))
	if err != nil {
		return "cannot connect to the subscriber: " + err.Error()
	}
	defer func() { _ = conn.Close(context.Background()) }() // read-only session
	names := make([]string, 0, len(subs))
	for _, n := range subs {
		names = append(names, n)
	}
	var enabled int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_subscription WHERE subenabled AND subname = ANY($1)", names).Scan(&enabled); err != nil {
		return "cannot read the subscriptions: " + err.Error()
	}
	if enabled != len(names) {
		return "a subscription is missing or was disabled by an apply error (see the pool's postgres log)"
	}
	return ""
}

// dropSubscriptions drops every subscription of the pool's postgres,
// slots on the source included (DROP SUBSCRIPTION connects to it), so a
// new copy leaves no slot behind holding WAL on the source. A data
// directory that does not start has none that could be dropped.
func (r *replica) dropSubscriptions(ctx context.Context) error {
	c := r.main()
	if _, err := pgcluster.ReadDataFile(c.DataDir, "PG_VERSION", 64); err != nil {
		return nil
	}
	if err := r.ensureRunning(ctx, 1); err != nil {
		r.log.Warn("the pool's old postgres does not start: its subscriptions cannot be dropped; drop their slots on the source by hand if any remain", "err", err)
		return nil
	}
	subs, err := listSubscriptions(ctx, c, localPort)
	if err != nil {
		return err
	}
	for _, s := range subs {
		if err := execIn(ctx, c, localPort, s.db, "DROP SUBSCRIPTION "+pgx.Identifier{s.name}.Sanitize()); err != nil {
			return fmt.Errorf("drop the subscription %s (and its slot on the source, which would otherwise keep WAL there): %w", s.name, err)
		}
		r.log.Info("subscription and its slot on the source dropped", "subscription", s.name, "db", s.db)
	}
	return nil
}

type subscription struct{ name, db string }

func listSubscriptions(ctx context.Context, c *pgcluster.Cluster, port int) ([]subscription, error) {
	conn, err := pgcluster.Connect(ctx, c.SocketConnString(port, "postgres", "postgres"))
	if err != nil {
		return nil, err
	}
	defer func() { _ = conn.Close(context.Background()) }() // read-only session
	rows, err := conn.Query(ctx, "SELECT s.subname, d.datname FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid ORDER BY 1")
	if err != nil {
		return nil, fmt.Errorf("list subscriptions: %w", err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (subscription, error) {
		var s subscription
		err := row.Scan(&s.name, &s.db)
		return s, err
	})
}

// execIn runs statements, each on its own, in database db of c.
func execIn(ctx context.Context, c *pgcluster.Cluster, port int, db string, stmts ...string) error {
	cc, err := pgcluster.SessionConfig(c.SocketConnString(port, "postgres", "postgres"))
	if err != nil {
		return err
	}
	cc.Database = db
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return err
	}
	for _, q := range stmts {
		if _, err = conn.Exec(ctx, q, pgx.QueryExecModeSimpleProtocol); err != nil {
			break
		}
	}
	if cerr := conn.Close(ctx); err == nil {
		err = cerr
	}
	return err
}

// firstCopy re-creates the pool's postgres, restores the source's schema
// and subscribes in every database, and waits for the initial copy.
func (r *replica) firstCopy(ctx context.Context, t job.Target, params map[string]string, dbs []string, subs map[string]string, bytes *int64) error {
	// Before anything is removed: a source that cannot feed a
	// subscription fails the refresh with what to fix.
	if err := r.checkSource(ctx, params, dbs); err != nil {
		return err
	}
	main := r.pool.MainDir()
	if err := os.Chown(main, int(t.User.UID), int(t.User.GID)); err != nil {
		return fmt.Errorf("hand the pool's main dataset to %s: %w", t.User.Name, err)
	}
	t.Progress.Phase("drop old subscriptions", "", 0)
	if err := r.dropSubscriptions(ctx); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(main, markerFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	c := r.main()
	r.stop(ctx)
	if err := removeDumpRoot(main); err != nil {
		return fmt.Errorf("clear the dump directory: %w", err)
	}
	if err := os.RemoveAll(c.DataDir); err != nil {
		return fmt.Errorf("clear the pool's data directory: %w", err)
	}
	if err := c.Init(ctx, pgcluster.InitOptions{}); err != nil {
		return fmt.Errorf("initdb in the pool: %w", err)
	}
	if err := r.ensureRunning(ctx, len(dbs)); err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			// A half-made subscriber must not keep its slots busy.
			c.Kill()
		}
	}()
	// The schema only: the subscription brings the data.
	dumpParams, cleanup, err := pgsource.PrivateCopies(params, t.User, r.log)
	if err != nil {
		return err
	}
	defer cleanup()
	schemaCfg := r.j.cfg
	schemaCfg.Logical.Format = config.FormatPiped
	schemaCfg.Logical.DumpOptions = append(append([]string(nil), schemaCfg.Logical.DumpOptions...), "--schema-only", "--no-publications", "--no-subscriptions")
	sj := &Job{cfg: schemaCfg, log: r.j.log, onStart: r.j.onStart}
	rr := &run{job: sj, t: t, c: c, params: dumpParams, log: r.log}
	if err := rr.restoreAll(ctx, dbs, bytes); err != nil {
		return err
	}
	if err := r.writePrivate(); err != nil {
		return err
	}
	for _, db := range dbs {
		if err := r.dropStaleSlot(ctx, params, subs[db]); err != nil {
			return err
		}
		q := fmt.Sprintf("CREATE SUBSCRIPTION %s CONNECTION %s PUBLICATION %s WITH (slot_name = %s, copy_data = true, create_slot = true, disable_on_error = true)",
			pgx.Identifier{subs[db]}.Sanitize(), sqlLiteral(r.subscriptionConninfo(params, db)),
			pgx.Identifier{r.j.cfg.Logical.Replication.Publication}.Sanitize(), sqlLiteral(subs[db]))
		if err := execIn(ctx, c, localPort, db, q); err != nil {
			return fmt.Errorf("subscribe database %s to publication %s on the source: %w", db, r.j.cfg.Logical.Replication.Publication, err)
		}
	}
	if err := r.waitInitialCopy(ctx, t, c, subs); err != nil {
		return err
	}
	if err := r.writeMarker(replicationMarker{Publication: r.j.cfg.Logical.Replication.Publication, Subscriptions: subs, CopiedAt: time.Now().UTC()}); err != nil {
		return fmt.Errorf("record the finished first copy: %w", err)
	}
	ok = true
	return nil
}

// checkSource checks that the source can feed the subscriptions:
// wal_level logical and the publication in every database.
func (r *replica) checkSource(ctx context.Context, params map[string]string, dbs []string) error {
	pub := r.j.cfg.Logical.Replication.Publication
	for i, db := range dbs {
		conn, err := connectSource(ctx, params, db)
		if err != nil {
			return fmt.Errorf("connect to database %s on the source: %w", db, err)
		}
		var level string
		var found bool
		err = conn.QueryRow(ctx, "SELECT current_setting('wal_level'), EXISTS (SELECT FROM pg_publication WHERE pubname = $1)", pub).Scan(&level, &found)
		_ = conn.Close(context.Background()) // read-only session
		switch {
		case err != nil:
			return fmt.Errorf("check the source for logical replication: %w", err)
		case i == 0 && level != "logical":
			return fmt.Errorf("the source's wal_level is %s: logical replication (retrieval.logical.replication) needs wal_level = logical on the source (set it and restart the source)", level)
		case !found:
			return fmt.Errorf("retrieval.logical.replication.publication %q does not exist in database %s on the source: create it there (CREATE PUBLICATION %s FOR ALL TABLES) or name the existing one", pub, db, pgx.Identifier{pub}.Sanitize())
		}
	}
	return nil
}

// dropStaleSlot drops an inactive slot of this name on the source: one a
// killed agent's first copy left (its subscriber is gone with PGDATA).
func (r *replica) dropStaleSlot(ctx context.Context, params map[string]string, slot string) error {
	conn, err := connectSource(ctx, params, params["dbname"])
	if err != nil {
		return fmt.Errorf("connect to the source: %w", err)
	}
	defer func() { _ = conn.Close(context.Background()) }() // the drop is done or failed
	var active pgtype.Bool
	err = conn.QueryRow(ctx, "SELECT active FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&active)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look for the slot %s on the source: %w", slot, err)
	}
	if active.Bool {
		return fmt.Errorf("the slot %s on the source is in use by another subscriber: give this agent its own retrieval.logical.replication.slotName", slot)
	}
	if _, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", slot); err != nil {
		return fmt.Errorf("drop the stale slot %s on the source: %w", slot, err)
	}
	r.log.Warn("dropped a stale replication slot on the source left by an interrupted first copy", "slot", slot)
	return nil
}

// waitInitialCopy waits until every table of every subscription is
// synchronized ('r'eady).
func (r *replica) waitInitialCopy(ctx context.Context, t job.Target, c *pgcluster.Cluster, subs map[string]string) error {
	started := false
	for {
		var total, ready int64
		for db, sub := range subs {
			cc, err := pgcluster.SessionConfig(c.SocketConnString(localPort, "postgres", "postgres"))
			if err != nil {
				return err
			}
			cc.Database = db
			conn, err := pgx.ConnectConfig(ctx, cc)
			if err != nil {
				return err
			}
			var n, rd int64
			var enabled bool
			err = conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_subscription_rel sr JOIN pg_subscription s ON s.oid = sr.srsubid WHERE s.subname = $1),
				(SELECT count(*) FROM pg_subscription_rel sr JOIN pg_subscription s ON s.oid = sr.srsubid WHERE s.subname = $1 AND sr.srsubstate = 'r'),
				(SELECT subenabled FROM pg_subscription WHERE subname = $1)`, sub).Scan(&n, &rd, &enabled)
			_ = conn.Close(context.Background()) // read-only session
			if err != nil {
				return fmt.Errorf("read the initial copy's state of %s: %w", sub, err)
			}
			if !enabled {
				return fmt.Errorf("the subscription %s was disabled by an error during the initial copy: %s", sub, pgcluster.TailFile(c.LogFile(), 10))
			}
			total += n
			ready += rd
		}
		if !started {
			t.Progress.Phase("initial copy", job.UnitRelations, total)
			started = true
		}
		if d := ready - t.Progress.State().Done; d > 0 {
			t.Progress.Add(d)
		}
		if ready == total {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// subscriptionConninfo is the source for a subscription of database db:
// the password only through the private password file, TLS files as the
// private copies.
func (r *replica) subscriptionConninfo(params map[string]string, db string) string {
	p := maps.Clone(params)
	delete(p, "password")
	p["passfile"] = filepath.Join(r.priv, passFileName)
	for _, k := range tlsKeys {
		if v := p[k]; v != "" && v != "system" {
			p[k] = filepath.Join(r.priv, k)
		}
	}
	p["dbname"] = db
	p["application_name"] = "thinlab_" + r.pool.Name()
	return pgsource.Conninfo(p)
}

func sqlLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func connectSource(ctx context.Context, params map[string]string, db string) (*pgx.Conn, error) {
	cc, err := pgcluster.SessionConfig(pgsource.PgxConnString(params, db))
	if err != nil {
		return nil, fmt.Errorf("retrieval.source: %w", err)
	}
	cc.Password = params["password"]
	cc.ConnectTimeout = 10 * time.Second
	return pgx.ConnectConfig(ctx, cc)
}

// Private files for the subscriptions.
const passFileName = "pgpass"

var tlsKeys = []string{"sslrootcert", "sslcert", "sslkey", "sslcrl"}

// writePrivate (re)writes the private directory: root-owned and readable
// by provision.osUser's group only (no clone's uid reaches it); the
// password file and TLS copies are 0600 provision.osUser's, as libpq in
// the apply workers (running as that user) wants them.
func (r *replica) writePrivate() error {
	if err := os.MkdirAll(filepath.Dir(r.priv), 0o755); err != nil { //nolint:gosec // G301: provision.osUser traverses it to its private directory
		return fmt.Errorf("private directory for the subscriptions: %w", err)
	}
	if err := os.Mkdir(r.priv, 0o750); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("private directory for the subscriptions: %w", err)
	}
	st, err := os.Lstat(r.priv)
	if err != nil {
		return err
	}
	if !st.IsDir() || st.Sys().(*syscall.Stat_t).Uid != 0 && os.Geteuid() == 0 {
		return fmt.Errorf("%s must be a directory owned by root", r.priv)
	}
	if err := os.Chown(r.priv, os.Geteuid(), int(r.user.GID)); err != nil {
		return err
	}
	if err := os.Chmod(r.priv, 0o750); err != nil { //nolint:gosec // G302: the group is provision.osUser's: the apply workers read the password file
		return err
	}
	params, err := pgsource.Params(r.j.cfg.Source)
	if err != nil {
		return err
	}
	pass := ""
	if pw := params["password"]; pw != "" {
		pass = "*:*:*:*:" + pgpassEscape(pw) + "\n"
	}
	if err := r.writePrivateFile(passFileName, []byte(pass)); err != nil {
		return err
	}
	for _, k := range tlsKeys {
		if v := params[k]; v != "" && v != "system" {
			data, err := os.ReadFile(v) //nolint:gosec // G304: the administrator's configured TLS file
			if err != nil {
				return fmt.Errorf("retrieval.source %s: %w", k, err)
			}
			if err := r.writePrivateFile(k, data); err != nil {
				return err
			}
		}
	}
	return nil
}

// writePrivateFile replaces name in the private directory atomically,
// 0600 provision.osUser's.
func (r *replica) writePrivateFile(name string, content []byte) error {
	tmp := filepath.Join(r.priv, "."+name+".tmp")
	_ = os.Remove(tmp)                                                                   // a leftover of a crash
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600) //nolint:gosec // G304: a fixed name in the root-owned private directory
	if err != nil {
		return err
	}
	_, err = f.Write(content)
	if err == nil {
		err = f.Chown(int(r.user.UID), int(r.user.GID))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(r.priv, name))
	}
	if err != nil {
		_ = os.Remove(tmp) // the error says what failed
		return fmt.Errorf("write %s: %w", filepath.Join(r.priv, name), err)
	}
	return nil
}

// pgpassEscape escapes ':' and '\' for a .pgpass field.
func pgpassEscape(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), `:`, `\:`)
}

// recoverReplication is Recover with replication: what a killed agent
// left of a cycle goes, and a pool with a finished first copy gets its
// subscriber running again and its lag measured. An unfinished first
// copy is redone by the next refresh (which drops its subscriptions).
func (j *Job) recoverReplication(ctx context.Context, t job.Target) error {
	r, err := j.replica(t)
	if err != nil {
		return err
	}
	r.op.Lock()
	defer r.op.Unlock()
	if err := r.recoverLeftovers(ctx); err != nil {
		return err
	}
	if err := removeDumpRoot(t.Pool.MainDir()); err != nil {
		return fmt.Errorf("remove the interrupted refresh's dump directory: %w", err)
	}
	m, ok := r.readMarker()
	if !ok {
		return nil
	}
	if err := r.ensureRunning(ctx, len(m.Subscriptions)); err != nil {
		return err
	}
	r.startLagLoop()
	return nil
}

// dropReplication, for a refresh without replication, drops the
// subscriptions (and their slots on the source) of a pool that replicated
// before.
func (j *Job) dropReplication(ctx context.Context, t job.Target) error {
	if _, err := os.Stat(filepath.Join(t.Pool.MainDir(), markerFile)); err != nil {
		return nil
	}
	r, err := j.replica(t)
	if err != nil {
		return err
	}
	r.op.Lock()
	defer r.op.Unlock()
	if err := r.dropSubscriptions(ctx); err != nil {
		return err
	}
	r.stop(ctx)
	// The source's password is not needed here any more.
	if err := os.RemoveAll(r.priv); err != nil {
		return fmt.Errorf("remove the subscriptions' private directory: %w", err)
	}
	return os.Remove(filepath.Join(t.Pool.MainDir(), markerFile))
}
