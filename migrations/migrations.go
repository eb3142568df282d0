// Package migrations holds the platform database schema as ordered SQL
// files (goose format) embedded in the binary, and applies them.
package migrations

import (
	"context"
	"database/sql"
	"embed"
	"fmt"

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
