package retrieval

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/retrieval/retrievaltest"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/logtest"
	"github.com/thinlab/thinlab/internal/pgcluster"
	"github.com/thinlab/thinlab/internal/pgtest"
)

func newRetriever(t *testing.T, p storage.Pool, src config.Source, dbs []string, log *logtest.Buffer) *Retriever {
	cfg := config.Default()
	cfg.Pools = []config.Pool{{Name: p.Name(), Mode: p.Mode(), Path: p.MainDir()}}
	cfg.Retrieval = config.Retrieval{Mode: "logical", Source: src, Databases: dbs, Jobs: 2, Pool: p.Name()}
	cfg.StateDir = t.TempDir()
	cfg.Server.VerificationToken = config.GenerateToken()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	r, err := New(Options{Config: cfg, Pool: p, Logger: log.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("close the retriever: %v", err)
		}
	})
	return r
}

func TestLogicalRefresh(t *testing.T) {
	src := retrievaltest.Source(t)
	p := clonetest.NewPool(t)
	t.Setenv("THINLAB_TEST_SOURCE_PW", src.Password)
	log := &logtest.Buffer{}
	r := newRetriever(t, p, config.Source{Host: "127.0.0.1", Port: src.Port, Username: "postgres", PasswordEnv: "THINLAB_TEST_SOURCE_PW"}, nil, log)
	if st := r.Status(); st.Mode != ModeLogical || st.Status != StatusInactive || !st.LastRefresh.IsZero() {
		t.Fatalf("initial status %+v", st)
	}
	ctx := t.Context()
	before := time.Now().UTC().Truncate(time.Second)
	res, err := r.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	after := time.Now().UTC()
	if strings.Join(res.Databases, ",") != "app,postgres,shop" || res.Bytes == 0 {
		t.Fatalf("result %+v", res)
	}
	snap, err := p.GetSnapshot(ctx, res.Snapshot.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !snap.DataStateAt.Equal(res.DumpStartedAt) || res.DumpStartedAt.Before(before) || res.DumpStartedAt.After(after) || snap.Message != SnapshotMessage(ModeLogical) {
		t.Fatalf("snapshot %+v, dump started %v (refresh ran %v..%v)", snap, res.DumpStartedAt, before, after)
	}
	if snap.ID != storage.SnapshotID(p.Name(), res.DumpStartedAt) {
		t.Fatalf("snapshot id %s", snap.ID)
	}
	st := r.Status()
	if st.Status != StatusFinished || st.LastRefresh.IsZero() || st.SnapshotID != snap.ID || len(st.Alerts) != 0 {
		t.Fatalf("status after refresh %+v", st)
	}
	for _, q := range []struct{ db, sql, want string }{
		{"app", "SELECT count(*)::text FROM users", "1000"},
		{"app", "SELECT n::text FROM user_count", "1000"},
		{"app", "SELECT count(*)::text FROM pg_indexes WHERE indexname = 'users_email_lower'", "1"},
		{"app", "SELECT nextval('users_id_seq')::text", "1001"},
		{"shop", "SELECT sum(total)::text FROM orders", "187875.00"},
	} {
		if got := retrievaltest.Query(t, p, snap.ID, q.db, q.sql); got != q.want {
			t.Errorf("%s: %s = %s, want %s", q.db, q.sql, got, q.want)
		}
	}
	if strings.Contains(log.String(), src.Password) {
		t.Fatal("the source password appears in the log")
	}
	if mainRunning(t, p) {
		t.Fatal("the pool's postgres still runs after the refresh")
	}

	// A second refresh (connStr form, chosen databases) starts from an
	// empty cluster: a table dropped at the source is gone in the new
	// snapshot and still in the old one.
	src.Exec(t, "app", "DROP VIEW user_count", "DROP TABLE users", "CREATE TABLE newer (x int)")
	r2 := newRetriever(t, p, config.Source{ConnStr: fmt.Sprintf("postgresql://postgres:%s@127.0.0.1:%d/postgres?sslmode=disable", src.Password, src.Port)}, []string{"app"}, log)
	if st := r2.Status(); st.Status != StatusFinished || st.SnapshotID != snap.ID {
		t.Fatalf("a new Retriever does not find the last refresh: %+v", st)
	}
	res2, err := r2.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !res2.DumpStartedAt.After(res.DumpStartedAt) {
		t.Fatalf("second dump time %v not after %v", res2.DumpStartedAt, res.DumpStartedAt)
	}
	if got := retrievaltest.Query(t, p, res2.Snapshot.ID, "app", "SELECT count(*)::text FROM pg_tables WHERE tablename IN ('users','newer')"); got != "1" {
		t.Fatalf("new snapshot has %s of users/newer, want only newer", got)
	}
	if got := retrievaltest.Query(t, p, res2.Snapshot.ID, "postgres", "SELECT count(*)::text FROM pg_database WHERE datname = 'shop'"); got != "0" {
		t.Fatal("database shop copied although only app was chosen")
	}
	if got := retrievaltest.Query(t, p, snap.ID, "app", "SELECT count(*)::text FROM users"); got != "1000" {
		t.Fatalf("old snapshot changed: %s", got)
	}
	if strings.Contains(log.String(), src.Password) {
		t.Fatal("the source password appears in the log")
	}
}

// mainRunning says whether a postgres runs on the pool's main dataset.
func mainRunning(t *testing.T, p storage.Pool) bool {
	t.Helper()
	return (&pgcluster.Cluster{DataDir: filepath.Join(p.MainDir(), storage.DataSubdir), User: pgtest.OSUser(t)}).Running()
}

func TestRefreshFailureAlertsAndRefusesConcurrent(t *testing.T) {
	src := retrievaltest.Source(t)
	p := clonetest.NewPool(t)
	log := &logtest.Buffer{}
	r := newRetriever(t, p, config.Source{Host: "127.0.0.1", Port: src.Port, Username: "postgres", Password: "wrong-password"}, []string{"app"}, log)
	if err := r.FullRefresh(); err != nil {
		t.Fatal(err)
	}
	if err := r.FullRefresh(); !errors.Is(err, ErrRefreshRunning) {
		t.Fatalf("second FullRefresh: %v", err)
	}
	r.wg.Wait()
	st := r.Status()
	a, ok := st.Alerts[AlertRefreshFailed]
	if st.Status != StatusFailed || !ok || a.Level != "error" || a.Count != 1 || !strings.Contains(a.Message, "password authentication failed") {
		t.Fatalf("status %+v", st)
	}
	if mainRunning(t, p) {
		t.Fatal("the pool's postgres still runs after a failed refresh")
	}
	if snaps, _ := p.Snapshots(t.Context()); len(snaps) != 0 {
		t.Fatalf("a failed refresh made snapshots: %v", snaps)
	}
	if _, err := r.Refresh(t.Context()); err == nil {
		t.Fatal("refresh with a wrong password succeeded")
	}
	if a := r.Status().Alerts[AlertRefreshFailed]; a.Count != 2 {
		t.Fatalf("alert count %d, want 2", a.Count)
	}
	if strings.Contains(log.String(), "wrong-password") {
		t.Fatal("the source password appears in the log")
	}
}

func TestNotConfiguredAndSchedule(t *testing.T) {
	cfg := config.Default()
	r, err := New(Options{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.FullRefresh(); !errors.Is(err, ErrNotConfigured) {
		t.Fatalf("FullRefresh without retrieval: %v", err)
	}
	if st := r.Status(); st.Mode != ModeUnknown || st.Status != StatusInactive {
		t.Fatalf("status %+v", st)
	}

	p := clonetest.NewPool(t)
	cfg.Pools = []config.Pool{{Name: p.Name(), Mode: p.Mode(), Path: p.MainDir()}}
	cfg.Retrieval = config.Retrieval{Mode: "logical", Source: config.Source{Host: "127.0.0.1", Port: 1, Username: "x"}, RefreshSchedule: "0 3 * * *", Jobs: 1}
	r, err = New(Options{Config: cfg, Pool: p})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := r.Close(); err != nil {
			t.Errorf("close the retriever: %v", err)
		}
	}()
	r.Start(t.Context())
	next := r.Status().NextRefresh
	if next.IsZero() || next.Hour() != 3 || next.Minute() != 0 {
		t.Fatalf("nextRefresh = %v", next)
	}
}
