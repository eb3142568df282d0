package logical

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/agent/retrieval/job"
	"github.com/thinlab/thinlab/agent/retrieval/pgsource"
	"github.com/thinlab/thinlab/agent/retrieval/preprocess"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

// cycle snapshots the subscriber's state (see replication.go) without
// stopping it.
func (r *replica) cycle(ctx context.Context, t job.Target, params map[string]string, subs map[string]string) (storage.Snapshot, error) {
	if err := r.recoverLeftovers(ctx); err != nil {
		return storage.Snapshot{}, err
	}
	if err := r.ensureRunning(ctx, len(subs)); err != nil {
		return storage.Snapshot{}, err
	}
	t.Progress.Phase("catch up", "", 0)
	at, err := r.dataStateAt(ctx, params, subs, t.NotBefore)
	if err != nil {
		return storage.Snapshot{}, err
	}
	t.Progress.Phase("snapshot", "", 0)
	main := r.main()
	if err := execIn(ctx, main, localPort, "postgres", "CHECKPOINT"); err != nil {
		return storage.Snapshot{}, fmt.Errorf("checkpoint the subscriber: %w", err)
	}
	if err := storage.SyncFS(r.pool.MainDir()); err != nil {
		return storage.Snapshot{}, err
	}
	tmp, err := r.pool.Snapshot(ctx, storage.SnapshotOptions{DataStateAt: tempStateAt, Message: messageTemp, Labels: map[string]string{LabelKind: kindTemp, storage.LabelTransient: "true"}})
	if err != nil {
		return storage.Snapshot{}, fmt.Errorf("snapshot the subscriber's state: %w", err)
	}
	// Whatever happens below, the temporary clone and snapshot go; on a
	// fresh context, since ctx may be what ended the cycle.
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := r.recoverLeftovers(cctx); err != nil {
			r.log.Error("removing the cycle's temporary clone and snapshot failed; the next cycle retries", "err", err)
		}
	}()
	clone, err := r.pool.Clone(ctx, tmp.ID, tempClone)
	if err != nil {
		return storage.Snapshot{}, fmt.Errorf("temporary clone of the subscriber's state: %w", err)
	}
	c := r.throwaway(clone.Mountpoint)
	settings := subscriberSettings(0)
	// No apply worker at all: the throwaway never connects to the source.
	settings["max_logical_replication_workers"] = "0"
	settings["max_worker_processes"] = "8"
	if err := c.Start(ctx, throwawayPort, "", settings); err != nil {
		return storage.Snapshot{}, fmt.Errorf("start postgres on the temporary clone: %w", err)
	}
	defer c.Kill() // a no-op once it stopped cleanly
	if err := detachSubscriptions(ctx, c); err != nil {
		return storage.Snapshot{}, err
	}
	pg := preprocess.Postgres{BinDir: r.binDir, User: r.user, SocketDir: c.DataDir, Port: throwawayPort}
	if err := preprocess.Run(ctx, r.j.cfg.Preprocess, pg, t.Progress, r.log); err != nil {
		return storage.Snapshot{}, err
	}
	if err := execIn(ctx, c, throwawayPort, "postgres", "CHECKPOINT"); err != nil {
		return storage.Snapshot{}, fmt.Errorf("checkpoint the temporary clone: %w", err)
	}
	if err := c.Stop(ctx, "fast"); err != nil {
		return storage.Snapshot{}, fmt.Errorf("stop the temporary clone's postgres: %w", err)
	}
	if err := storage.SyncFS(r.pool.MainDir()); err != nil {
		return storage.Snapshot{}, err
	}
	snap, err := r.snapper.SnapshotClone(ctx, tempClone, storage.SnapshotOptions{DataStateAt: at, Message: Mode + " refresh", Labels: map[string]string{LabelKind: kindReplicated}})
	if errors.Is(err, storage.ErrExists) {
		return storage.Snapshot{}, fmt.Errorf("a snapshot of %s exists already: %w", at.Format(time.RFC3339), job.ErrNoNewData)
	}
	if err != nil {
		return storage.Snapshot{}, fmt.Errorf("snapshot the replicated state: %w", err)
	}
	return snap, nil
}

