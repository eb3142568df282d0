package physical

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/agent/retrieval/pgsource"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

// CheckLag measures the standby's replay lag, records it in the status
// and raises or clears the lag_high and source_unreachable alerts.
func (r *Retriever) CheckLag(ctx context.Context) (Lag, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	lag, err := r.measureLag(ctx)
	if err != nil {
		return lag, err
	}
	r.mu.Lock()
	r.status.Lag = lag
	r.mu.Unlock()
	if limit := float64(r.cfg.LagAlert()); lag.Seconds >= limit {
		err := fmt.Errorf("the standby is %.0f s (%d bytes) behind the source (limit retrieval.physical.lagAlertSeconds = %.0f s)", lag.Seconds, lag.Bytes, limit)
		r.mu.Lock()
		_, raised := r.status.Alerts[AlertLagHigh]
		r.mu.Unlock()
		r.alert(AlertLagHigh, "warning", err)
		if !raised { // once per episode, not every check
			r.events.Emit(events.Event{Kind: events.LagHigh, Severity: events.Warning, Pool: r.pool.Name(), Message: err.Error()})
		}
	} else {
		r.clearAlert(AlertLagHigh)
	}
	return lag, nil
}

func (r *Retriever) measureLag(ctx context.Context) (Lag, error) {
	lag := Lag{CheckedAt: time.Now()}
	sb, err := pgcluster.Connect(ctx, r.standby().SocketConnString(standbyPort, "postgres", "postgres"))
	if err != nil {
		return lag, fmt.Errorf("connect to the standby: %w", err)
	}
	defer func() { _ = sb.Close(context.Background()) }() // read-only session
	var replay, receive pgtype.Text
	var ts pgtype.Timestamptz
	var recvBehind pgtype.Int8
	if err := sb.QueryRow(ctx, `SELECT pg_last_wal_replay_lsn()::text, pg_last_wal_receive_lsn()::text, pg_last_xact_replay_timestamp(),
		pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::int8`).Scan(&replay, &receive, &ts, &recvBehind); err != nil {
		return lag, fmt.Errorf("read the standby's replay position: %w", err)
	}
	lag.ReplayLSN = replay.String
	if ts.Valid {
		lag.ReplayTimestamp = ts.Time.UTC()
	}
	sinceReplay := 0.0
	if ts.Valid {
		sinceReplay = max(time.Since(ts.Time).Seconds(), 0)
	}
	srcLSN, srcErr := r.sourceLSN(ctx)
	switch {
	case srcErr == nil && replay.Valid:
		lag.SourceReachable = true
		r.clearAlert(AlertSourceUnreachable)
		var behind int64
		if err := sb.QueryRow(ctx, "SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)::int8", srcLSN, replay.String).Scan(&behind); err != nil {
			return lag, fmt.Errorf("compare the source's and the standby's positions: %w", err)
		}
		lag.Bytes = max(behind, 0)
		// Caught up means no lag, however long ago the source's last
		// transaction was.
		if lag.Bytes > 0 {
			lag.Seconds = sinceReplay
		}
	default:
		if r.src.SourceSet() {
			r.alert(AlertSourceUnreachable, "warning", fmt.Errorf("the source cannot be asked for its WAL position; the standby keeps its last state: %v", srcErr))
		}
		if recvBehind.Valid {
			lag.Bytes = max(recvBehind.Int64, 0)
		}
		// Without the source, the time since the last replayed
		// transaction is the best measure there is.
		lag.Seconds = sinceReplay
	}
	return lag, nil
}

// sourceLSN asks the source for its current WAL position.
func (r *Retriever) sourceLSN(ctx context.Context) (string, error) {
	if !r.src.SourceSet() {
		return "", fmt.Errorf("no retrieval.source")
	}
	p := r.sourceParams()
	cc, err := pgcluster.SessionConfig(pgsource.PgxConnString(p, p["dbname"]))
	if err != nil {
		return "", fmt.Errorf("retrieval.source: %w", err)
	}
	cc.Password = p["password"]
	cc.ConnectTimeout = 10 * time.Second
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return "", err
	}
	defer func() { _ = conn.Close(context.Background()) }() // read-only session
	var lsn string
	err = conn.QueryRow(ctx, "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text").Scan(&lsn)
	return lsn, err
}
