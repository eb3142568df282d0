package logical

import (
	"path/filepath"
	"testing"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/retrieval/job"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/logtest"
	"github.com/thinlab/thinlab/internal/pgcluster"
	"github.com/thinlab/thinlab/internal/pgtest"
)

// testConfig is a valid retrieval configuration for src.
func testConfig(t *testing.T, src config.Source, dbs []string) config.Retrieval {
	t.Helper()
	return config.Retrieval{Mode: Mode, Source: src, Databases: dbs, Jobs: 2}
}

func newTestJob(t *testing.T, src config.Source, dbs []string, log *logtest.Buffer) *Job {
	t.Helper()
	j, err := New(testConfig(t, src, dbs), log.Logger())
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// target is what the retrieval core would hand the job for pool p.
func target(t *testing.T, p storage.Pool, log *logtest.Buffer) job.Target {
	t.Helper()
	bin, err := pgcluster.NewestBinDir(config.Default().Provision.PgBinRoot)
	if err != nil {
		t.Fatal(err)
	}
	tg := job.Target{Pool: p, BinDir: bin, User: pgtest.OSUser(t), Progress: &job.Progress{}}
	if log != nil {
		tg.Logger = log.Logger()
	}
	snaps, err := p.Snapshots(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(snaps) > 0 {
		tg.NotBefore = snaps[0].DataStateAt
	}
	return tg
}

// fill runs the job into p as the core does and snapshots the result.
func fill(t *testing.T, j *Job, p storage.Pool) (job.Outcome, storage.Snapshot, error) {
	t.Helper()
	out, err := j.Run(t.Context(), target(t, p, nil))
	if err != nil {
		return out, storage.Snapshot{}, err
	}
	snap, err := p.Snapshot(t.Context(), snapshotOptions(out))
	if err != nil {
		t.Fatal(err)
	}
	return out, snap, nil
}

// snapshotOptions are the core's options for a snapshot of out.
func snapshotOptions(out job.Outcome) storage.SnapshotOptions {
	return storage.SnapshotOptions{DataStateAt: out.DataStateAt, Message: Mode + " refresh"}
}

// mainRunning says whether a postgres runs on the pool's main dataset.
func mainRunning(t *testing.T, p storage.Pool) bool {
	t.Helper()
	return (&pgcluster.Cluster{DataDir: filepath.Join(p.MainDir(), storage.DataSubdir), User: pgtest.OSUser(t)}).Running()
}
