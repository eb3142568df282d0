package api_test

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/sdk/agentapi"
)

// execAs runs statements in the clone as its user, over TCP with the
// password (as psql would).
func execAs(t *testing.T, e *env, c *agentapi.Clone, stmts ...string) {
	t.Helper()
	cc, err := pgx.ParseConfig(c.DB.ConnStr + " sslmode=disable connect_timeout=10")
	if err != nil {
		t.Fatal(err)
	}
	cc.Password = goodPassword
	conn, err := pgx.ConnectConfig(e.ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(e.ctx) }()
	for _, s := range stmts {
		if _, err := conn.Exec(e.ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

// TestDiff compares a clone with its snapshot and two snapshots, on a
// real agent and pool, while the clone's superuser has planted objects
// to trick the agent's inspection: functions and an operator shadowing
// the catalog's in public, the database's and role's search_path pointed
// at them, a table whose name is an SQL injection, a row-security policy
// and a huge default expression.
func TestDiff(t *testing.T) {
	e := newEnv(t, 4, snapA, snapB)
	snapAID, snapBID := e.snaps[0].ID, e.snaps[1].ID
	d1 := e.createOK(agentapi.CreateCloneRequest{ID: "d1", DB: &agentapi.DatabaseRequest{Username: "alice", Password: goodPassword}})
	execAs(t, e, d1,
		"CREATE TABLE newt (id int PRIMARY KEY, note text DEFAULT 'x')",
		"INSERT INTO t VALUES ('three')",
		"ALTER TABLE t ADD COLUMN n int NOT NULL DEFAULT 0",
		"CREATE INDEX t_v ON t (v)",
		// Traps for the agent's session.
		"CREATE TABLE tripwire (called text)",
		`CREATE FUNCTION public.pg_total_relation_size(regclass) RETURNS bigint LANGUAGE sql AS 'SELECT -1::bigint'`,
		`CREATE FUNCTION public.count(anyelement) RETURNS bigint LANGUAGE sql AS 'SELECT -1::bigint'`,
		`CREATE FUNCTION public.format_type(oid, integer) RETURNS text LANGUAGE sql AS $$SELECT 'hacked'$$`,
		`CREATE FUNCTION public.false_eq(oid, oid) RETURNS boolean LANGUAGE sql AS 'SELECT false'`,
		`CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = public.false_eq)`,
		"ALTER DATABASE postgres SET search_path = public, pg_catalog",
		"ALTER ROLE postgres SET search_path = public, pg_catalog",
		`CREATE TABLE "x""; DROP TABLE t; --" (a int)`,
		`CREATE TABLE "ユニコード" (a int)`,
		"ALTER TABLE t ENABLE ROW LEVEL SECURITY",
		"ALTER TABLE t FORCE ROW LEVEL SECURITY",
		"CREATE POLICY p ON t USING (false)",
	)

	code, body := e.raw(http.MethodGet, "/clone/d1/diff", token, "")
	if code != http.StatusOK {
		t.Fatalf("GET /clone/d1/diff: %d %s", code, body)
	}
	d, err := decodeDiff(body)
	if err != nil {
		t.Fatal(err)
	}
	if d.From != snapBID || d.Database != "postgres" {
		t.Fatalf("diff of %q in %q, want %s in postgres", d.From, d.Database, snapBID)
	}
	byName := map[string]agentapi.TableDiff{}
	for _, td := range d.Tables {
		byName[td.Schema+"."+td.Table] = td
		if td.SizeTo < 0 || td.SizeFrom < 0 {
			t.Fatalf("a planted function answered for the agent: %+v", td)
		}
	}
	tt := byName["public.t"]
	if tt.Change != agentapi.TableChanged || tt.RowsFrom == nil || *tt.RowsFrom != 1 || tt.RowsTo == nil || *tt.RowsTo != 2 || !tt.SchemaChanged || tt.SizeTo <= 0 {
		t.Fatalf("table t: %+v (rows %v -> %v); want 1 -> 2 rows despite the row security policy, schema changed", tt, deref(tt.RowsFrom), deref(tt.RowsTo))
	}
	for _, name := range []string{"public.newt", "public.tripwire", `public.x"; DROP TABLE t; --`, "public.ユニコード"} {
		if byName[name].Change != agentapi.TableAdded {
			t.Fatalf("table %s not reported added: %+v", name, d.Tables)
		}
	}
	ddl := strings.Join(d.DDL, "\n")
	for _, want := range []string{
		`ALTER TABLE "public"."t" ADD COLUMN "n" integer NOT NULL DEFAULT 0;`,
		`CREATE INDEX t_v ON public.t USING btree (v);`,
		`CREATE TABLE "public"."newt" (`,
		`"note" text DEFAULT 'x'::text`,
		`CREATE TABLE "public"."x""; DROP TABLE t; --" (`,
		`CREATE TABLE "public"."ユニコード" (`,
	} {
		if !strings.Contains(ddl, want) {
			t.Fatalf("DDL lacks %q:\n%s", want, ddl)
		}
	}
	if strings.Contains(ddl, "hacked") {
		t.Fatalf("a planted format_type answered for the agent:\n%s", ddl)
	}
	// The inspection clone is gone again; the clone's data is untouched.
	if list, _ := e.client.Clones(e.ctx); len(list) != 1 || list[0].ID != "d1" {
		t.Fatalf("clones after the diff: %+v", list)
	}

	// Two snapshots: the data changed (an UPDATE), the schema did not.
	code, body = e.raw(http.MethodGet, "/snapshots/diff?from="+snapAID+"&to="+snapBID, token, "")
	if code != http.StatusOK {
		t.Fatalf("GET /snapshots/diff: %d %s", code, body)
	}
	if d, err = decodeDiff(body); err != nil {
		t.Fatal(err)
	}
	if len(d.DDL) != 0 || slices.ContainsFunc(d.Tables, func(td agentapi.TableDiff) bool { return td.Table != "t" || td.SchemaChanged }) {
		t.Fatalf("snapshot diff %+v, want at most t with its data changed", d)
	}

	// Bad input.
	for _, tc := range []struct{ path, detail string }{
		{"/snapshots/diff?to=" + snapBID, "from"},
		{"/snapshots/diff?from=../x&to=" + snapBID, "id"},
		{"/clone/d1/diff?db=no%20such", "db"},
		{"/clone/d1/diff?db=nosuchdb", "db"},
	} {
		code, body := e.raw(http.MethodGet, tc.path, token, "")
		if code != http.StatusBadRequest || decodeMap(t, body)["detail"] != tc.detail {
			t.Fatalf("GET %s: %d %s, want 400 on %s", tc.path, code, body, tc.detail)
		}
	}
	if code, _ := e.raw(http.MethodGet, "/clone/nope/diff", token, ""); code != http.StatusNotFound {
		t.Fatalf("diff of an unknown clone: %d", code)
	}
	e.destroy("d1")
	e.assertNothingLeft()
}

func deref(p *int64) any {
	if p == nil {
		return nil
	}
	return *p
}

func decodeDiff(b []byte) (agentapi.Diff, error) {
	var d agentapi.Diff
	err := json.Unmarshal(b, &d)
	return d, err
}
