package store

import (
	"context"
	"errors"
	"strings"
	"time"
)

// Token authentication errors; their text is what the API answers with.
var (
	ErrTokenInvalid = errors.New("invalid token")
	ErrTokenExpired = errors.New("token expired")
	ErrTokenRevoked = errors.New("token revoked")
)

// TokenPrefix starts every API token, so leaked tokens are easy to scan for.
const TokenPrefix = "thl_"

// APIToken lets its user act in one organization from the CLI or CI.
type APIToken struct {
	ID         string `gorm:"primaryKey"`
	OrgID      string
	UserID     string
	Name       string
	Prefix     string // the first characters of the secret, for display
	Hash       []byte // SHA-256 of the secret
	CreatedAt  time.Time
	ExpiresAt  *time.Time
	RevokedAt  *time.Time
	LastUsedAt *time.Time
}

// TableName is the table of APIToken (gorm would say "api_tokens" too, but
// spell it out since the SQL migrations own the schema).
func (APIToken) TableName() string { return "api_tokens" }

// CreateAPIToken creates a token for userID in orgID. The secret is
// returned once and never stored.
func (s *Store) CreateAPIToken(ctx context.Context, orgID, userID, name string, expiresAt *time.Time) (*APIToken, string, error) {
	secret := TokenPrefix + randomString(40)
	tok := &APIToken{
		ID: newID("tok"), OrgID: orgID, UserID: userID, Name: strings.TrimSpace(name),
		Prefix: secret[:len(TokenPrefix)+6], Hash: hashSecret(secret),
		CreatedAt: s.now(), ExpiresAt: expiresAt,
	}
	if err := s.conn(ctx).Create(tok).Error; err != nil {
		return nil, "", err
	}
	return tok, secret, nil
}

// ListAPITokens lists orgID's tokens, newest first.
func (s *Store) ListAPITokens(ctx context.Context, orgID string) ([]APIToken, error) {
	var out []APIToken
	err := s.conn(ctx).Where("org_id = ?", orgID).Order("created_at DESC, id DESC").Find(&out).Error
	return out, err
}

// APITokenByID returns one of orgID's tokens.
func (s *Store) APITokenByID(ctx context.Context, orgID, id string) (*APIToken, error) {
	var t APIToken
	if err := s.conn(ctx).Where("org_id = ? AND id = ?", orgID, id).Take(&t).Error; err != nil {
		return nil, notFound(err)
	}
	return &t, nil
}

// RevokeAPIToken revokes one of orgID's tokens; revoking twice is a no-op.
func (s *Store) RevokeAPIToken(ctx context.Context, orgID, id string) error {
	if _, err := s.APITokenByID(ctx, orgID, id); err != nil {
		return err
	}
	return s.conn(ctx).Model(&APIToken{}).
		Where("org_id = ? AND id = ? AND revoked_at IS NULL", orgID, id).
		Update("revoked_at", s.now()).Error
}

// lastUsedResolution limits last_used_at writes to one per token per minute.
const lastUsedResolution = time.Minute

// AuthenticateAPIToken resolves a presented secret to its token, or fails
// with ErrTokenInvalid, ErrTokenExpired or ErrTokenRevoked.
func (s *Store) AuthenticateAPIToken(ctx context.Context, secret string) (*APIToken, error) {
	if !strings.HasPrefix(secret, TokenPrefix) {
		return nil, ErrTokenInvalid
	}
	var t APIToken
	if err := s.conn(ctx).Where("hash = ?", hashSecret(secret)).Take(&t).Error; err != nil {
		if errors.Is(notFound(err), ErrNotFound) {
			return nil, ErrTokenInvalid
		}
		return nil, err
	}
	now := s.now()
	switch {
	case t.RevokedAt != nil:
		return nil, ErrTokenRevoked
	case t.ExpiresAt != nil && !now.Before(*t.ExpiresAt):
		return nil, ErrTokenExpired
	}
	if t.LastUsedAt == nil || now.Sub(*t.LastUsedAt) >= lastUsedResolution {
		err := s.conn(ctx).Model(&APIToken{}).Where("id = ?", t.ID).Update("last_used_at", now).Error
		if err != nil {
			return nil, err
		}
		t.LastUsedAt = &now
	}
	return &t, nil
}
