package physical_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/retrieval"
	"github.com/thinlab/thinlab/agent/retrieval/job"
	"github.com/thinlab/thinlab/agent/retrieval/physical"
	"github.com/thinlab/thinlab/agent/retrieval/retrievaltest"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/storagetest"
	"github.com/thinlab/thinlab/internal/pgcluster"
	"github.com/thinlab/thinlab/internal/pgtest"
)

// TestCoreRunsPhysical: retrieval.mode physical through the retrieval
// core, as the agent runs it: a refresh makes the first copy, starts the
// standby and returns the promoted snapshot, which the agent's own clone
// runtime starts.
func TestCoreRunsPhysical(t *testing.T) {
	src := retrievaltest.Source(t)
	pool := storagetest.NewLoopPoolSize(t, storage.ModeBtrfs, 1<<30)
	u := pgtest.OSUser(t)
	t.Cleanup(func() {
		(&pgcluster.Cluster{DataDir: filepath.Join(pool.MainDir(), storage.DataSubdir), User: u}).Kill()
		dirs, _ := filepath.Glob("/run/thinlab/physical-*-" + pool.Name())
		for _, d := range dirs {
			_ = os.RemoveAll(d)
		}
	})
	cfg := config.Default()
	cfg.StateDir = t.TempDir()
	cfg.Provision.OSUser = u.Name
	cfg.Retrieval.Mode = physical.Mode
	cfg.Retrieval.Pool = pool.Name()
	cfg.Retrieval.Source = config.Source{Host: "127.0.0.1", Port: src.Port, Username: "postgres", Password: pgtest.Password, SSLMode: "disable"}
	cfg.Retrieval.Physical = config.Physical{Tool: config.ToolBasebackup}
	r, err := retrieval.New(retrieval.Options{Config: cfg, Pool: pool})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	r.Start(ctx)
	res, err := r.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Snapshot.Labels[physical.LabelKind] != "promoted" {
		t.Errorf("refresh snapshot %+v: want the promoted snapshot of the cycle", res.Snapshot)
	}
	if got := retrievaltest.Query(t, pool, res.Snapshot.ID, "app", "SELECT count(*)::text FROM public.users"); got != "1000" {
		t.Errorf("a clone of %s counts %s users, want 1000", res.Snapshot.ID, got)
	}
	if st := r.Status(); st.Mode != physical.Mode || st.Status != retrieval.StatusFinished || st.SnapshotID != res.Snapshot.ID {
		t.Errorf("status %+v: want mode physical, finished, snapshot %s", st, res.Snapshot.ID)
	}
	// The standby's alerts reach the core's status: with the source gone,
	// the next lag check (every 10 s) reports it unreachable.
	if err := src.Cluster.Stop(ctx, "immediate"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for r.Status().Alerts[physical.AlertSourceUnreachable].Count == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("status alerts %+v a minute after the source stopped: want %s", r.Status().Alerts, physical.AlertSourceUnreachable)
		}
		time.Sleep(500 * time.Millisecond)
	}
	// The standby's replay lag is the status's lag (GET /status's
	// retrieving.lag), measured by the same check.
	if l := r.Status().Lag; l == nil || l.Kind != job.LagStandby || l.SourceReachable || l.CheckedAt.IsZero() {
		t.Errorf("lag %+v: want the standby's, source unreachable", l)
	}
}
