// Package migrations holds the platform database schema as ordered SQL
// files (goose format) embedded in the binary, and applies them.
package migrations

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"strings"

	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed *.sql
var files embed.FS

// FS is the embedded set of migration files.
func FS() embed.FS { return files }

// Up applies every pending migration to db and returns the schema version
// reached. Running it again on an up-to-date database changes nothing.
func Up(ctx context.Context, db *sql.DB) (int64, error) {
	p, err := provider(db)
	if err != nil {
		return 0, err
	}
	if _, err := p.Up(ctx); err != nil {
		return 0, fmt.Errorf("apply platform migrations: %w", err)
	}
	return p.GetDBVersion(ctx)
}

// Version returns the schema version db is at (0 for an empty database).
func Version(ctx context.Context, db *sql.DB) (int64, error) {
	p, err := provider(db)
	if err != nil {
		return 0, err
	}
	return p.GetDBVersion(ctx)
}

// Latest is the version of the newest embedded migration.
func Latest(db *sql.DB) (int64, error) {
	p, err := provider(db)
	if err != nil {
		return 0, err
	}
	srcs := p.ListSources()
	if len(srcs) == 0 {
		return 0, nil
	}
	return srcs[len(srcs)-1].Version, nil
}

func provider(db *sql.DB) (*goose.Provider, error) {
	// A session advisory lock lets several platform replicas start at once:
	// one migrates, the others wait and then find nothing to do.
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		return nil, err
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, files, goose.WithSessionLocker(locker))
	if err != nil {
		return nil, fmt.Errorf("load embedded migrations: %w", err)
	}
	return p, nil
}

// GrantRuntime gives the application's runtime role what it needs and no
// more, on a database whose tables the connecting (migration owner) role
// owns: read and write on the platform's tables, but on the audit log only
// SELECT and INSERT. The runtime role does not own the tables, so it can
// neither drop nor alter them nor disable the append-only triggers. Run it
// after Up, as the owner; it is idempotent.
func GrantRuntime(ctx context.Context, db *sql.DB, role string) error {
	r := quoteIdent(role)
	stmts := []string{
		"GRANT USAGE ON SCHEMA public TO " + r,
		"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO " + r,
		"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO " + r,
		"REVOKE ALL ON audit_events FROM " + r,
		"GRANT SELECT, INSERT ON audit_events TO " + r,
		"REVOKE ALL ON goose_db_version FROM " + r,
		"GRANT SELECT ON goose_db_version TO " + r,
	}
	for _, q := range stmts {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("grant the runtime role %s its privileges (%s): %w", role, q, err)
		}
	}
	return nil
}

// quoteIdent quotes a PostgreSQL identifier.
func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