// detachSubscriptions removes every subscription from the throwaway
// postgres without touching the source: disabled, detached from its slot
// (slot_name = NONE), dropped. pg_subscription (the source's address)
// stays out of the snapshot.
func detachSubscriptions(ctx context.Context, c *pgcluster.Cluster) error {
	subs, err := listSubscriptions(ctx, c, throwawayPort)
	if err != nil {
		return err
	}
	for _, s := range subs {
		id := pgx.Identifier{s.name}.Sanitize()
		if err := execIn(ctx, c, throwawayPort, s.db,
			"ALTER SUBSCRIPTION "+id+" DISABLE",
			"ALTER SUBSCRIPTION "+id+" SET (slot_name = NONE)",
			"DROP SUBSCRIPTION "+id); err != nil {
			return fmt.Errorf("remove the subscription %s from the snapshot: %w", s.name, err)
		}
	}
	return nil
}

// dataStateAt waits until every subscription has applied what the source
// had written when asked (T0, the source's clock) and returns T0; it
// retries while T0 is not after notBefore (second-precision IDs). Without
// the source, or when the subscriptions do not catch up in time, it is
// the oldest time of a keepalive a subscription processed: the source
// sends one once it has sent all its WAL, so everything committed before
// it is applied.
func (r *replica) dataStateAt(ctx context.Context, params map[string]string, subs map[string]string, notBefore time.Time) (time.Time, error) {
	names := make([]string, 0, len(subs))
	for _, n := range subs {
		names = append(names, n)
	}
	deadline := time.Now().Add(catchUpTimeout)
	for time.Now().Before(deadline) {
		t0, lsn, err := sourcePosition(ctx, params)
		if err != nil {
			r.log.Warn("the source cannot be asked for its position; the snapshot is dated by the last keepalive", "err", err)
			break
		}
		if !t0.Truncate(time.Second).After(notBefore) {
			if err := sleepCtx(ctx, time.Second); err != nil {
				return time.Time{}, err
			}
			continue
		}
		for time.Now().Before(deadline) {
			n, err := r.caughtUp(ctx, names, lsn)
			if err != nil {
				return time.Time{}, err
			}
			if n == len(names) {
				return t0.UTC().Truncate(time.Second), nil
			}
			if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
				return time.Time{}, err
			}
		}
		r.log.Warn("the subscriptions did not catch up with the source in time; the snapshot is dated by the last keepalive", "timeout", catchUpTimeout)
	}
	at, err := r.lastKeepalive(ctx, names)
	if err != nil {
		return time.Time{}, err
	}
	at = at.UTC().Truncate(time.Second)
	if !at.After(notBefore) {
		return time.Time{}, fmt.Errorf("the subscriptions have applied nothing known to be newer than the newest snapshot (%s): %w", notBefore.Format(time.RFC3339), job.ErrNoNewData)
	}
	return at, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// sourcePosition is the source's clock and WAL insert position (which
// covers transactions committed asynchronously, not yet written).
func sourcePosition(ctx context.Context, params map[string]string) (time.Time, string, error) {
	conn, err := connectSource(ctx, params, params["dbname"])
	if err != nil {
		return time.Time{}, "", err
	}
	defer func() { _ = conn.Close(context.Background()) }() // read-only session
	var t0 time.Time
	var lsn string
	err = conn.QueryRow(ctx, "SELECT now(), pg_current_wal_insert_lsn()::text").Scan(&t0, &lsn)
	return t0, lsn, err
}

