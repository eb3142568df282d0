package store

import (
	"context"
	"strings"
	"time"

	"gorm.io/gorm/clause"
)

// User is one identity at one OIDC issuer.
type User struct {
	ID          string `gorm:"primaryKey"`
	OIDCIssuer  string `gorm:"column:oidc_issuer"`
	OIDCSubject string `gorm:"column:oidc_subject"`
	Email       string
	// EmailVerified: the IdP vouched for Email at the last sign-in (or
	// the provider is configured not to require it).
	EmailVerified bool
	Name          string
	CreatedAt     time.Time
}

// UpsertOIDCUser returns the user for (issuer, subject), creating it on
// first sign-in and refreshing email, name and whether the email is
// verified from the IdP's claims.
func (s *Store) UpsertOIDCUser(ctx context.Context, issuer, subject, email, name string, emailVerified bool) (*User, error) {
	u := &User{
		ID: newID("usr"), OIDCIssuer: issuer, OIDCSubject: subject,
		Email: strings.TrimSpace(email), Name: strings.TrimSpace(name), EmailVerified: emailVerified, CreatedAt: s.now(),
	}
	err := s.conn(ctx).Clauses(
		clause.OnConflict{
			Columns:   []clause.Column{{Name: "oidc_issuer"}, {Name: "oidc_subject"}},
			DoUpdates: clause.AssignmentColumns([]string{"email", "name", "email_verified"}),
		},
		clause.Returning{},
	).Create(u).Error
	if err != nil {
		return nil, err
	}
	return u, nil
}

// UserByID finds a user.
func (s *Store) UserByID(ctx context.Context, id string) (*User, error) {
	var u User
	if err := s.conn(ctx).Where("id = ?", id).Take(&u).Error; err != nil {
		return nil, notFound(err)
	}
	return &u, nil
}

// UserByOIDC finds the user for (issuer, subject), or ErrNotFound.
func (s *Store) UserByOIDC(ctx context.Context, issuer, subject string) (*User, error) {
	var u User
	if err := s.conn(ctx).Where("oidc_issuer = ? AND oidc_subject = ?", issuer, subject).Take(&u).Error; err != nil {
		return nil, notFound(err)
	}
	return &u, nil
}
