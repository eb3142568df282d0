package snapshot_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/retrieval"
	"github.com/thinlab/thinlab/agent/snapshot"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/logtest"
	"github.com/thinlab/thinlab/internal/pgtest"
)

// TestRefreshThenRetention wires retrieval to the policy as the agent
// does: with retrieval.keepSnapshots 2, every logical refresh (real
// source postgres, real btrfs pool) is followed by retention, which
// leaves the 2 newest snapshots, the refresh's among them.
func TestRefreshThenRetention(t *testing.T) {
	src := pgtest.Start(t)
	src.Exec(t, "postgres", "CREATE DATABASE app")
	src.Exec(t, "app", "CREATE TABLE t (v text)", "INSERT INTO t VALUES ('one')")
	t.Setenv("THINLAB_TEST_SOURCE_PW", src.Password)

	p, ids := poolWithSnapshots(t, 2)
	cfg := clonetest.Config(t, p, 1)
	cfg.Retrieval = config.Retrieval{
		Mode:          "logical",
		Source:        config.Source{Host: "127.0.0.1", Port: src.Port, Username: "postgres", PasswordEnv: "THINLAB_TEST_SOURCE_PW"},
		Databases:     []string{"app"},
		Jobs:          1,
		Pool:          p.Name(),
		KeepSnapshots: 2,
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	log := &logtest.Buffer{}
	pol := snapshot.New(snapshot.Options{Config: cfg, Pools: []storage.Pool{p}, Logger: log.Logger(), SweepInterval: -1})
	r, err := retrieval.New(retrieval.Options{Config: cfg, Pool: p, Logger: log.Logger(), Retention: pol})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("close retrieval: %v", err)
		}
	})
	ctx := t.Context()

	res, err := r.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := snapshotIDs(t, p), []string{res.Snapshot.ID, ids[1]}; !reflect.DeepEqual(got, want) {
		t.Fatalf("after the first refresh %v, want %v", got, want)
	}
	if line := "snapshot=" + ids[0] + " reason=retention keep=2"; !strings.Contains(log.String(), line) {
		t.Fatalf("log lacks %q:\n%s", line, log)
	}

	res2, err := r.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := snapshotIDs(t, p), []string{res2.Snapshot.ID, res.Snapshot.ID}; !reflect.DeepEqual(got, want) {
		t.Fatalf("after the second refresh %v, want %v", got, want)
	}
	if st := r.Status(); st.Status != retrieval.StatusFinished || st.SnapshotID != res2.Snapshot.ID {
		t.Fatalf("status %+v", st)
	}
	if strings.Contains(log.String(), src.Password) {
		t.Fatal("the source password appears in the log")
	}
}
