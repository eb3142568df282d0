package diff

import (
	"strings"
	"testing"

	"github.com/thinlab/thinlab/sdk/agentapi"
)

func n(v int64) *int64 { return new(v) }

// TestCompare: the DDL turns the first schema into the second, with the
// agent's own quoting of hostile names; unchanged tables are not listed.
func TestCompare(t *testing.T) {
	from := &State{tables: map[string]*table{}}
	to := &State{tables: map[string]*table{}}
	add := func(s *State, tb table) { c := tb; s.tables[c.key()] = &c }
	add(from, table{Schema: "public", Name: "same", Size: 8192, Rows: n(1), Columns: []column{{Name: "a", Type: "integer"}}, Indexes: map[string]string{}})
	add(to, table{Schema: "public", Name: "same", Size: 8192, Rows: n(1), Columns: []column{{Name: "a", Type: "integer"}}, Indexes: map[string]string{}})
	add(from, table{Schema: "public", Name: "gone", Size: 1, Indexes: map[string]string{}})
	add(from, table{Schema: "app", Name: `we"ird`, Size: 10, Rows: n(1), Columns: []column{
		{Name: "id", Type: "integer", NotNull: true},
		{Name: "old", Type: "text"},
		{Name: "t", Type: "integer", Default: "0"},
	}, Indexes: map[string]string{"i_old": "CREATE INDEX i_old ON app.x USING btree (old)"}})
	add(to, table{Schema: "app", Name: `we"ird`, Size: 20, Rows: n(5), Columns: []column{
		{Name: "id", Type: "integer"},
		{Name: "t", Type: "bigint"},
		{Name: "new col", Type: "text", NotNull: true, Default: "'x'::text"},
	}, Indexes: map[string]string{"i_new": "CREATE INDEX i_new ON app.x USING btree (t)"}})
	add(to, table{Schema: "public", Name: "fresh", Size: 0, Rows: n(0), Columns: []column{{Name: "v", Type: "text"}}, Indexes: map[string]string{"fresh_pkey": "CREATE UNIQUE INDEX fresh_pkey ON public.fresh USING btree (v)"}})

	d := Compare(from, to)
	got := map[string]agentapi.TableDiff{}
	for _, td := range d.Tables {
		got[td.Schema+"."+td.Table] = td
	}
	if len(d.Tables) != 3 || got["public.gone"].Change != agentapi.TableDropped || got["public.fresh"].Change != agentapi.TableAdded {
		t.Fatalf("tables %+v", d.Tables)
	}
	w := got[`app.we"ird`]
	if w.Change != agentapi.TableChanged || !w.SchemaChanged || *w.RowsFrom != 1 || *w.RowsTo != 5 || w.SizeTo != 20 {
		t.Fatalf("changed table %+v", w)
	}
	want := []string{
		`DROP TABLE "public"."gone";`,
		`ALTER TABLE "app"."we""ird" ALTER COLUMN "id" DROP NOT NULL;`,
		`ALTER TABLE "app"."we""ird" ALTER COLUMN "t" TYPE bigint;`,
		`ALTER TABLE "app"."we""ird" ALTER COLUMN "t" DROP DEFAULT;`,
		`ALTER TABLE "app"."we""ird" ADD COLUMN "new col" text NOT NULL DEFAULT 'x'::text;`,
		`ALTER TABLE "app"."we""ird" DROP COLUMN "old";`,
		`DROP INDEX "app"."i_old";`,
		`CREATE INDEX i_new ON app.x USING btree (t);`,
		"CREATE TABLE \"public\".\"fresh\" (\n    \"v\" text\n);",
		`CREATE UNIQUE INDEX fresh_pkey ON public.fresh USING btree (v);`,
	}
	all := strings.Join(d.DDL, "\n")
	for _, s := range want {
		if !strings.Contains(all, s) {
			t.Fatalf("DDL lacks %q:\n%s", s, all)
		}
	}
	if len(d.DDL) != len(want) {
		t.Fatalf("DDL has %d statements, want %d:\n%s", len(d.DDL), len(want), all)
	}
	if empty := Compare(to, to); len(empty.Tables) != 0 || len(empty.DDL) != 0 {
		t.Fatalf("a state against itself: %+v", empty)
	}
}