// caughtUp counts the subscriptions whose apply worker processed a
// keepalive at or past lsn (all changes before it are applied then).
func (r *replica) caughtUp(ctx context.Context, names []string, lsn string) (int, error) {
	conn, err := pgcluster.Connect(ctx, r.main().SocketConnString(localPort, "postgres", "postgres"))
	if err != nil {
		return 0, fmt.Errorf("connect to the subscriber: %w", err)
	}
	defer func() { _ = conn.Close(context.Background()) }() // read-only session
	var n int
	err = conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_subscription
		WHERE relid IS NULL AND subname = ANY($1) AND latest_end_lsn >= $2::pg_lsn`, names, lsn).Scan(&n)
	return n, err
}

// lastKeepalive is the oldest latest_end_time of the subscriptions.
func (r *replica) lastKeepalive(ctx context.Context, names []string) (time.Time, error) {
	conn, err := pgcluster.Connect(ctx, r.main().SocketConnString(localPort, "postgres", "postgres"))
	if err != nil {
		return time.Time{}, fmt.Errorf("connect to the subscriber: %w", err)
	}
	defer func() { _ = conn.Close(context.Background()) }() // read-only session
	var at pgtype.Timestamptz
	var n int
	if err := conn.QueryRow(ctx, `SELECT min(latest_end_time), count(latest_end_time) FROM pg_stat_subscription
		WHERE relid IS NULL AND subname = ANY($1)`, names).Scan(&at, &n); err != nil {
		return time.Time{}, fmt.Errorf("read the subscriptions' state: %w", err)
	}
	if !at.Valid || n != len(names) {
		return time.Time{}, errors.New("a subscription's apply worker has not heard from the source: nothing is known to be applied (is the source reachable?)")
	}
	return at.Time, nil
}

// throwaway is the postgres of the temporary clone, run as
// provision.osUser (the clone holds the pool's data, no clone user's).
func (r *replica) throwaway(mountpoint string) *pgcluster.Cluster {
	return &pgcluster.Cluster{DataDir: filepath.Join(mountpoint, storage.DataSubdir), BinDir: r.binDir, User: r.user, Logger: r.log, DieWithParent: true}
}

// recoverLeftovers removes what an interrupted cycle left: the temporary
// clone (its postgres stopped first) and the temporary snapshot.
func (r *replica) recoverLeftovers(ctx context.Context) error {
	clones, err := r.pool.Clones(ctx)
	if err != nil {
		return fmt.Errorf("list clones: %w", err)
	}
	for _, cl := range clones {
		if cl.Name != tempClone {
			continue
		}
		r.throwaway(cl.Mountpoint).Kill()
		if err := r.pool.DestroyClone(ctx, cl.Name); err != nil && !errors.Is(err, storage.ErrNotFound) {
			return fmt.Errorf("remove the temporary clone %s: %w", cl.Name, err)
		}
	}
	snaps, err := r.pool.Snapshots(ctx)
	if err != nil {
		return fmt.Errorf("list snapshots: %w", err)
	}
	for _, s := range snaps {
		if s.Labels[LabelKind] != kindTemp {
			continue
		}
		if err := r.pool.DestroySnapshot(ctx, s.ID, false); err != nil && !errors.Is(err, storage.ErrNotFound) {
			return fmt.Errorf("remove the temporary snapshot %s: %w", s.ID, err)
		}
	}
	return nil
}

// startLagLoop starts measuring the lag every lagInterval (once).
func (r *replica) startLagLoop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.loopStarted {
		return
	}
	r.loopStarted = true
	r.j.wg.Go(func() {
		tk := time.NewTicker(lagInterval)
		defer tk.Stop()
		for {
			select {
			case <-r.j.ctx.Done():
				return
			case <-tk.C:
				_, _ = r.CheckLag(r.j.ctx) // recorded in the report
			}
		}
	})
}

// CheckLag measures the subscriptions' lag, records it and raises or
// clears the lag_high, source_unreachable and subscription_disabled
// alerts. While a first copy or a cycle runs it does nothing.
func (r *replica) CheckLag(ctx context.Context) (job.Lag, error) {
	if !r.op.TryLock() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.lag != nil {
			return *r.lag, nil
		}
		return job.Lag{}, errors.New("a first copy or snapshot runs")
	}
	defer r.op.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	m, ok := r.readMarker()
	if !ok || !r.main().Running() {
		return job.Lag{}, errors.New("the pool has no running subscriber")
	}
	names := make([]string, 0, len(m.Subscriptions))
	for _, n := range m.Subscriptions {
		names = append(names, n)
	}
	lag := job.Lag{Kind: job.LagSubscription, CheckedAt: time.Now()}
	conn, err := pgcluster.Connect(ctx, r.main().SocketConnString(localPort, "postgres", "postgres"))
	if err != nil {
		return lag, fmt.Errorf("connect to the subscriber: %w", err)
	}
	var disabled []string
	var keepalive pgtype.Timestamptz
	err = conn.QueryRow(ctx, `SELECT coalesce(array_agg(s.subname ORDER BY s.subname) FILTER (WHERE NOT s.subenabled), '{}'),
		(SELECT min(latest_end_time) FROM pg_stat_subscription st WHERE st.relid IS NULL AND st.subname = ANY($1))
		FROM pg_subscription s WHERE s.subname = ANY($1)`, names).Scan(&disabled, &keepalive)
	_ = conn.Close(context.Background()) // read-only session
	if err != nil {
		return lag, fmt.Errorf("read the subscriptions' state: %w", err)
	}
	if len(disabled) > 0 {
		r.alert(AlertSubscriptionDisabled, "error", fmt.Sprintf("subscription %v was disabled by an apply error (a schema change on the source?; see the pool's postgres log): the next refresh copies the source again", disabled))
	} else {
		r.clearAlert(AlertSubscriptionDisabled)
	}
	params, perr := pgsource.Params(r.j.cfg.Source)
	var behind pgtype.Int8
	if perr == nil {
		sc, err := connectSource(ctx, params, params["dbname"])
		perr = err
		if err == nil {
			perr = sc.QueryRow(ctx, `SELECT max(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn))::int8
				FROM pg_replication_slots WHERE slot_name = ANY($1)`, names).Scan(&behind)
			_ = sc.Close(context.Background()) // read-only session
		}
	}
	now := time.Now()
	since := func() float64 {
		ref := r.caughtUpAt
		if keepalive.Valid && keepalive.Time.After(ref) {
			ref = keepalive.Time
		}
		if ref.IsZero() {
			return 0
		}
		return max(now.Sub(ref).Seconds(), 0)
	}
	if perr == nil {
		r.clearAlert(AlertSourceUnreachable)
		lag.SourceReachable = true
		lag.Bytes = max(behind.Int64, 0)
		if lag.Bytes == 0 {
			r.mu.Lock()
			r.caughtUpAt = now
			r.mu.Unlock()
		} else {
			r.mu.Lock()
			lag.Seconds = since()
			r.mu.Unlock()
		}
	} else {
		r.alert(AlertSourceUnreachable, "warning", "the source cannot be asked for its WAL position; the subscriber keeps its last state: "+perr.Error())
		r.mu.Lock()
		lag.Seconds = since()
		r.mu.Unlock()
	}
	r.mu.Lock()
	r.lag = &lag
	_, raised := r.alerts[AlertLagHigh]
	r.mu.Unlock()
	if limit := float64(r.j.cfg.Logical.Replication.LagAlert()); lag.Seconds >= limit {
		msg := fmt.Sprintf("the subscription is %.0f s (%d bytes) behind the source (limit retrieval.logical.replication.lagAlertSeconds = %.0f s)", lag.Seconds, lag.Bytes, limit)
		r.alert(AlertLagHigh, "warning", msg)
		if !raised { // once per episode, not every check
			r.j.mu.Lock()
			bus := r.j.events
			r.j.mu.Unlock()
			bus.Emit(events.Event{Kind: events.LagHigh, Severity: events.Warning, Pool: r.pool.Name(), Message: msg})
		}
	} else {
		r.clearAlert(AlertLagHigh)
	}
	return lag, nil
}

func (r *replica) alert(key, level, msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	a := r.alerts[key]
	a.Level = level
	a.Message = msg
	a.LastSeen = time.Now()
	a.Count++
	r.alerts[key] = a
}

func (r *replica) clearAlert(key string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.alerts, key)
}

// report is the pool's lag and alerts.
func (r *replica) report() job.Report {
	r.mu.Lock()
	defer r.mu.Unlock()
	rep := job.Report{Alerts: maps.Clone(r.alerts)}
	if r.lag != nil {
		l := *r.lag
		rep.Lag = &l
	}
	return rep
}
