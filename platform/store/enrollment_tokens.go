package store

import (
	"context"
	"errors"
	"strings"
	"time"
)

// EnrollmentTokenPrefix starts every enrollment token, so that leaked ones
// are easy to scan for (and never taken for an API token).
const EnrollmentTokenPrefix = "thle_"

// Enrollment refusals. Callers answer all of them alike (the API must not
// tell a guesser which tokens exist) and log which one it was.
var (
	ErrEnrollmentInvalid = errors.New("unknown enrollment token")
	ErrEnrollmentExpired = errors.New("enrollment token expired")
	ErrEnrollmentRevoked = errors.New("enrollment token revoked")
	ErrEnrollmentUsedUp  = errors.New("enrollment token already used up")
)

// EnrollmentToken lets an agent enroll into one organization.
type EnrollmentToken struct {
	ID        string `gorm:"primaryKey"`
	OrgID     string
	Name      string
	Prefix    string
	Hash      []byte
	MaxUses   *int // nil: unlimited until expiry; 1: single use
	Uses      int
	CreatedBy *string
	CreatedAt time.Time
	ExpiresAt time.Time
	RevokedAt *time.Time
}

// TableName is the table of EnrollmentToken.
func (EnrollmentToken) TableName() string { return "enrollment_tokens" }

// Usable reports whether the token can still enroll an agent at now.
func (t *EnrollmentToken) Usable(now time.Time) bool { return t.refusal(now) == nil }

// refusal says why the token cannot enroll at now (nil when it can).
func (t *EnrollmentToken) refusal(now time.Time) error {
	switch {
	case t.RevokedAt != nil:
		return ErrEnrollmentRevoked
	case !now.Before(t.ExpiresAt):
		return ErrEnrollmentExpired
	case t.MaxUses != nil && t.Uses >= *t.MaxUses:
		return ErrEnrollmentUsedUp
	}
	return nil
}

// CreateEnrollmentToken creates a token for orgID; maxUses nil means any
// number of agents until expiry. The secret is returned once.
func (s *Store) CreateEnrollmentToken(ctx context.Context, orgID, createdBy, name string, expiresAt time.Time, maxUses *int) (*EnrollmentToken, string, error) {
	secret := EnrollmentTokenPrefix + randomString(43) // ~256 bits
	tok := &EnrollmentToken{
		ID: newID("enr"), OrgID: orgID, Name: strings.TrimSpace(name),
		Prefix: secret[:len(EnrollmentTokenPrefix)+6], Hash: hashSecret(secret),
		MaxUses: maxUses, CreatedAt: s.now(), ExpiresAt: expiresAt.UTC(),
	}
	if createdBy != "" {
		tok.CreatedBy = &createdBy
	}
	if err := s.conn(ctx).Create(tok).Error; err != nil {
		return nil, "", err
	}
	return tok, secret, nil
}

// ListEnrollmentTokens lists orgID's enrollment tokens, newest first.
func (s *Store) ListEnrollmentTokens(ctx context.Context, orgID string) ([]EnrollmentToken, error) {
	var out []EnrollmentToken
	err := s.conn(ctx).Where("org_id = ?", orgID).Order("created_at DESC, id DESC").Find(&out).Error
	return out, err
}

// EnrollmentTokenByID returns one of orgID's enrollment tokens.
func (s *Store) EnrollmentTokenByID(ctx context.Context, orgID, id string) (*EnrollmentToken, error) {
	var t EnrollmentToken
	if err := s.conn(ctx).Where("org_id = ? AND id = ?", orgID, id).Take(&t).Error; err != nil {
		return nil, notFound(err)
	}
	return &t, nil
}

// RevokeEnrollmentToken revokes one of orgID's enrollment tokens; agents
// it enrolled keep their credentials. Revoking twice is a no-op.
func (s *Store) RevokeEnrollmentToken(ctx context.Context, orgID, id string) error {
	if _, err := s.EnrollmentTokenByID(ctx, orgID, id); err != nil {
		return err
	}
	return s.conn(ctx).Model(&EnrollmentToken{}).
		Where("org_id = ? AND id = ? AND revoked_at IS NULL", orgID, id).
		Update("revoked_at", s.now()).Error
}
