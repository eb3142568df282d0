package logical

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/agent/retrieval/job"
	"github.com/thinlab/thinlab/agent/retrieval/retrievaltest"
	"github.com/thinlab/thinlab/agent/runtime"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/logtest"
	"github.com/thinlab/thinlab/internal/pgcluster"
	"github.com/thinlab/thinlab/internal/pgtest"
)

// replicationHarness is a replicating job on a fresh btrfs pool.
type replicationHarness struct {
	src  *pgtest.Server
	pool storage.Pool
	j    *Job
	bus  *events.Bus
	slot string
}

func newReplicationHarness(t *testing.T, edit func(*config.Retrieval)) *replicationHarness {
	t.Helper()
	src := retrievaltest.ReplicationSource(t)
	p := clonetest.NewPool(t)
	t.Setenv("THINLAB_TEST_SOURCE_PW", src.Password)
	cfg := testConfig(t, config.Source{Host: "127.0.0.1", Port: src.Port, Username: "postgres", PasswordEnv: "THINLAB_TEST_SOURCE_PW"}, []string{"app"})
	cfg.Logical.Replication = config.Replication{Enabled: true, Publication: "thinlab_pub", SlotName: "thinlab_test"}
	if edit != nil {
		edit(&cfg)
	}
	j, err := New(cfg, (&logtest.Buffer{}).Logger())
	if err != nil {
		t.Fatal(err)
	}
	bus := events.NewBus()
	j.SetEvents(bus)
	t.Cleanup(func() {
		_ = j.Close() // never fails
		(&pgcluster.Cluster{DataDir: filepath.Join(p.MainDir(), storage.DataSubdir), User: pgtest.OSUser(t)}).Kill()
		if err := os.RemoveAll(PrivateDir(p.MainDir(), p.Name())); err != nil {
			t.Errorf("remove the private directory: %v", err)
		}
	})
	return &replicationHarness{src: src, pool: p, j: j, bus: bus, slot: "thinlab_test_app"}
}

// refresh runs the job as the core does and returns its snapshot.
func (h *replicationHarness) refresh(t *testing.T) storage.Snapshot {
	t.Helper()
	out, err := h.j.Run(t.Context(), target(t, h.pool, nil))
	if err != nil {
		t.Fatal(err)
	}
	if out.Snapshot == nil {
		t.Fatal("the replicating job returned no snapshot")
	}
	return *out.Snapshot
}

