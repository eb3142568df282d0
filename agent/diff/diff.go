// Package diff compares two states of a clone's database: which tables
// changed (relation sizes, and row counts where counting is cheap) and
// the schema differences as SQL DDL that turns the first into the second.
//
// The databases are hostile input: their users may have planted objects
// named like catalog functions, operators or views, odd identifiers, or
// tables that make reads slow. Every query here reads pg_catalog only,
// schema-qualified (pg_catalog.x, OPERATOR(pg_catalog.=)), in a read-only
// transaction with a statement timeout, on a session whose search_path the
// caller pinned (pgcluster.SessionConfig). No function, view or operator
// of the database's own is ever called; deparsing (pg_get_expr,
// pg_get_indexdef, format_type) prints expressions, it does not run them.
// Row counts are exact only for plain tables below CountLimit bytes, and
// the session is a superuser's, which row security does not apply to.
// Identifiers in the DDL are quoted here; type names and expressions come
// quoted from postgres' own deparser.
package diff

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/sdk/agentapi"
)

// CountLimit is the largest table (bytes) whose rows are counted exactly.
const CountLimit = 16 << 20

// MaxTables bounds how many tables are compared (a database with more is
// cut there: the diff stays bounded in memory and time).
const MaxTables = 20000

// StatementTimeout bounds each inspection query.
const StatementTimeout = time.Minute

// column is one column of a table.
type column struct {
	Name    string
	Type    string
	NotNull bool
	Default string
}

// table is one plain or partitioned table.
type table struct {
	Schema, Name string
	Size         int64
	Rows         *int64
	Columns      []column
	// Indexes maps index name to its definition (pg_get_indexdef).
	Indexes map[string]string
}

func (t table) key() string { return t.Schema + "\x00" + t.Name }

// State is one database as read by Inspect.
type State struct {
	tables map[string]*table
}

