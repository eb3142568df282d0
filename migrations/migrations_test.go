package migrations_test

import (
	"database/sql"
	"strings"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/thinlab/thinlab/internal/pgtest"
	"github.com/thinlab/thinlab/migrations"
)

// schemaDump describes every table column, index, constraint and trigger
// of the public schema, so two dumps differ if a migration changed anything.
const schemaDump = `
SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable || ' ' || coalesce(column_default, '')
  FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL
SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
UNION ALL
SELECT 'constraint ' || conrelid::regclass || ' ' || pg_get_constraintdef(oid) FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL
SELECT 'trigger ' || tgrelid::regclass || ' ' || tgname FROM pg_trigger WHERE NOT tgisinternal
UNION ALL
SELECT 'applied ' || version_id || ' ' || is_applied FROM goose_db_version
ORDER BY 1`

func dump(t *testing.T, db *sql.DB) string {
	t.Helper()
	rows, err := db.Query(schemaDump)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = rows.Close() }() // rows.Err() below reports a failed read
	var lines []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		lines = append(lines, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return strings.Join(lines, "\n")
}

func TestUpOnEmptyDatabaseThenAgain(t *testing.T) {
	srv := pgtest.Start(t)
	srv.Exec(t, "postgres", "CREATE DATABASE platform")
	db, err := sql.Open("pgx", srv.Cluster.SocketConnString(srv.Port, "postgres", "platform"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = db.Close() }() // the test's own pool; the server is dropped next
	ctx := t.Context()

	if v, err := migrations.Version(ctx, db); err != nil || v != 0 {
		t.Fatalf("empty database at version %d (%v), want 0", v, err)
	}
	latest, err := migrations.Latest(db)
	if err != nil || latest < 1 {
		t.Fatalf("Latest = %d, %v", latest, err)
	}
	v1, err := migrations.Up(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if v1 != latest {
		t.Fatalf("after Up at version %d, want %d", v1, latest)
	}
	first := dump(t, db)
	for _, want := range []string{"column organizations.slug", "column users.oidc_subject", "column api_tokens.hash", "trigger audit_events audit_events_no_update_delete", "UNIQUE (oidc_issuer, oidc_subject)"} {
		if !strings.Contains(first, want) {
			t.Errorf("schema lacks %q", want)
		}
	}

	v2, err := migrations.Up(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if v2 != v1 {
		t.Fatalf("second Up moved version %d -> %d", v1, v2)
	}
	if second := dump(t, db); second != first {
		t.Fatalf("second Up changed the schema:\n--- first\n%s\n--- second\n%s", first, second)
	}
}
