package agent_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent"
	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/storagetest"
	"github.com/thinlab/thinlab/internal/logtest"
	"github.com/thinlab/thinlab/internal/pgcluster"
	"github.com/thinlab/thinlab/internal/pgtest"
	"github.com/thinlab/thinlab/sdk/agentapi"
)

// TestAgentPointInTimeThroughAPI runs the agent in process with physical
// retrieval (pg_basebackup, pre snapshots) from a source archiving into a
// plain archive directory: the window shows in /status, POST /clone with
// snapshot.pointInTime brings deleted rows back, a target outside the
// window is 400 naming it, and a read-only clone and a replica work
// through the API.
func TestAgentPointInTimeThroughAPI(t *testing.T) {
	src := pgtest.Start(t)
	src.Exec(t, "postgres", "CREATE TABLE t (id serial PRIMARY KEY, note text)", "INSERT INTO t (note) VALUES ('initial')")
	u := pgtest.OSUser(t)
	dir, err := pgcluster.MkdirTemp("agent-pitr-*", u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	archive := filepath.Join(dir, "archive")
	if err := pgcluster.AsUser(u.UID, u.GID, func() error { return os.Mkdir(archive, 0o700) }); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	if err := src.Cluster.Stop(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
	settings := maps.Clone(pgcluster.FastSettings)
	settings["archive_mode"] = "on"
	settings["archive_command"] = fmt.Sprintf("cp %%p %s/%%f", archive)
	if err := src.Cluster.Start(ctx, src.Port, "127.0.0.1", settings); err != nil {
		t.Fatal(err)
	}
	t.Setenv("THINLAB_TEST_SOURCE_PW", src.Password)

	pool := storagetest.NewLoopPoolSize(t, storage.ModeBtrfs, 1<<30)
	// The standby outlives the agent (as in production): it goes before
	// the pool is unmounted (cleanups run last first).
	t.Cleanup(func() {
		(&pgcluster.Cluster{DataDir: filepath.Join(pool.MainDir(), storage.DataSubdir), User: u}).Kill()
	})
	cfg := clonetest.Config(t, pool, 6)
	cfg.Server.Port = freePort(t)
	cfg.Server.VerificationToken = token
	cfg.Retrieval = config.Retrieval{
		Mode:   "physical",
		Pool:   pool.Name(),
		Source: config.Source{Host: "127.0.0.1", Port: src.Port, Username: "postgres", PasswordEnv: "THINLAB_TEST_SOURCE_PW", SSLMode: "disable"},
		Physical: config.Physical{Tool: config.ToolBasebackup, ArchiveDir: archive, PreSnapshot: true,
			Settings: map[string]string{"fsync": "off", "shared_buffers": "16MB"}},
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	logs := &logtest.Buffer{}
	a, err := agent.NewWithOptions(ctx, agent.Options{Config: cfg, Logger: logs.Logger(), Pools: []storage.Pool{pool}})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	c := &agentapi.Client{BaseURL: "http://" + a.Addr(), Token: token, PollInterval: 100 * time.Millisecond}

	if _, err := c.FullRefresh(ctx); err != nil {
		t.Fatal(err)
	}
	waitStatus := func(what string, ok func(*agentapi.InstanceStatus) bool) *agentapi.InstanceStatus {
		t.Helper()
		for {
			st, err := c.Status(ctx)
			if err == nil && ok(st) {
				return st
			}
			if ctx.Err() != nil {
				t.Fatalf("waiting for %s: %v %+v", what, err, st)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	waitStatus("the first snapshot", func(st *agentapi.InstanceStatus) bool {
		return st.Retrieving.Status == "finished" && st.Retrieving.PointInTime != nil && st.Retrieving.PointInTime.Snapshots == 1
	})
	src.Exec(t, "postgres", "INSERT INTO t (note) VALUES ('doomed')")
	time.Sleep(100 * time.Millisecond)
	target := time.Now()
	time.Sleep(100 * time.Millisecond)
	src.Exec(t, "postgres", "DELETE FROM t WHERE note = 'doomed'", "INSERT INTO t (note) VALUES ('later')", "SELECT pg_switch_wal()")
	later := time.Now()
	st := waitStatus("the archive window to reach the last commit", func(st *agentapi.InstanceStatus) bool {
		w := st.Retrieving.PointInTime
		if w == nil || !w.Available {
			return false
		}
		to, err := time.Parse(time.RFC3339Nano, w.To)
		return err == nil && to.After(later.Add(-100*time.Millisecond))
	})
	w := st.Retrieving.PointInTime
	if w.Pool != pool.Name() || w.ToSource != "archiveDir" || w.From == "" || w.FromLSN == "" || w.ToLSN == "" {
		t.Errorf("status window %+v, want the pool's, from the archive directory, with times and LSNs", w)
	}

	req := func(id string, snap *agentapi.SnapshotCloneField, readOnly bool) agentapi.CreateCloneRequest {
		return agentapi.CreateCloneRequest{ID: id, DB: &agentapi.DatabaseRequest{Username: "alice", Password: password}, Snapshot: snap, ReadOnly: readOnly}
	}
	if _, err := c.CreateClone(ctx, req("pit", &agentapi.SnapshotCloneField{PointInTime: target.UTC().Format(time.RFC3339Nano)}, false)); err != nil {
		t.Fatal(err)
	}
	cl, err := c.WaitClone(ctx, "pit")
	if err != nil {
		t.Fatal(err)
	}
	if cl.PointInTime == nil || cl.PointInTime.Time == "" {
		t.Errorf("clone view pointInTime %+v, want the target", cl.PointInTime)
	}
	if got, err := queryClone(ctx, *cl, "SELECT string_agg(note, ',' ORDER BY id) FROM public.t"); err != nil || got != "initial,doomed" {
		t.Errorf("point-in-time clone rows %q (%v), want initial,doomed", got, err)
	}

	_, err = c.CreateClone(ctx, req("outside", &agentapi.SnapshotCloneField{PointInTime: "2000-01-01T00:00:00Z"}, false))
	var apiErr *agentapi.APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusBadRequest || apiErr.Detail != "snapshot.pointInTime" || !strings.Contains(apiErr.Message, w.From) {
		t.Errorf("a target before the window: %v, want 400 on snapshot.pointInTime naming the window's start %s", err, w.From)
	}
	_, err = c.CreateClone(ctx, req("badtime", &agentapi.SnapshotCloneField{PointInTime: "yesterday"}, false))
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusBadRequest || apiErr.Detail != "snapshot.pointInTime" {
		t.Errorf("a malformed time: %v, want 400 on snapshot.pointInTime", err)
	}

	// A read-only clone of the newest (pre) snapshot, and a replica of
	// the point-in-time clone.
	if _, err := c.CreateClone(ctx, req("ro", nil, true)); err != nil {
		t.Fatal(err)
	}
	ro, err := c.WaitClone(ctx, "ro")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := queryClone(ctx, *ro, "SELECT pg_is_in_recovery()::text"); err != nil || got != "true" || !ro.ReadOnly {
		t.Errorf("read-only clone: in recovery %q (%v), view readOnly %v; want true, true", got, err, ro.ReadOnly)
	}
	reps, err := c.CreateReplicas(ctx, "pit", 1)
	if err != nil || len(reps) != 1 {
		t.Fatalf("replicas: %v %v", reps, err)
	}
	rep, err := c.WaitClone(ctx, reps[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if rep.ReplicaOf != "pit" {
		t.Errorf("replica view replicaOf %q, want pit", rep.ReplicaOf)
	}
	for _, id := range []string{"pit", "ro"} {
		if err := c.DestroyClone(ctx, id); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitCloneDestroyed(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Clone(ctx, rep.ID); !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusNotFound {
		t.Errorf("replica after its clone's destroy: %v, want 404", err)
	}
	if strings.Contains(logs.String(), password) || strings.Contains(logs.String(), src.Password) {
		t.Error("a password appears in the agent's log")
	}
}
