package clone_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/thinlab/thinlab/agent/clone"
)

// TestReadOnlyCloneRefusesWrites: a read-only clone is a hot standby of
// nothing: pg_is_in_recovery() is true, a write fails with
// read_only_sql_transaction, it follows no server (primary_conninfo and
// restore_command are empty), and its user logs in with its password.
func TestReadOnlyCloneRefusesWrites(t *testing.T) {
	e := newEnv(t, 4)
	m := e.manager()
	defer closeManager(t, m)
	r := e.req("ro")
	r.ReadOnly = true
	c := e.create(m, r)
	if !c.ReadOnly {
		t.Errorf("clone view ReadOnly = false, want true")
	}
	if got := e.query(c, "SELECT pg_is_in_recovery()::text"); got != "true" {
		t.Errorf("pg_is_in_recovery() = %s, want true on a read-only clone", got)
	}
	if got := e.query(c, "SELECT current_setting('primary_conninfo') || '|' || current_setting('restore_command')"); got != "|" {
		t.Errorf("primary_conninfo|restore_command = %q, want both empty (the clone follows nothing)", got)
	}
	conn, err := e.connect(c, c.Username, goodPassword, c.DBName)
	if err != nil {
		t.Fatal(err)
	}
	_, err = conn.Exec(e.ctx, "CREATE TABLE written (id int)")
	_ = conn.Close(e.ctx)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "25006" {
		t.Errorf("CREATE TABLE on a read-only clone: %v, want SQLSTATE 25006 (read_only_sql_transaction)", err)
	}
	// A reset keeps it read-only (and its port).
	if _, err := m.Reset(e.ctx, "ro", clone.ResetRequest{SnapshotID: c.SnapshotID}); err != nil {
		t.Fatal(err)
	}
	c2 := e.wait(m, "ro", clone.StatusOK)
	if c2.Port != c.Port || e.query(c2, "SELECT pg_is_in_recovery()::text") != "true" {
		t.Errorf("after reset: port %d (was %d), want the same port and a clone still in recovery", c2.Port, c.Port)
	}
	e.destroy(m, "ro")
	e.assertNoLeaks(m)
}

// TestReplicasFollowTheirClone: replicas of a clone stream from it (a row
// written on the clone appears on each), are in recovery and refuse
// writes, log in with the clone's user, keep their replication password
// off the command line, and go when the clone is destroyed; the clone
// cannot be reset while it has replicas.
func TestReplicasFollowTheirClone(t *testing.T) {
	e := newEnv(t, 6)
	m := e.manager()
	defer closeManager(t, m)
	c := e.create(m, e.req("primary"))
	e.exec(c, "CREATE TABLE public.follow (note text)")
	if _, err := m.CreateReplicas(e.ctx, "primary", 0); err == nil {
		t.Error("0 replicas accepted, want a validation error on count")
	}
	reps, err := m.CreateReplicas(e.ctx, "primary", 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(reps) != 2 {
		t.Fatalf("%d replicas returned, want 2", len(reps))
	}
	var ready []clone.Clone
	for _, r := range reps {
		rc := e.wait(m, r.ID, clone.StatusOK)
		if rc.ReplicaOf != "primary" || !rc.ReadOnly || rc.Port == c.Port {
			t.Errorf("replica %s: replicaOf %q readOnly %v port %d, want replicaOf primary, read-only, its own port", rc.ID, rc.ReplicaOf, rc.ReadOnly, rc.Port)
		}
		ready = append(ready, rc)
	}
	if got, _ := m.Get("primary"); !slices.Equal(got.Replicas, []string{ready[0].ID, ready[1].ID}) && !slices.Equal(got.Replicas, []string{ready[1].ID, ready[0].ID}) {
		t.Errorf("clone's replicas %v, want both", got.Replicas)
	}
	e.exec(c, "INSERT INTO public.follow VALUES ('after the replicas')")
	for _, rc := range ready {
		deadline := time.Now().Add(30 * time.Second)
		for e.query(rc, "SELECT count(*)::text FROM public.follow") != "1" {
			if time.Now().After(deadline) {
				t.Fatalf("replica %s did not receive the clone's write within 30 s; log: %s", rc.ID, m.Runtime().LogTail(rc.ID, 10))
			}
			time.Sleep(100 * time.Millisecond)
		}
		if got := e.query(rc, "SELECT pg_is_in_recovery()::text || ' ' || status FROM pg_stat_wal_receiver"); got != "true streaming" {
			t.Errorf("replica %s: %q, want in recovery and streaming", rc.ID, got)
		}
		if info := e.query(rc, "SELECT current_setting('primary_conninfo')"); strings.Contains(info, "password") {
			t.Errorf("replica %s primary_conninfo %q holds a password; want a passfile", rc.ID, info)
		}
	}
	if _, err := m.Reset(e.ctx, "primary", clone.ResetRequest{Latest: true}); !errors.Is(err, clone.ErrHasReplicas) {
		t.Errorf("reset of a clone with replicas: %v, want ErrHasReplicas", err)
	}
	e.destroy(m, "primary")
	for _, rc := range ready {
		if _, err := m.Get(rc.ID); !errors.Is(err, clone.ErrNotFound) {
			t.Errorf("replica %s after its clone's destroy: %v, want not found", rc.ID, err)
		}
	}
	snaps, err := e.pool.Snapshots(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range snaps {
		if s.Labels[clone.LabelReplicaOf] != "" {
			t.Errorf("replica base snapshot %s left behind", s.ID)
		}
	}
	e.assertNoLeaks(m)
}
