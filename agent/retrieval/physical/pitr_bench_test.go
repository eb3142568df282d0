package physical

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

// BenchmarkPITR prints
//
//	BENCH pitr_clone_ready S s   POST-/clone-equivalent (Manager.Create) to OK for a point-in-time clone
//	                             whose recovery replays THINLAB_BENCH_PITR_WAL_MB MiB of archived WAL
//	BENCH pitr_ratio R           pitr_clone_ready / the same recovery done plainly (a postgres with
//	                             recovery.signal, the same restore_command, target and settings,
//	                             started and polled until promoted, as pg_ctl -w would)
//
// THINLAB_BENCH_PITR_WAL_MB defaults to 256 (the figure is 1024).
// Run with `go test -count=1 -run '^$' -bench PITR -benchtime 1x ./agent/retrieval/physical/`.
func BenchmarkPITR(b *testing.B) {
	walMB := 256
	if v := os.Getenv("THINLAB_BENCH_PITR_WAL_MB"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("THINLAB_BENCH_PITR_WAL_MB %q: want a number of MiB", v)
		}
		walMB = n
	}
	// The standby, the clone and the plain recovery each hold the
	// replayed data and WAL.
	harnessPoolSize = int64(max(1024, 16*walMB)) << 20
	e := newPITREnv(b)
	ctx := b.Context()
	e.insert("base")
	e.waitReplayed("base")
	pre, err := e.r.PreSnapshot(ctx)
	if err != nil {
		b.Fatal(err)
	}
	// WAL to replay: inserts of ~250-byte rows until walMB MiB of WAL.
	e.src.Exec(b, "postgres", "CREATE TABLE big (id bigint, pad text)", "SELECT pg_catalog.pg_switch_wal()")
	start := e.sourceLSN()
	for i := 0; e.sourceLSN()-start < uint64(walMB)<<20; i++ {
		e.src.Exec(b, "postgres", fmt.Sprintf("INSERT INTO big SELECT g, repeat(md5(g::text), 6) FROM generate_series(%d, %d) g", i*100000, i*100000+99999))
	}
	replayed := e.sourceLSN() - start
	e.src.Exec(b, "postgres", "INSERT INTO t (note) VALUES ('target')")
	time.Sleep(50 * time.Millisecond)
	target := time.Now()
	time.Sleep(50 * time.Millisecond)
	e.src.Exec(b, "postgres", "INSERT INTO t (note) VALUES ('after')")
	later := time.Now()
	e.switchWAL()
	e.waitArchived(later.Add(-30 * time.Millisecond))
	var rows int64
	src := e.src.Connect(b, "postgres")
	err = src.QueryRow(ctx, "SELECT count(*) FROM big").Scan(&rows)
	_ = src.Close(context.Background()) // a read
	if err != nil {
		b.Fatal(err)
	}

	var ready time.Duration
	for i := 0; b.Loop(); i++ {
		id := fmt.Sprintf("pit%d", i)
		t0 := time.Now()
		c := e.create(clone.CreateRequest{ID: id, PointInTime: &clone.PointInTime{Time: target}})
		ready = time.Since(t0)
		conn := e.conn(c)
		if got := e.scan(conn, "SELECT (SELECT count(*) FROM public.big)::text || '|' || (SELECT string_agg(note, ',' ORDER BY id) FROM public.t)"); got != fmt.Sprintf("%d|initial,base,target", rows) {
			b.Fatalf("point-in-time clone at %s: %s, want %d rows in big and initial,base,target", target, got, rows)
		}
		_ = conn.Close(context.Background()) // before the destroy
		if err := e.m.Destroy(ctx, id); err != nil {
			b.Fatal(err)
		}
		if _, err := e.m.Wait(ctx, id); err == nil {
			b.Fatalf("clone %s still there after destroy", id)
		}
	}

	// The same recovery, plainly.
	cl, err := e.pool.Clone(ctx, pre.ID, "plain")
	if err != nil {
		b.Fatal(err)
	}
	dataDir := filepath.Join(cl.Mountpoint, storage.DataSubdir)
	c := &pgcluster.Cluster{DataDir: dataDir, User: e.r.user, DieWithParent: true, LogPath: filepath.Join(e.priv, "plain.log")}
	b.Cleanup(func() {
		c.Kill()
		_ = e.pool.DestroyClone(context.Background(), "plain")
	})
	if err := pgcluster.AsUser(e.r.user.UID, e.r.user.GID, func() error {
		if err := os.Remove(filepath.Join(dataDir, "standby.signal")); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dataDir, "recovery.signal"), nil, 0o600)
	}); err != nil {
		b.Fatal(err)
	}
	settings := maps.Clone(e.cfg.Retrieval.Physical.Settings)
	maps.Copy(settings, map[string]string{"hot_standby": "on", "archive_mode": "off", "primary_conninfo": "",
		"restore_command": e.r.restoreCommand(dataDir), "recovery_target_action": "promote", "recovery_target_timeline": "latest",
		"recovery_target_time": target.UTC().Format("2006-01-02 15:04:05.999999") + "+00"})
	t0 := time.Now()
	if err := c.Start(ctx, 5497, "", settings); err != nil {
		b.Fatal(err)
	}
	for {
		conn, err := pgcluster.Connect(ctx, c.SocketConnString(5497, "postgres", "postgres"))
		if err == nil {
			var in bool
			err = conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&in)
			_ = conn.Close(context.Background()) // a probe
			if err == nil && !in {
				break
			}
		}
		if time.Since(t0) > 10*time.Minute {
			b.Fatal("plain recovery did not promote within 10 minutes")
		}
		time.Sleep(20 * time.Millisecond)
	}
	plain := time.Since(t0)
	fmt.Printf("BENCH pitr_clone_ready %.2f s (%d MiB of WAL replayed)\n", ready.Seconds(), replayed>>20)
	fmt.Printf("BENCH pitr_ratio %.2f (plain recovery %.2f s)\n", ready.Seconds()/plain.Seconds(), plain.Seconds())
}

// sourceLSN is the source's current WAL position in bytes.
func (e *pitrEnv) sourceLSN() uint64 {
	e.t.Helper()
	var s string
	conn := e.src.Connect(e.t, "postgres")
	defer func() { _ = conn.Close(context.Background()) }() // a read
	if err := conn.QueryRow(e.t.Context(), "SELECT pg_catalog.pg_current_wal_lsn()::text").Scan(&s); err != nil {
		e.t.Fatal(err)
	}
	n, err := ParseLSN(s)
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}