// Inspect reads the tables of the database conn is connected to.
func Inspect(ctx context.Context, conn *pgx.Conn) (*State, error) {
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }() // read-only: nothing to keep
	if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL statement_timeout = %d", StatementTimeout.Milliseconds())); err != nil {
		return nil, err
	}
	st := &State{tables: map[string]*table{}}
	byOID := map[uint32]*table{}
	rows, err := tx.Query(ctx, `
SELECT c.oid, n.nspname::pg_catalog.text, c.relname::pg_catalog.text,
       pg_catalog.pg_total_relation_size(c.oid::pg_catalog.regclass), c.relkind::pg_catalog.text
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
 WHERE c.relkind OPERATOR(pg_catalog.=) ANY (ARRAY['r','p']::pg_catalog."char"[])
   AND n.nspname OPERATOR(pg_catalog.<>) ALL (ARRAY['pg_catalog','information_schema','pg_toast']::pg_catalog.name[])
   AND n.nspname::pg_catalog.text NOT LIKE 'pg\_temp\_%'
   AND n.nspname::pg_catalog.text NOT LIKE 'pg\_toast\_temp\_%'
 LIMIT `+fmt.Sprint(MaxTables))
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	type plain struct {
		oid  uint32
		size int64
	}
	var small []plain
	for rows.Next() {
		var oid uint32
		var kind string
		t := &table{Indexes: map[string]string{}}
		if err := rows.Scan(&oid, &t.Schema, &t.Name, &t.Size, &kind); err != nil {
			rows.Close()
			return nil, err
		}
		st.tables[t.key()] = t
		byOID[oid] = t
		if kind == "r" && t.Size <= CountLimit {
			small = append(small, plain{oid, t.Size})
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}

	oids := make([]uint32, 0, len(byOID))
	for oid := range byOID {
		oids = append(oids, oid)
	}
	rows, err = tx.Query(ctx, `
SELECT a.attrelid, a.attname::pg_catalog.text, pg_catalog.format_type(a.atttypid, a.atttypmod),
       a.attnotnull, COALESCE(pg_catalog.pg_get_expr(d.adbin, d.adrelid), '')
  FROM pg_catalog.pg_attribute a
  LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid OPERATOR(pg_catalog.=) a.attrelid AND d.adnum OPERATOR(pg_catalog.=) a.attnum
 WHERE a.attrelid OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.oid[])
   AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped
 ORDER BY a.attrelid, a.attnum`, oids)
	if err != nil {
		return nil, fmt.Errorf("list columns: %w", err)
	}
	for rows.Next() {
		var oid uint32
		var c column
		if err := rows.Scan(&oid, &c.Name, &c.Type, &c.NotNull, &c.Default); err != nil {
			rows.Close()
			return nil, err
		}
		if t := byOID[oid]; t != nil {
			t.Columns = append(t.Columns, c)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list columns: %w", err)
	}

	rows, err = tx.Query(ctx, `
SELECT i.indrelid, c.relname::pg_catalog.text, pg_catalog.pg_get_indexdef(i.indexrelid::pg_catalog.oid)
  FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) i.indexrelid
 WHERE i.indrelid OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.oid[])`, oids)
	if err != nil {
		return nil, fmt.Errorf("list indexes: %w", err)
	}
	for rows.Next() {
		var oid uint32
		var name, def string
		if err := rows.Scan(&oid, &name, &def); err != nil {
			rows.Close()
			return nil, err
		}
		if t := byOID[oid]; t != nil {
			t.Indexes[name] = def
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list indexes: %w", err)
	}

	// Exact counts of small plain tables: a superuser's count(*) runs no
	// trigger, rule or policy of the table's owner.
	for _, p := range small {
		t := byOID[p.oid]
		var n int64
		q := "SELECT pg_catalog.count(*) FROM ONLY " + pgx.Identifier{t.Schema, t.Name}.Sanitize()
		if err := tx.QueryRow(ctx, q).Scan(&n); err != nil {
			return nil, fmt.Errorf("count rows of %s.%s: %w", t.Schema, t.Name, err)
		}
		t.Rows = &n
	}
	return st, nil
}

// Compare turns two states into the API's diff.
func Compare(from, to *State) agentapi.Diff {
	out := agentapi.Diff{Tables: []agentapi.TableDiff{}, DDL: []string{}}
	keys := map[string]bool{}
	for k := range from.tables {
		keys[k] = true
	}
	for k := range to.tables {
		keys[k] = true
	}
	sorted := make([]string, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	slices.Sort(sorted)
	for _, k := range sorted {
		a, b := from.tables[k], to.tables[k]
		switch {
		case a == nil:
			out.Tables = append(out.Tables, agentapi.TableDiff{Schema: b.Schema, Table: b.Name, Change: agentapi.TableAdded, SizeTo: b.Size, RowsTo: b.Rows})
			out.DDL = append(out.DDL, createTable(b)...)
		case b == nil:
			out.Tables = append(out.Tables, agentapi.TableDiff{Schema: a.Schema, Table: a.Name, Change: agentapi.TableDropped, SizeFrom: a.Size, RowsFrom: a.Rows})
			out.DDL = append(out.DDL, "DROP TABLE "+ident(a.Schema, a.Name)+";")
		default:
			ddl := alterTable(a, b)
			out.DDL = append(out.DDL, ddl...)
			rowsChanged := a.Rows != nil && b.Rows != nil && *a.Rows != *b.Rows
			if a.Size != b.Size || rowsChanged || len(ddl) > 0 {
				out.Tables = append(out.Tables, agentapi.TableDiff{Schema: a.Schema, Table: a.Name, Change: agentapi.TableChanged,
					SizeFrom: a.Size, SizeTo: b.Size, RowsFrom: a.Rows, RowsTo: b.Rows, SchemaChanged: len(ddl) > 0})
			}
		}
	}
	return out
}

func ident(parts ...string) string { return pgx.Identifier(parts).Sanitize() }

func columnDef(c column) string {
	s := ident(c.Name) + " " + c.Type
	if c.NotNull {
		s += " NOT NULL"
	}
	if c.Default != "" {
		s += " DEFAULT " + c.Default
	}
	return s
}

func createTable(t *table) []string {
	cols := make([]string, 0, len(t.Columns))
	for _, c := range t.Columns {
		cols = append(cols, "    "+columnDef(c))
	}
	out := []string{"CREATE TABLE " + ident(t.Schema, t.Name) + " (\n" + strings.Join(cols, ",\n") + "\n);"}
	for _, name := range sortedKeys(t.Indexes) {
		out = append(out, t.Indexes[name]+";")
	}
	return out
}

func alterTable(a, b *table) []string {
	var out []string
	tbl := ident(b.Schema, b.Name)
	old := map[string]column{}
	for _, c := range a.Columns {
		old[c.Name] = c
	}
	seen := map[string]bool{}
	for _, c := range b.Columns {
		seen[c.Name] = true
		o, ok := old[c.Name]
		switch {
		case !ok:
			out = append(out, "ALTER TABLE "+tbl+" ADD COLUMN "+columnDef(c)+";")
		default:
			col := tbl + " ALTER COLUMN " + ident(c.Name)
			if o.Type != c.Type {
				out = append(out, "ALTER TABLE "+col+" TYPE "+c.Type+";")
			}
			if o.NotNull != c.NotNull {
				if c.NotNull {
					out = append(out, "ALTER TABLE "+col+" SET NOT NULL;")
				} else {
					out = append(out, "ALTER TABLE "+col+" DROP NOT NULL;")
				}
			}
			if o.Default != c.Default {
				if c.Default == "" {
					out = append(out, "ALTER TABLE "+col+" DROP DEFAULT;")
				} else {
					out = append(out, "ALTER TABLE "+col+" SET DEFAULT "+c.Default+";")
				}
			}
		}
	}
	for _, c := range a.Columns {
		if !seen[c.Name] {
			out = append(out, "ALTER TABLE "+tbl+" DROP COLUMN "+ident(c.Name)+";")
		}
	}
	for _, name := range sortedKeys(a.Indexes) {
		if def, ok := b.Indexes[name]; !ok || def != a.Indexes[name] {
			out = append(out, "DROP INDEX "+ident(a.Schema, name)+";")
		}
	}
	for _, name := range sortedKeys(b.Indexes) {
		if def, ok := a.Indexes[name]; !ok || def != b.Indexes[name] {
			out = append(out, b.Indexes[name]+";")
		}
	}
	return out
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
