package retrieval

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/retrieval/job"
	"github.com/thinlab/thinlab/agent/retrieval/logical"
	"github.com/thinlab/thinlab/agent/retrieval/retrievaltest"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/logtest"
	"github.com/thinlab/thinlab/internal/pgcluster"
	"github.com/thinlab/thinlab/internal/pgtest"
)

// TestReplicationThroughTheCore: retrieval.logical.replication through
// the retrieval core. The first refresh copies and subscribes; the
// schedule's job snapshots the replicated state, a row committed since
// included; the status reports the subscription's lag. A restarted agent
// (a new retriever, the subscriber gone with the old one) starts the
// subscriber again and snapshots without copying anew. Turning
// replication off drops the subscription, its slot on the source and the
// password file.
func TestReplicationThroughTheCore(t *testing.T) {
	src := retrievaltest.ReplicationSource(t)
	p := clonetest.NewPool(t)
	t.Setenv("THINLAB_TEST_SOURCE_PW", src.Password)
	mainDB := &pgcluster.Cluster{DataDir: filepath.Join(p.MainDir(), storage.DataSubdir), User: pgtest.OSUser(t)}
	t.Cleanup(func() {
		mainDB.Kill()
		if err := os.RemoveAll(logical.PrivateDir(p.MainDir(), p.Name())); err != nil {
			t.Errorf("remove the private directory: %v", err)
		}
	})
	cfg := config.Default()
	cfg.Pools = []config.Pool{{Name: p.Name(), Mode: p.Mode(), Path: p.MainDir()}}
	cfg.Retrieval = config.Retrieval{Mode: "logical", Databases: []string{"app"}, Jobs: 1, Pool: p.Name(), RefreshSchedule: "0 3 * * *",
		Source:  config.Source{Host: "127.0.0.1", Port: src.Port, Username: "postgres", PasswordEnv: "THINLAB_TEST_SOURCE_PW"},
		Logical: config.Logical{Replication: config.Replication{Enabled: true, Publication: "thinlab_pub", SlotName: "core"}}}
	cfg.StateDir = t.TempDir()
	cfg.Server.VerificationToken = config.GenerateToken()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	start := func() *Retriever {
		lb := &logtest.Buffer{}
		t.Cleanup(func() {
			if t.Failed() {
				t.Log(lb.String())
			}
		})
		r, err := New(Options{Config: cfg, Pool: p, Logger: lb.Logger()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.Close() }) // closed again: a no-op
		r.Start(t.Context())
		return r
	}
	ctx := t.Context()
	slot := func() string {
		conn := src.Connect(t, "postgres")
		defer func() { _ = conn.Close(context.Background()) }() // read-only
		var active bool
		err := conn.QueryRow(ctx, "SELECT active FROM pg_replication_slots WHERE slot_name = 'core_app'").Scan(&active)
		if errors.Is(err, pgx.ErrNoRows) {
			return "gone"
		}
		if err != nil {
			t.Fatal(err)
		}
		if active {
			return "active"
		}
		return "inactive"
	}
	copiedAt := func() string {
		b, err := os.ReadFile(filepath.Join(p.MainDir(), "replication.json"))
		if err != nil {
			t.Fatal(err)
		}
		var m struct{ CopiedAt string }
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		return m.CopiedAt
	}

	r := start()
	first, err := r.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	copied := copiedAt()
	// The agent restarts: its subscriber went with it.
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	mainDB.Kill()
	r = start()
	if !mainDB.Running() {
		t.Fatal("a restarted agent did not start the subscriber again")
	}
	src.Exec(t, "app", "INSERT INTO users (email) VALUES ('scheduled@example.com')")
	r.scheduledRefresh()
	r.wg.Wait()
	st := r.Status()
	if st.Status != StatusFinished || st.SnapshotID == first.Snapshot.ID || len(st.Alerts) != 0 {
		t.Fatalf("status after the scheduled refresh %+v", st)
	}
	if st.Lag == nil || st.Lag.Kind != job.LagSubscription || !st.Lag.SourceReachable || st.Lag.CheckedAt.IsZero() {
		t.Fatalf("lag in the status %+v", st.Lag)
	}
	if got := copiedAt(); got != copied {
		t.Errorf("the restarted agent copied the source again (%s, first copy %s)", got, copied)
	}
	if got := retrievaltest.Query(t, p, st.SnapshotID, "app", "SELECT count(*)::text FROM users WHERE email = 'scheduled@example.com'"); got != "1" {
		t.Fatalf("the row committed before the scheduled snapshot is there %s times, want 1", got)
	}
	if s := slot(); s != "active" {
		t.Errorf("the source's slot is %s, want active", s)
	}

	// Replication off: a plain refresh leaves no slot on the source.
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	cfg.Retrieval.Logical.Replication = config.Replication{}
	r = start()
	if _, err := r.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if s := slot(); s != "gone" {
		t.Errorf("after replication was turned off the source's slot is %s, want gone", s)
	}
	if _, err := os.Stat(logical.PrivateDir(p.MainDir(), p.Name())); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the password file's directory stays after replication was turned off: %v", err)
	}
}
