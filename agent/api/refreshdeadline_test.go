package api_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/retrieval"
	"github.com/thinlab/thinlab/agent/retrieval/job"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/storagetest"
	"github.com/thinlab/thinlab/internal/logtest"
)

// idleJob is a retrieval mode that must never run: the refreshes of the
// test are all skipped because the pool they would fill is busy.
type idleJob struct{}

func (idleJob) Mode() string { return "logical" }

func (idleJob) Run(context.Context, job.Target) (job.Outcome, error) {
	return job.Outcome{}, errors.New("the refresh ran although its pool has clones")
}

// TestCloneShowsForcedRefreshDeadline: refreshes rotate between the
// clone's pool and a second pool holding the newest snapshot; with a
// clone on the idle pool a refresh is skipped, and retrieval.busyPool
// will force it after its warning period. GET /clone/{id} and GET
// /clones then show when (refreshForcedAt, a Thinlab addition) and say so
// in status.message after DLE's own text. Before the skip neither
// appears.
func TestCloneShowsForcedRefreshDeadline(t *testing.T) {
	var r *retrieval.Retriever
	e := newEnvWith(t, storage.ModeBtrfs, 3, func(cfg *config.Config, p storage.Pool) *retrieval.Retriever {
		other := storagetest.NewLoopPool(t, storage.ModeBtrfs)
		if _, err := other.Snapshot(context.Background(), storage.SnapshotOptions{DataStateAt: time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC), Message: "newest"}); err != nil {
			t.Fatal(err)
		}
		rc := *cfg
		rc.Pools = append(append([]config.Pool(nil), cfg.Pools...), config.Pool{Name: other.Name(), Mode: other.Mode(), Path: other.MainDir()})
		rc.Retrieval = config.Retrieval{Mode: "logical", Source: config.Source{Host: "127.0.0.1", Username: "x"}, Jobs: 1,
			Pools: []string{p.Name(), other.Name()}, RefreshSchedule: "0 3 * * *", BusyPool: config.BusyPool{ForceAfterMinutes: 90}}
		var err error
		r, err = retrieval.New(retrieval.Options{Config: &rc, Pools: []storage.Pool{p, other}, Logger: (&logtest.Buffer{}).Logger(), Job: idleJob{}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := r.Close(); err != nil {
				t.Errorf("close the retriever: %v", err)
			}
		})
		return r
	}, []string{"CREATE TABLE t (id int)"})

	c := e.createOK(e.createReq("owner1", e.snaps[0].ID))
	if c.RefreshForcedAt != nil || strings.Contains(c.Status.Message, "refreshed anyway") {
		t.Fatalf("before any skipped refresh the clone shows a deadline: %+v", c)
	}
	if _, err := r.Refresh(e.ctx); !errors.Is(err, retrieval.ErrAllPoolsBusy) {
		t.Fatalf("refresh onto the clone's pool: %v, want ErrAllPoolsBusy", err)
	}
	f, ok := r.PendingForcedRefresh()
	if !ok || f.Pool != e.pool.Name() || f.At.IsZero() {
		t.Fatalf("pending forced refresh %+v %v, want one for %s with a time", f, ok, e.pool.Name())
	}
	got, err := e.client.Clone(e.ctx, "owner1")
	if err != nil {
		t.Fatal(err)
	}
	want := f.At.UTC().Format(time.RFC3339)
	if got.RefreshForcedAt == nil || !got.RefreshForcedAt.Equal(f.At.Truncate(time.Second)) {
		t.Fatalf("refreshForcedAt %v, want %s", got.RefreshForcedAt, want)
	}
	if !strings.HasPrefix(got.Status.Message, "Clone is ready") || !strings.Contains(got.Status.Message, "will be refreshed anyway at "+want) || got.Status.Code != "OK" {
		t.Fatalf("status %+v: want DLE's message, then the deadline %s", got.Status, want)
	}
	list, err := e.client.Clones(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].RefreshForcedAt == nil {
		t.Fatalf("GET /clones %+v: want the deadline on the clone", list)
	}
	// The raw JSON carries the new field next to DLE's.
	if code, body := e.raw("GET", "/clone/owner1", token, ""); code != 200 || !strings.Contains(string(body), `"refreshForcedAt":`) {
		t.Fatalf("GET /clone/owner1: %d %s", code, body)
	}
	e.destroy("owner1")
}
