package clone_test

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/events"
)

func TestLifecycle(t *testing.T) {
	e := newEnv(t, 5)
	m := e.manager()
	defer closeManager(t, m)

	r := e.req("life1")
	r.ExtraConf = map[string]string{"statement_timeout": "4321"}
	r.DBName = "postgres"
	c := e.create(m, r)
	if c.Port < e.cfg.Provision.PortPool.From || c.Port > e.cfg.Provision.PortPool.To {
		t.Fatalf("port %d outside the range", c.Port)
	}
	if c.SnapshotID != e.snaps[0].ID || c.Pool != e.pool.Name() || c.StatusMessage != clone.MessageOK || c.CloningTime <= 0 {
		t.Fatalf("clone: %+v", c)
	}
	if c.DeleteAt.IsZero() || !c.DeleteAt.Equal(e.clock.Now().Add(10*time.Minute)) {
		t.Fatalf("deleteAt = %v, want now+10m", c.DeleteAt)
	}
	if got := e.query(c, "SELECT v FROM t"); got != "one" {
		t.Fatalf("data = %q", got)
	}
	if got := e.query(c, "SHOW statement_timeout"); got != "4321ms" {
		t.Fatalf("statement_timeout = %q", got)
	}
	if got := e.query(c, "SELECT rolsuper::text FROM pg_roles WHERE rolname = current_user"); got != "true" {
		t.Fatalf("superuser = %s", got)
	}
	// Production passwords do not work on the clone.
	if conn, err := e.connect(c, "app", prodPassword, "postgres"); err == nil {
		_ = conn.Close(e.ctx) // a failed goodbye loses nothing
		t.Fatal("the production password of role app works on the clone")
	} else if !strings.Contains(err.Error(), "password authentication failed") {
		t.Fatalf("app login: %v", err)
	}
	// A wrong password for the clone user fails too.
	if conn, err := e.connect(c, "alice", "not-it", "postgres"); err == nil {
		_ = conn.Close(e.ctx) // a failed goodbye loses nothing
		t.Fatal("wrong password accepted")
	}
	if list := m.List(); len(list) != 1 || list[0].ID != "life1" {
		t.Fatalf("list = %+v", list)
	}

	// Protected: destroy refused, then allowed once unprotected.
	if _, err := m.UpdateProtection("life1", true, nil); err != nil {
		t.Fatal(err)
	}
	got, err := m.Get("life1")
	if err != nil {
		t.Fatal(err)
	}
	if !got.Protected || !got.ProtectedTill.Equal(e.clock.Now().Add(60*time.Minute)) || !got.DeleteAt.IsZero() {
		t.Fatalf("protection: %+v", got)
	}
	if err := m.Destroy(e.ctx, "life1"); !errors.Is(err, clone.ErrProtected) {
		t.Fatalf("destroy protected: %v", err)
	}
	if _, err := m.UpdateProtection("life1", false, nil); err != nil {
		t.Fatal(err)
	}
	e.destroy(m, "life1")
	if _, err := m.Get("life1"); !errors.Is(err, clone.ErrNotFound) {
		t.Fatalf("get after destroy: %v", err)
	}
	if err := m.Destroy(e.ctx, "life1"); !errors.Is(err, clone.ErrNotFound) {
		t.Fatalf("destroy again: %v", err)
	}
	want := []events.Kind{events.CloneCreating, events.CloneReady, events.CloneProtected, events.CloneProtected, events.CloneDestroyed}
	if got := e.eventKinds("life1"); !slices.Equal(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
	e.assertNoLeaks(m)
}

func TestProtectionDurations(t *testing.T) {
	e := newEnv(t, 2)
	m := e.manager()
	defer closeManager(t, m)
	r := e.req("prot1")
	r.Protected = true
	r.ProtectionDurationMinutes = new(uint(0)) // forever, capped at the maximum (120)
	c := e.create(m, r)
	if !c.Protected || !c.ProtectedTill.Equal(e.clock.Now().Add(120*time.Minute)) {
		t.Fatalf("protectedTill = %v", c.ProtectedTill)
	}
	// clone.ready tells who tracks protection (the platform) when it ends.
	e.evMu.Lock()
	ready := e.ready["prot1"]
	e.evMu.Unlock()
	if want := `{"protected":true,"till":"` + c.ProtectedTill.UTC().Format(time.RFC3339Nano) + `"}`; ready != want {
		t.Errorf("clone.ready data %s, want %s", ready, want)
	}
	c, err := m.UpdateProtection("prot1", true, new(uint(30)))
	if err != nil {
		t.Fatal(err)
	}
	if !c.ProtectedTill.Equal(e.clock.Now().Add(30 * time.Minute)) {
		t.Fatalf("protectedTill = %v", c.ProtectedTill)
	}
	e.clock.Advance(31 * time.Minute)
	if c, err = m.Get("prot1"); err != nil {
		t.Fatal(err)
	}
	if c.Protected {
		t.Fatal("protection did not expire")
	}
	e.destroy(m, "prot1")
	e.assertNoLeaks(m)
}

func TestResetKeepsPortAndCredentials(t *testing.T) {
	e := newEnv(t, 3)
	s2 := e.addSnapshot("UPDATE t SET v = 'two'")
	m := e.manager()
	defer closeManager(t, m)

	r := e.req("reset1")
	r.SnapshotID = e.snaps[0].ID
	c := e.create(m, r)
	e.exec(c, "INSERT INTO t (v) VALUES ('written in clone')")

	rc, err := m.Reset(e.ctx, "reset1", clone.ResetRequest{SnapshotID: s2.ID})
	if err != nil {
		t.Fatal(err)
	}
	if rc.Status != clone.StatusResetting {
		t.Fatalf("reset returned %s", rc.Status)
	}
	if err := m.Destroy(e.ctx, "reset1"); !errors.Is(err, clone.ErrNotReady) {
		t.Fatalf("destroy while resetting: %v", err)
	}
	c2 := e.wait(m, "reset1", clone.StatusOK)
	if c2.Port != c.Port || c2.Username != c.Username || c2.SnapshotID != s2.ID {
		t.Fatalf("after reset: %+v (before %+v)", c2, c)
	}
	if got := e.query(c2, "SELECT string_agg(v, ',') FROM t"); got != "two" {
		t.Fatalf("after reset data = %q", got)
	}
	// Back to the first snapshot, then to the latest.
	if _, err := m.Reset(e.ctx, "reset1", clone.ResetRequest{SnapshotID: e.snaps[0].ID}); err != nil {
		t.Fatal(err)
	}
	c3 := e.wait(m, "reset1", clone.StatusOK)
	if got := e.query(c3, "SELECT string_agg(v, ',') FROM t"); got != "one" || c3.Port != c.Port {
		t.Fatalf("after reset to first: %q port %d", got, c3.Port)
	}
	if _, err := m.Reset(e.ctx, "reset1", clone.ResetRequest{Latest: true}); err != nil {
		t.Fatal(err)
	}
	c4 := e.wait(m, "reset1", clone.StatusOK)
	if c4.SnapshotID != s2.ID || e.query(c4, "SELECT v FROM t") != "two" {
		t.Fatalf("reset to latest: %+v", c4)
	}
	// A reset to an unknown snapshot changes nothing.
	var ve *clone.ValidationError
	if _, err := m.Reset(e.ctx, "reset1", clone.ResetRequest{SnapshotID: e.pool.Name() + "@snapshot_20990101000000"}); !errors.As(err, &ve) || ve.Field != "snapshot.id" {
		t.Fatalf("reset to unknown snapshot: %v", err)
	}
	if _, err := m.Reset(e.ctx, "nope", clone.ResetRequest{Latest: true}); !errors.Is(err, clone.ErrNotFound) {
		t.Fatalf("reset unknown clone: %v", err)
	}
	e.destroy(m, "reset1")
	// Each reset is announced, and its end is a ready again.
	resets, readies := 0, 0
	for _, k := range e.eventKinds("reset1") {
		switch k {
		case events.CloneReset:
			resets++
		case events.CloneReady:
			readies++
		}
	}
	if resets < 2 || readies != resets+1 {
		t.Fatalf("events %v: want every reset followed by a ready", e.eventKinds("reset1"))
	}
	e.assertNoLeaks(m)
}

func TestRestrictedUser(t *testing.T) {
	e := newEnv(t, 2)
	m := e.manager()
	defer closeManager(t, m)
	r := e.req("restr1")
	r.Username = "bob"
	r.Restricted = true
	c := e.create(m, r)
	if !c.Restricted {
		t.Fatal("not marked restricted")
	}
	for sql, want := range map[string]string{
		"SELECT rolsuper::text FROM pg_roles WHERE rolname = 'bob'":                                                                   "false",
		"SELECT string_agg(datname || '=' || pg_get_userbyid(datdba), ',' ORDER BY datname) FROM pg_database WHERE NOT datistemplate": "other=bob,postgres=bob",
		"SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 't'::regclass":                                                    "bob",
		"SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 't_id_seq'::regclass":                                             "bob",
		"SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'tv'::regclass":                                                   "bob",
		"SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'app.orders'::regclass":                                           "bob",
		"SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'app'":                                                    "bob",
		"SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE proname = 'f'":                                                           "bob",
		"SELECT pg_get_userbyid(typowner) FROM pg_type WHERE typname = 'mood'":                                                        "bob",
		// Objects nobody restricted should own stay with the system.
		"SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'pg_class'::regclass": "postgres",
	} {
		if got := e.query(c, sql); got != want {
			t.Errorf("%s = %q, want %q", sql, got, want)
		}
	}
	// As owner bob can change the schema, and cannot do superuser things.
	e.exec(c, "ALTER TABLE t ADD COLUMN note text")
	e.exec(c, "DROP TABLE app.orders")
	conn, err := e.connect(c, "bob", goodPassword, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(e.ctx, "CREATE ROLE mallory SUPERUSER"); err == nil {
		t.Fatal("restricted user created a superuser")
	}
	_ = conn.Close(e.ctx) // a failed goodbye loses nothing
	e.destroy(m, "restr1")
	e.assertNoLeaks(m)
}

func TestBadRequestsLeaveNothing(t *testing.T) {
	e := newEnv(t, 2)
	m := e.manager()
	defer closeManager(t, m)

	field := func(err error) string {
		if ve, ok := errors.AsType[*clone.ValidationError](err); ok {
			return ve.Field
		}
		return ""
	}
	cases := []struct {
		name  string
		mod   func(r *clone.CreateRequest)
		field string
		is    error
		msg   string
	}{
		{"unknown snapshot", func(r *clone.CreateRequest) { r.SnapshotID = e.pool.Name() + "@snapshot_20990101000000" }, "snapshot.id", clone.ErrSnapshotNotFound, "not found"},
		{"unknown pool", func(r *clone.CreateRequest) { r.SnapshotID = "nopool@snapshot_20990101000000" }, "snapshot.id", clone.ErrSnapshotNotFound, "no pool"},
		{"malformed snapshot", func(r *clone.CreateRequest) { r.SnapshotID = "garbage" }, "snapshot.id", clone.ErrSnapshotNotFound, "not a snapshot id"},
		{"bad id", func(r *clone.CreateRequest) { r.ID = "-x" }, "id", nil, "not a valid clone id"},
		{"bad id slash", func(r *clone.CreateRequest) { r.ID = "a/b" }, "id", nil, "not a valid clone id"},
		{"empty user", func(r *clone.CreateRequest) { r.Username = "" }, "db.username", nil, "required"},
		{"bad user", func(r *clone.CreateRequest) { r.Username = "1abc" }, "db.username", nil, "not a valid user name"},
		{"quote user", func(r *clone.CreateRequest) { r.Username = `a"b` }, "db.username", nil, "not a valid user name"},
		{"reserved user", func(r *clone.CreateRequest) { r.Username = "postgres" }, "db.username", nil, "reserved"},
		{"pg_ user", func(r *clone.CreateRequest) { r.Username = "pg_monitor" }, "db.username", nil, "reserved"},
		{"empty password", func(r *clone.CreateRequest) { r.Password = "" }, "db.password", nil, "required"},
		{"weak password", func(r *clone.CreateRequest) { r.Password = "password1" }, "db.password", nil, "insecure password"},
		{"bad db", func(r *clone.CreateRequest) { r.DBName = "x y" }, "db.db_name", nil, "not a valid database name"},
		{"extra port", func(r *clone.CreateRequest) { r.ExtraConf = map[string]string{"port": "1"} }, "extra_conf.port", nil, "portPool"},
		{"extra newline", func(r *clone.CreateRequest) { r.ExtraConf = map[string]string{"work_mem": "1MB\nport=5"} }, "extra_conf.work_mem", nil, "control character"},
		{"extra hba", func(r *clone.CreateRequest) { r.ExtraConf = map[string]string{"hba_file": "/etc/x"} }, "extra_conf.hba_file", nil, "pg_hba"},
		{"extra shared_preload_libraries", func(r *clone.CreateRequest) {
			r.ExtraConf = map[string]string{"shared_preload_libraries": "/tmp/evil.so"}
		}, "extra_conf.shared_preload_libraries", nil, "shared_preload_libraries is not in the allowlist"},
		{"extra session_preload_libraries", func(r *clone.CreateRequest) { r.ExtraConf = map[string]string{"session_preload_libraries": "evil"} }, "extra_conf.session_preload_libraries", nil, "session_preload_libraries is not in the allowlist"},
		{"extra local_preload_libraries", func(r *clone.CreateRequest) { r.ExtraConf = map[string]string{"local_preload_libraries": "evil"} }, "extra_conf.local_preload_libraries", nil, "local_preload_libraries is not in the allowlist"},
		{"extra jit_provider", func(r *clone.CreateRequest) { r.ExtraConf = map[string]string{"jit_provider": "/tmp/evil"} }, "extra_conf.jit_provider", nil, "jit_provider is not in the allowlist"},
		{"extra ssl_passphrase_command", func(r *clone.CreateRequest) { r.ExtraConf = map[string]string{"ssl_passphrase_command": "sh -c id"} }, "extra_conf.ssl_passphrase_command", nil, "ssl_passphrase_command is not in the allowlist"},
		{"extra recovery_end_command", func(r *clone.CreateRequest) { r.ExtraConf = map[string]string{"recovery_end_command": "sh -c id"} }, "extra_conf.recovery_end_command", nil, "recovery_end_command is not in the allowlist"},
		{"extra quote", func(r *clone.CreateRequest) { r.ExtraConf = map[string]string{"work_mem": "1MB' port='5"} }, "extra_conf.work_mem", nil, "not a valid value"},
	}
	for _, tc := range cases {
		r := e.req("bad1")
		tc.mod(&r)
		_, err := m.Create(e.ctx, r)
		if err == nil {
			t.Errorf("%s: no error", tc.name)
			continue
		}
		if field(err) != tc.field || !strings.Contains(err.Error(), tc.msg) || (tc.is != nil && !errors.Is(err, tc.is)) {
			t.Errorf("%s: err = %v (field %q), want field %q containing %q", tc.name, err, field(err), tc.field, tc.msg)
		}
	}
	if n := len(m.List()); n != 0 {
		t.Fatalf("%d clones after bad requests", n)
	}

	// Duplicate id and port exhaustion (the range has 2 ports).
	e.create(m, e.req("dup1"))
	if _, err := m.Create(e.ctx, e.req("dup1")); !errors.Is(err, clone.ErrExists) {
		t.Fatalf("duplicate id: %v", err)
	}
	e.create(m, e.req("full2"))
	if _, err := m.Create(e.ctx, e.req("full3")); !errors.Is(err, clone.ErrNoPorts) || !strings.Contains(err.Error(), "portPool") {
		t.Fatalf("ports exhausted: %v", err)
	}
	if _, err := m.Get("full3"); !errors.Is(err, clone.ErrNotFound) {
		t.Fatalf("refused clone is listed: %v", err)
	}
	e.destroy(m, "dup1")
	e.destroy(m, "full2")

	// Failures after the request was accepted end FATAL with the reason
	// and roll back dataset, process and port.
	r := e.req("fatal1")
	r.DBName = "no_such_db"
	if _, err := m.Create(e.ctx, r); err != nil {
		t.Fatal(err)
	}
	c := e.wait(m, "fatal1", clone.StatusFatal)
	if !strings.Contains(c.StatusMessage, `database "no_such_db" does not exist`) || c.Port != 0 {
		t.Fatalf("fatal clone: %+v", c)
	}
	r = e.req("fatal2")
	// An allowlisted setting with a value of the right shape that
	// postgres still refuses (an unknown unit).
	r.ExtraConf = map[string]string{"work_mem": "5XB"}
	if _, err := m.Create(e.ctx, r); err != nil {
		t.Fatal(err)
	}
	c = e.wait(m, "fatal2", clone.StatusFatal)
	if !strings.Contains(c.StatusMessage, "work_mem") {
		t.Fatalf("fatal clone: %+v", c)
	}
	clones, err := e.pool.Clones(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(clones) != 0 {
		t.Fatalf("failed clones left datasets: %+v", clones)
	}
	// FATAL clones can be destroyed (their records go).
	e.destroy(m, "fatal1")
	e.destroy(m, "fatal2")
	e.assertNoLeaks(m)
}

func TestNoSnapshotsYet(t *testing.T) {
	e := newEnv(t, 2)
	if err := e.pool.DestroySnapshot(e.ctx, e.snaps[0].ID, false); err != nil {
		t.Fatal(err)
	}
	m := e.manager()
	defer closeManager(t, m)
	if _, err := m.Create(e.ctx, e.req("x")); !errors.Is(err, clone.ErrNoSnapshots) {
		t.Fatalf("create without snapshots: %v", err)
	}
}

func TestParallelCreate20(t *testing.T) {
	e := newEnv(t, 25)
	m := e.manager()
	defer closeManager(t, m)
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			r := e.req("par" + strconv.Itoa(i))
			if i%2 == 1 {
				r.Restricted = true
			}
			if _, err := m.Create(e.ctx, r); err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	ports := map[int]string{}
	for i := range n {
		c := e.wait(m, "par"+strconv.Itoa(i), clone.StatusOK)
		if other, dup := ports[c.Port]; dup {
			t.Fatalf("clones %s and %s share port %d", c.ID, other, c.Port)
		}
		ports[c.Port] = c.ID
		if got := e.query(c, "SELECT v FROM t"); got != "one" {
			t.Fatalf("clone %s data = %q", c.ID, got)
		}
	}
	if list := m.List(); len(list) != n {
		t.Fatalf("list has %d clones", len(list))
	}
	for i := range n {
		if err := m.Destroy(e.ctx, "par"+strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		if _, err := m.Wait(e.ctx, "par"+strconv.Itoa(i)); !errors.Is(err, clone.ErrNotFound) {
			t.Fatalf("par%d after destroy: %v", i, err)
		}
	}
	e.assertNoLeaks(m)
}
