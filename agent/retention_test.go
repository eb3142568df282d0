package agent_test

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent"
	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/storagetest"
	"github.com/thinlab/thinlab/internal/logtest"
	"github.com/thinlab/thinlab/internal/pgtest"
	"github.com/thinlab/thinlab/sdk/agentapi"
)

// TestAgentRetentionAfterRefresh runs the agent in process with
// retrieval.keepSnapshots 2 (real btrfs loop pool, real source postgres):
// a snapshot protected through the API survives and counts, so after a
// full refresh the pool holds the refresh's snapshot and the protected one.
func TestAgentRetentionAfterRefresh(t *testing.T) {
	src := pgtest.Start(t)
	src.Exec(t, "postgres", "CREATE DATABASE app")
	src.Exec(t, "app", "CREATE TABLE t (v text)", "INSERT INTO t VALUES ('one')")
	t.Setenv("THINLAB_TEST_SOURCE_PW", src.Password)

	pool := storagetest.NewLoopPool(t, storage.ModeBtrfs)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	base := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	var ids []string
	for i := range 3 {
		s, err := pool.Snapshot(ctx, storage.SnapshotOptions{DataStateAt: base.Add(time.Duration(i) * time.Hour), Message: "old"})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, s.ID)
	}

	cfg := clonetest.Config(t, pool, 2)
	cfg.Server.Port = freePort(t)
	cfg.Server.VerificationToken = token
	cfg.Retrieval = config.Retrieval{
		Mode:          "logical",
		Source:        config.Source{Host: "127.0.0.1", Port: src.Port, Username: "postgres", PasswordEnv: "THINLAB_TEST_SOURCE_PW"},
		Databases:     []string{"app"},
		Jobs:          1,
		Pool:          pool.Name(),
		KeepSnapshots: 2,
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

	yes := true
	if _, err := c.UpdateSnapshot(ctx, ids[0], agentapi.PatchSnapshotRequest{Protected: &yes}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.FullRefresh(ctx); err != nil {
		t.Fatal(err)
	}
	// Retention follows the refresh: wait until the pool is down to 2.
	var got []agentapi.Snapshot
	for {
		if got, err = c.Snapshots(ctx); err != nil {
			t.Fatal(err)
		}
		if len(got) <= 2 {
			break
		}
		select {
		case <-ctx.Done():
			r, _ := c.Retrieval(ctx)
			t.Fatalf("still %d snapshots (retrieval %+v):\n%s", len(got), r, logs)
		case <-time.After(100 * time.Millisecond):
		}
	}
	var gotIDs []string
	for _, s := range got {
		gotIDs = append(gotIDs, s.ID)
	}
	if len(got) != 2 || got[0].Message != "logical refresh" || !reflect.DeepEqual(gotIDs[1:], []string{ids[0]}) || !got[1].Protected {
		t.Fatalf("snapshots after refresh and retention: %+v", got)
	}
	for _, id := range ids[1:] {
		if line := "snapshot=" + id + " reason=retention keep=2"; !strings.Contains(logs.String(), line) {
			t.Errorf("log lacks %q", line)
		}
	}
	if strings.Contains(logs.String(), src.Password) || strings.Contains(logs.String(), token) {
		t.Fatal("a secret appears in the log")
	}
}
