package clone_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/thinlab/thinlab/agent/clone"
)

// searchPathTrap plants, in the connected database, functions, an
// aggregate, operators and a view that shadow what the agent's superuser
// sessions call, each making bob a superuser when a superuser runs it
// (SECURITY INVOKER, the default), and points the database's search_path
// at them. A database owner can do all of it: bob, a restricted clone
// user, owns every database of his clone, and so does whoever owns the
// source database a snapshot was copied from.
var searchPathTrap = []string{
	`CREATE SCHEMA evil`,
	`CREATE FUNCTION evil.escalate() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'bob') THEN
    EXECUTE 'ALTER ROLE bob SUPERUSER';
  END IF;
  RETURN true;
END $$`,
	`CREATE FUNCTION evil.pg_backend_pid() RETURNS integer LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.escalate(); RETURN pg_catalog.pg_backend_pid(); END $$`,
	`CREATE FUNCTION evil.current_setting(text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.escalate(); RETURN pg_catalog.current_setting($1); END $$`,
	`CREATE FUNCTION evil.format(text, text, text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.escalate(); RETURN pg_catalog.format($1, $2, $3); END $$`,
	`CREATE FUNCTION evil.cnt(bigint) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.escalate(); RETURN $1 OPERATOR(pg_catalog.+) 1; END $$`,
	`CREATE AGGREGATE evil.count(*) (sfunc = evil.cnt, stype = bigint, initcond = '0')`,
	`CREATE FUNCTION evil.ne(integer, integer) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.escalate(); RETURN $1 OPERATOR(pg_catalog.<>) $2; END $$`,
	`CREATE OPERATOR evil.<> (leftarg = integer, rightarg = integer, function = evil.ne)`,
	`CREATE FUNCTION evil.eq(text, text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.escalate(); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$`,
	`CREATE OPERATOR evil.= (leftarg = text, rightarg = text, function = evil.eq)`,
	`CREATE VIEW evil.pg_stat_activity AS SELECT * FROM pg_catalog.pg_stat_activity WHERE evil.escalate()`,
	`CREATE VIEW evil.pg_roles AS SELECT * FROM pg_catalog.pg_roles WHERE evil.escalate()`,
	`CREATE VIEW evil.pg_database AS SELECT * FROM pg_catalog.pg_database WHERE evil.escalate()`,
	`GRANT USAGE ON SCHEMA evil TO PUBLIC`,
	`ALTER DATABASE postgres SET search_path = evil, pg_catalog`,
}

