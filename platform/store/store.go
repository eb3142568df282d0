// Package store is the platform database: gorm models and queries. Every
// query that reads or changes an organization's data takes the organization
// ID, so a handler cannot forget the tenant.
package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/xid"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// Errors callers translate into API answers.
var (
	ErrNotFound  = errors.New("not found")
	ErrConflict  = errors.New("already exists")
	ErrLastOwner = errors.New("the organization's last owner cannot be removed or demoted: make another member owner first")
)

// Store wraps the platform's gorm handle.
type Store struct {
	db  *gorm.DB
	now func() time.Time
}

// Open connects to the platform database at dsn (URL or key=value form).
func Open(dsn string) (*Store, error) {
	db, err := gorm.Open(postgres.Open(dsn), &gorm.Config{
		Logger:                 logger.Discard,
		SkipDefaultTransaction: true,
		NowFunc:                func() time.Time { return time.Now().UTC() },
	})
	if err != nil {
		return nil, fmt.Errorf("connect to the platform database: %w", err)
	}
	sqlDB, err := db.DB()
	if err != nil {
		return nil, err
	}
	sqlDB.SetMaxOpenConns(20)
	sqlDB.SetMaxIdleConns(10)
	sqlDB.SetConnMaxIdleTime(5 * time.Minute)
	return &Store{db: db, now: func() time.Time { return time.Now().UTC() }}, nil
}

// SQL returns the underlying database/sql handle (for migrations).
func (s *Store) SQL() *sql.DB {
	d, _ := s.db.DB()
	return d
}

// Close closes the connection pool.
func (s *Store) Close() error { return s.SQL().Close() }

// Ping checks the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.SQL().PingContext(ctx) }

func (s *Store) conn(ctx context.Context) *gorm.DB { return s.db.WithContext(ctx) }

// newID returns a sortable unique ID with a kind prefix, such as org_....
func newID(prefix string) string { return prefix + "_" + xid.New().String() }

const secretAlphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

// randomString returns n characters from a crypto-random source.
func randomString(n int) string {
	var b strings.Builder
	max := big.NewInt(int64(len(secretAlphabet)))
	for range n {
		v, err := rand.Int(rand.Reader, max)
		if err != nil {
			panic("crypto/rand failed: " + err.Error())
		}
		b.WriteByte(secretAlphabet[v.Int64()])
	}
	return b.String()
}

// hashSecret is how token and invitation secrets are stored.
func hashSecret(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// notFound maps gorm's not-found to ErrNotFound.
func notFound(err error) error {
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return ErrNotFound
	}
	return err
}

// uniqueViolation reports whether err is PostgreSQL's unique_violation.
func uniqueViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505"
}