// mainQuery runs sql (one text value) in app on the pool's subscriber.
func (h *replicationHarness) mainQuery(t *testing.T, sql string) string {
	t.Helper()
	c := &pgcluster.Cluster{DataDir: filepath.Join(h.pool.MainDir(), storage.DataSubdir)}
	conn, err := retrievaltest.ConnectDB(t.Context(), c.SocketConnString(localPort, "postgres", "postgres"), "app")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(context.Background()) }() // read-only
	var out string
	if err := conn.QueryRow(t.Context(), sql).Scan(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

// waitMain waits until sql answers want on the subscriber.
func (h *replicationHarness) waitMain(t *testing.T, sql, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := h.mainQuery(t, sql)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the subscriber answers %s to %s, want %s", got, sql, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sourceSlot is the slot's "active" on the source ("" when it is gone).
func (h *replicationHarness) sourceSlot(t *testing.T) string {
	t.Helper()
	conn := h.src.Connect(t, "postgres")
	defer func() { _ = conn.Close(context.Background()) }() // read-only
	var active bool
	err := conn.QueryRow(t.Context(), "SELECT active FROM pg_replication_slots WHERE slot_name = $1", h.slot).Scan(&active)
	if errors.Is(err, pgx.ErrNoRows) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	if active {
		return "active"
	}
	return "inactive"
}

// TestReplicationRowReachesNextSnapshot: after the first copy the pool's
// postgres stays subscribed; a row committed on the source is in a clone
// of the next snapshot, pre-processed there (not on the subscriber); that
// clone has no subscription, does not follow the source, and the source's
// slot stays, used by the subscriber.
func TestReplicationRowReachesNextSnapshot(t *testing.T) {
	sqlDir := t.TempDir()
	writeFiles(t, sqlDir, map[string]string{"mark.sql": "CREATE TABLE preprocessed AS SELECT count(*) AS users FROM users;\n"})
	h := newReplicationHarness(t, func(c *config.Retrieval) {
		c.Preprocess = config.Preprocess{SQLDir: sqlDir, DBName: "app"}
	})
	first := h.refresh(t)
	if got := retrievaltest.Query(t, h.pool, first.ID, "app", "SELECT count(*)::text FROM users"); got != "1000" {
		t.Fatalf("first snapshot: %s users, want 1000 (the initial copy)", got)
	}
	if s := h.sourceSlot(t); s != "active" {
		t.Fatalf("after the first copy the source's slot is %q, want active", s)
	}
	h.src.Exec(t, "app", "INSERT INTO users (email) VALUES ('committed-after@example.com')")
	next := h.refresh(t)
	if !next.DataStateAt.After(first.DataStateAt) {
		t.Errorf("dataStateAt %s not after the first snapshot's %s", next.DataStateAt, first.DataStateAt)
	}
	clone := retrievaltest.StartClone(t, h.pool, next.ID, "app")
	one := func(sql string) string {
		t.Helper()
		var s string
		if err := clone.QueryRow(t.Context(), sql).Scan(&s); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return s
	}
	if got := one("SELECT count(*)::text FROM users WHERE email = 'committed-after@example.com'"); got != "1" {
		t.Fatalf("the row committed on the source is %s times in the next snapshot's clone, want 1", got)
	}
	if got := one("SELECT count(*)::text FROM users"); got != "1001" {
		t.Errorf("the clone has %s users, want 1001 (no row lost or doubled)", got)
	}
	if got := one("SELECT count(*)::text FROM pg_subscription"); got != "0" {
		t.Errorf("the clone holds %s subscriptions, want none", got)
	}
	// Pre-processing ran on the snapshot's copy, not on the subscriber.
	if got := one("SELECT users::text FROM preprocessed"); got != "1001" {
		t.Errorf("pre-processing saw %s users, want 1001", got)
	}
	if got := h.mainQuery(t, "SELECT count(*)::text FROM pg_class WHERE relname = 'preprocessed'"); got != "0" {
		t.Errorf("pre-processing changed the subscriber")
	}
	// The source goes on; the subscriber follows, the clone does not.
	h.src.Exec(t, "app", "INSERT INTO users (email) VALUES ('later@example.com')")
	h.waitMain(t, "SELECT count(*)::text FROM users WHERE email = 'later@example.com'", "1")
	time.Sleep(500 * time.Millisecond)
	if got := one("SELECT count(*)::text FROM users WHERE email = 'later@example.com'"); got != "0" {
		t.Errorf("the clone replicated a later row from the source")
	}
	if s := h.sourceSlot(t); s != "active" {
		t.Errorf("after a clone started the source's slot is %q, want active (the subscriber's)", s)
	}
	if got := h.mainQuery(t, "SELECT count(*)::text FROM pg_subscription WHERE subenabled"); got != "1" {
		t.Errorf("the subscriber has %s enabled subscriptions, want 1", got)
	}
}

// TestReplicationPasswordOutOfClonesReach: a clone's superuser, running
// as the clone's own uid, cannot read the source's password: no
// subscription in the clone, no password anywhere in the snapshot's files,
// and the password file is out of the clone uid's reach.
func TestReplicationPasswordOutOfClonesReach(t *testing.T) {
	h := newReplicationHarness(t, nil)
	snap := h.refresh(t)
	priv := PrivateDir(h.pool.MainDir(), h.pool.Name())
	passFile := filepath.Join(priv, passFileName)
	raw, err := os.ReadFile(passFile)
	if err != nil || !strings.Contains(string(raw), h.src.Password) {
		t.Fatalf("the password file %s does not hold the password (err %v)", passFile, err)
	}
	// The subscriber's catalog names the file, not the password.
	if got := h.mainQuery(t, "SELECT subconninfo FROM pg_subscription"); strings.Contains(got, h.src.Password) || !strings.Contains(got, "passfile") {
		t.Errorf("the subscription's conninfo %q holds the password or no passfile", got)
	}
	// Nothing in the snapshot holds the password (WAL included).
	c, err := h.pool.Clone(t.Context(), snap.ID, "scan")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := h.pool.DestroyClone(context.Background(), "scan"); err != nil {
			t.Errorf("destroy the scan clone: %v", err)
		}
	})
	pw := []byte(h.src.Password)
	err = filepath.WalkDir(c.Mountpoint, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(path) //nolint:gosec // G304: the test's own clone
		if err != nil {
			return err
		}
		if bytes.Contains(b, pw) {
			t.Errorf("%s in the snapshot holds the source's password", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// A clone's superuser (its own uid) cannot read the password file.
	const uid = 200042
	ctx := t.Context()
	cl, err := h.pool.Clone(ctx, snap.ID, "hostile")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := h.pool.DestroyClone(context.Background(), "hostile"); err != nil {
			t.Errorf("destroy the hostile clone: %v", err)
		}
	})
	runDir := runtime.RunDirFor(t.TempDir())
	t.Cleanup(func() { _ = os.RemoveAll(runDir) }) // test runtime files
	rt, err := runtime.New(runtime.Options{User: pgtest.OSUser(t), RunDir: runDir, CloneUIDFrom: uid, CloneUIDTo: uid})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(cl.Mountpoint, storage.DataSubdir)
	port := pgtest.FreePort(t)
	inst := runtime.Instance{Name: "hostile", DataDir: dir, Port: port, Settings: runtime.DefaultSettings,
		User: pgcluster.OSUser{Name: "clone", UID: uid, GID: uid}, Mount: cl.Mountpoint}
	if err := rt.Start(ctx, inst); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Kill(inst) })
	conn, err := retrievaltest.ConnectDB(ctx, rt.SocketConnString(dir, port, "postgres", "postgres"), "app")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(context.Background()) }() // the clone is killed next
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_subscription").Scan(&n); err != nil || n != 0 {
		t.Errorf("the clone's superuser sees %d subscriptions (err %v), want none", n, err)
	}
	var content string
	err = conn.QueryRow(ctx, "SELECT pg_read_file($1)", passFile).Scan(&content)
	if err == nil || strings.Contains(content, h.src.Password) {
		t.Errorf("the clone's superuser read the password file %s (err %v)", passFile, err)
	}
	if _, err := conn.Exec(ctx, "CREATE TEMP TABLE f (l text)"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "COPY f FROM PROGRAM 'cat "+passFile+"'"); err == nil {
		t.Errorf("the clone's superuser read the password file through a program as its uid")
	}
}