// TestSearchPathTrapIsHarmless runs the attack of issue 8: a restricted
// clone user (and, separately, the owner of the source database) plants a
// search_path trap in the clone's "postgres" database; the agent's idle
// check, restart, readiness check, create and reset must not spring it.
func TestSearchPathTrapIsHarmless(t *testing.T) {
	e := newEnv(t, 3)
	trapped := e.addSnapshot(searchPathTrap...)
	m := e.manager()
	defer closeManager(t, m)

	isSuper := func(c clone.Clone) string {
		t.Helper()
		return e.query(c, `SELECT rolsuper::pg_catalog.text FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'bob'`)
	}
	assertNotSuper := func(c clone.Clone, after string) {
		t.Helper()
		if got := isSuper(c); got != "false" {
			t.Fatalf("after %s bob's rolsuper = %s, want false: an agent superuser session ran bob's trap", after, got)
		}
	}

	// 1. bob plants the trap himself in a clean clone.
	r := e.req("trap1")
	r.Username = "bob"
	r.Restricted = true
	r.SnapshotID = e.snaps[0].ID
	c := e.create(m, r)
	for _, q := range searchPathTrap {
		e.exec(c, q)
	}
	// The trap is armed: in a new session bob's own unqualified call
	// reaches evil.pg_backend_pid(), whose ALTER ROLE he may not run.
	conn, err := e.connect(c, "bob", goodPassword, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	var pgErr *pgconn.PgError
	if _, err := conn.Exec(e.ctx, "SELECT pg_backend_pid()"); !errors.As(err, &pgErr) || pgErr.Code != "42501" {
		t.Fatalf("the trap is not armed: unqualified pg_backend_pid() as bob gave %v, want permission denied (42501) from evil.escalate", err)
	}
	_ = conn.Close(e.ctx) // a failed goodbye loses nothing

	// Idle check (counts client backends as superuser).
	if got := m.CheckIdle(e.ctx); len(got) != 0 {
		t.Fatalf("idle check deleted %v", got)
	}
	assertNotSuper(c, "the idle check")

	// Restart of a dead postgres, with its readiness check.
	pid := postmasterOf(t, mountOf(t, e, "trap1"))
	if pid == 0 {
		t.Fatal("no postmaster for clone trap1")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill postgres %d: %v", pid, err)
	}
	for i := 0; i < 500 && syscall.Kill(pid, 0) == nil; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	m.CheckIdle(e.ctx)
	if after, _ := m.Get("trap1"); after.Status != clone.StatusOK {
		t.Fatalf("after restart clone trap1 is %s (%s), want OK", after.Status, after.StatusMessage)
	}
	assertNotSuper(c, "the restart")
	m.CheckIdle(e.ctx)
	assertNotSuper(c, "the idle check of the restarted clone")

	// 2. The trap came with the snapshot (the source database's owner
	// planted it): create and reset set up bob in a trapped database.
	r = e.req("trap2")
	r.Username = "bob"
	r.Restricted = true
	r.SnapshotID = trapped.ID
	c2 := e.create(m, r)
	assertNotSuper(c2, "create from a trapped snapshot")
	m.CheckIdle(e.ctx)
	assertNotSuper(c2, "the idle check of a clone of a trapped snapshot")
	if _, err := m.Reset(e.ctx, "trap2", clone.ResetRequest{SnapshotID: trapped.ID}); err != nil {
		t.Fatal(err)
	}
	c2 = e.wait(m, "trap2", clone.StatusOK)
	assertNotSuper(c2, "reset to a trapped snapshot")

	e.destroy(m, "trap1")
	e.destroy(m, "trap2")
	e.assertNoLeaks(m)
}

// TestExtraConfAllowlist: allowlisted settings reach a real clone's
// postgres (the refused ones are cases of TestBadRequestsLeaveNothing).
func TestExtraConfAllowlist(t *testing.T) {
	e := newEnv(t, 3)
	m := e.manager()
	defer closeManager(t, m)
	conf := map[string]string{
		"work_mem":                   "7MB",
		"random_page_cost":           "1.1",
		"enable_seqscan":             "off",
		"statement_timeout":          "5s",
		"jit":                        "off",
		"log_min_duration_statement": "250",
		"default_statistics_target":  "321",
		"log_line_prefix":            "%m [%p] it's ",
	}
	r := e.req("conf1")
	r.ExtraConf = conf
	c := e.create(m, r)
	want := map[string]string{
		"work_mem": "7MB", "random_page_cost": "1.1", "enable_seqscan": "off", "statement_timeout": "5s",
		"jit": "off", "log_min_duration_statement": "250ms", "default_statistics_target": "321",
		"log_line_prefix": "%m [%p] it's ",
	}
	for name, v := range want {
		if got := e.query(c, "SHOW "+name); got != v {
			t.Errorf("SHOW %s in the clone = %q, want %q (from extra_conf)", name, got, v)
		}
	}
	e.destroy(m, "conf1")
	e.assertNoLeaks(m)
}

// stateFile reads the clone state file as the agent wrote it.
func (e *env) stateFile() (string, []map[string]any) {
	e.t.Helper()
	raw, err := os.ReadFile(filepath.Join(e.cfg.StateDir, clone.StateFile))
	if err != nil {
		e.t.Fatal(err)
	}
	var doc struct {
		Clones []map[string]any `json:"clones"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		e.t.Fatal(err)
	}
	return string(raw), doc.Clones
}

// assertNoPlaintext fails when the state file holds the password or a
// clone without its verifier.
func (e *env) assertNoPlaintext(after string) {
	e.t.Helper()
	raw, recs := e.stateFile()
	if strings.Contains(raw, goodPassword) || strings.Contains(raw, `"password"`) {
		e.t.Fatalf("after %s the state file holds a plaintext password:\n%s", after, raw)
	}
	for _, r := range recs {
		if v, _ := r["passwordVerifier"].(string); !strings.HasPrefix(v, "SCRAM-SHA-256$4096:") {
			e.t.Fatalf("after %s clone %v has no SCRAM verifier in the state: %q", after, r["id"], v)
		}
	}
}

func (e *env) assertLogin(m *clone.Manager, id, after string) {
	e.t.Helper()
	c, err := m.Get(id)
	if err != nil || c.Status != clone.StatusOK {
		e.t.Fatalf("after %s clone %s: %+v %v, want OK", after, id, c, err)
	}
	conn, err := e.connect(c, c.Username, goodPassword, c.DBName)
	if err != nil {
		e.t.Fatalf("after %s the clone's password no longer logs in: %v", after, err)
	}
	_ = conn.Close(e.ctx) // a failed goodbye loses nothing
	if conn, err := e.connect(c, c.Username, goodPassword+"x", c.DBName); err == nil {
		_ = conn.Close(e.ctx) // a failed goodbye loses nothing
		e.t.Fatalf("after %s a wrong password logs in", after)
	}
}

func killPostmaster(t *testing.T, e *env, id string) {
	t.Helper()
	pid := postmasterOf(t, mountOf(t, e, id))
	if pid == 0 {
		t.Fatalf("no postmaster for clone %s", id)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill postgres %d: %v", pid, err)
	}
	for i := 0; i < 500 && syscall.Kill(pid, 0) == nil; i++ {
		time.Sleep(10 * time.Millisecond)
	}
}

// TestStateHoldsVerifiersOnly: the state file never holds the clone's
// password, only its SCRAM verifier, and the same password logs in after a
// reset, a restart of the clone's postgres by a new agent, and a restart
// by the idle loop (readiness probed without the password).
func TestStateHoldsVerifiersOnly(t *testing.T) {
	e := newEnv(t, 2)
	s2 := e.addSnapshot("UPDATE t SET v = 'two'")
	m := e.manager()
	e.create(m, e.req("pw1"))
	e.assertNoPlaintext("create")
	e.assertLogin(m, "pw1", "create")

	if _, err := m.Reset(e.ctx, "pw1", clone.ResetRequest{SnapshotID: s2.ID}); err != nil {
		t.Fatal(err)
	}
	e.wait(m, "pw1", clone.StatusOK)
	e.assertNoPlaintext("reset")
	e.assertLogin(m, "pw1", "reset")
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}

	// A new agent finds the clone's postgres dead and restarts it.
	killPostmaster(t, e, "pw1")
	m = e.manager()
	defer closeManager(t, m)
	e.assertLogin(m, "pw1", "an agent restart")
	e.assertNoPlaintext("an agent restart")
	killPostmaster(t, e, "pw1")
	m.CheckIdle(e.ctx)
	e.assertLogin(m, "pw1", "a restart by the idle loop")

	// The probe really compares: once the user changed its password, the
	// restarted clone no longer passes the readiness check.
	c, _ := m.Get("pw1")
	// (synchronously: the clone runs with synchronous_commit off and its
	// postgres is killed right after)
	e.exec(c, "SET synchronous_commit = on; ALTER ROLE alice PASSWORD 'Another-Long-Password-99'")
	killPostmaster(t, e, "pw1")
	m.CheckIdle(e.ctx)
	if c, _ := m.Get("pw1"); c.Status != clone.StatusFatal || !strings.Contains(c.StatusMessage, "not the one the agent set") {
		t.Fatalf("after the user changed its password a restart gave %s (%s), want FATAL: the readiness probe does not check the verifier", c.Status, c.StatusMessage)
	}
	e.destroy(m, "pw1")
	e.assertNoLeaks(m)
}

// TestStateMigratesPlaintextPasswords: a state file written before
// verifiers (a "password" in plaintext) is rewritten with the verifier the
// running clone already has, so later restarts probe it successfully.
func TestStateMigratesPlaintextPasswords(t *testing.T) {
	e := newEnv(t, 3)
	m := e.manager()
	e.create(m, e.req("old1"))
	e.create(m, e.req("old2"))
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	// Turn the state into the old format.
	raw, _ := e.stateFile()
	old := regexp.MustCompile(`"passwordVerifier": "[^"]*"`).ReplaceAllString(raw, `"password": "`+goodPassword+`"`)
	if !strings.Contains(old, goodPassword) {
		t.Fatal("could not write an old-format state file")
	}
	if err := os.WriteFile(filepath.Join(e.cfg.StateDir, clone.StateFile), []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	killPostmaster(t, e, "old2") // restored from the old state while dead

	m = e.manager()
	defer closeManager(t, m)
	e.assertNoPlaintext("migration")
	e.assertLogin(m, "old1", "migration")
	e.assertLogin(m, "old2", "migration")
	// Restarts now rely on the verifier alone.
	for _, id := range []string{"old1", "old2"} {
		killPostmaster(t, e, id)
		m.CheckIdle(e.ctx)
		e.assertLogin(m, id, "a restart after migration")
	}
	e.assertNoPlaintext("restarts after migration")
	e.destroy(m, "old1")
	e.destroy(m, "old2")
	e.assertNoLeaks(m)
}