// TestReplicationLagReported: the lag is measured after every snapshot
// and shows in the job's report; a source that goes away raises
// source_unreachable and, past lagAlertSeconds, lag_high on the bus.
func TestReplicationLagReported(t *testing.T) {
	h := newReplicationHarness(t, func(c *config.Retrieval) { c.Logical.Replication.LagAlertSeconds = 1 })
	got := make(chan events.Event, 16)
	defer h.bus.Subscribe(func(e events.Event) {
		select {
		case got <- e:
		default:
		}
	})()
	h.refresh(t)
	rep, ok := h.j.Report(h.pool)
	if !ok || rep.Lag == nil {
		t.Fatalf("no lag reported after the first snapshot: %+v", rep)
	}
	if rep.Lag.Kind != job.LagSubscription || !rep.Lag.SourceReachable || rep.Lag.Seconds >= 1 {
		t.Errorf("lag after a caught-up snapshot: %+v, want subscription, source reachable, under a second", *rep.Lag)
	}
	if len(rep.Alerts) != 0 {
		t.Errorf("alerts after a good snapshot: %v", rep.Alerts)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := h.src.Cluster.Stop(ctx, "immediate"); err != nil {
		t.Fatal(err)
	}
	r := h.j.replicas[h.pool.Name()]
	time.Sleep(1100 * time.Millisecond)
	lag, err := r.CheckLag(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rep, _ = h.j.Report(h.pool)
	if lag.SourceReachable || lag.Seconds < 1 {
		t.Errorf("lag with the source gone: %+v, want unreachable and over a second", lag)
	}
	for _, k := range []string{AlertSourceUnreachable, AlertLagHigh} {
		if _, ok := rep.Alerts[k]; !ok {
			t.Errorf("no %s alert with the source gone: %v", k, rep.Alerts)
		}
	}
	select {
	case e := <-got:
		if e.Kind != events.LagHigh || e.Pool != h.pool.Name() {
			t.Errorf("event %+v, want %s for pool %s", e, events.LagHigh, h.pool.Name())
		}
	case <-time.After(5 * time.Second):
		t.Error("no lag_high event")
	}
}

// TestReplicationSourceChecked: a source without wal_level logical, or
// without the publication, fails the refresh with what to fix, before
// the pool is touched.
func TestReplicationSourceChecked(t *testing.T) {
	src := retrievaltest.Source(t) // wal_level replica, no publication
	p := clonetest.NewPool(t)
	t.Setenv("THINLAB_TEST_SOURCE_PW", src.Password)
	cfg := testConfig(t, config.Source{Host: "127.0.0.1", Port: src.Port, Username: "postgres", PasswordEnv: "THINLAB_TEST_SOURCE_PW"}, []string{"app"})
	cfg.Logical.Replication = config.Replication{Enabled: true, Publication: "thinlab_pub"}
	j, err := New(cfg, (&logtest.Buffer{}).Logger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = j.Close() }) // never fails
	_, err = j.Run(t.Context(), target(t, p, nil))
	if err == nil || !strings.Contains(err.Error(), "wal_level is replica") {
		t.Fatalf("refresh from a source with wal_level replica: %v", err)
	}
	if _, serr := os.Stat(filepath.Join(p.MainDir(), storage.DataSubdir)); !errors.Is(serr, os.ErrNotExist) {
		t.Errorf("the refusal touched the pool: %v", serr)
	}
	src.Exec(t, "postgres", "ALTER SYSTEM SET wal_level = logical")
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := src.Cluster.Stop(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
	if err := src.Cluster.Start(ctx, src.Port, "127.0.0.1", pgcluster.FastSettings); err != nil {
		t.Fatal(err)
	}
	_, err = j.Run(t.Context(), target(t, p, nil))
	if err == nil || !strings.Contains(err.Error(), `retrieval.logical.replication.publication "thinlab_pub" does not exist in database app`) {
		t.Fatalf("refresh without the publication: %v", err)
	}
}
