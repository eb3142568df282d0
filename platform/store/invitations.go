package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/thinlab/thinlab/platform/rbac"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// Invitation errors.
var (
	ErrInvitationUsed    = errors.New("invitation already accepted")
	ErrInvitationExpired = errors.New("invitation expired: ask for a new one")
	ErrInvitationEmail   = errors.New("invitation was sent to another email address: sign in with the invited address")
	// ErrEmailUnverified: invitations are bound to an address, so the
	// identity provider must have verified the user's.
	ErrEmailUnverified = errors.New("your identity provider has not verified your email address (email_verified): verify it there, sign in again, then accept the invitation")
)

// InvitationTTL is how long an invitation can be accepted.
const InvitationTTL = 7 * 24 * time.Hour

// Invitation asks the owner of an email address to join an organization.
type Invitation struct {
	ID         string `gorm:"primaryKey"`
	OrgID      string
	Email      string
	Role       rbac.Role
	TokenHash  []byte
	InvitedBy  *string
	CreatedAt  time.Time
	ExpiresAt  time.Time
	AcceptedAt *time.Time
	AcceptedBy *string
}

// CreateInvitation invites email to orgID with role. The returned secret is
// the only copy of the acceptance token; the table keeps its hash.
func (s *Store) CreateInvitation(ctx context.Context, orgID, email string, role rbac.Role, invitedBy string) (*Invitation, string, error) {
	email = strings.TrimSpace(email)
	secret := "thinv_" + randomString(32)
	now := s.now()
	inv := &Invitation{
		ID: newID("inv"), OrgID: orgID, Email: email, Role: role,
		TokenHash: hashSecret(secret), InvitedBy: &invitedBy,
		CreatedAt: now, ExpiresAt: now.Add(InvitationTTL),
	}
	if err := s.conn(ctx).Create(inv).Error; err != nil {
		return nil, "", err
	}
	return inv, secret, nil
}

// ListInvitations lists orgID's open (not accepted) invitations.
func (s *Store) ListInvitations(ctx context.Context, orgID string) ([]Invitation, error) {
	var out []Invitation
	err := s.conn(ctx).Where("org_id = ? AND accepted_at IS NULL", orgID).Order("created_at, id").Find(&out).Error
	return out, err
}

// DeleteInvitation withdraws an open invitation of orgID.
func (s *Store) DeleteInvitation(ctx context.Context, orgID, id string) error {
	res := s.conn(ctx).Where("org_id = ? AND id = ? AND accepted_at IS NULL", orgID, id).Delete(&Invitation{})
	if res.Error != nil {
		return res.Error
	}
	if res.RowsAffected == 0 {
		return ErrNotFound
	}
	return nil
}

// InvitationBySecret finds an invitation by its acceptance token (any org:
// the secret itself is the proof).
func (s *Store) InvitationBySecret(ctx context.Context, secret string) (*Invitation, error) {
	var inv Invitation
	if err := s.conn(ctx).Where("token_hash = ?", hashSecret(secret)).Take(&inv).Error; err != nil {
		return nil, notFound(err)
	}
	return &inv, nil
}

// AcceptInvitation makes user a member of the invitation's organization.
// Only the invited address may accept (compared case-insensitively).
func (s *Store) AcceptInvitation(ctx context.Context, secret string, user *User) (*Invitation, error) {
	var inv Invitation
	err := s.conn(ctx).Transaction(func(tx *gorm.DB) error {
		if err := tx.Clauses(clause.Locking{Strength: "UPDATE"}).Where("token_hash = ?", hashSecret(secret)).Take(&inv).Error; err != nil {
			return notFound(err)
		}
		switch {
		case inv.AcceptedAt != nil:
			return ErrInvitationUsed
		case !s.now().Before(inv.ExpiresAt):
			return ErrInvitationExpired
		case !user.EmailVerified:
			return ErrEmailUnverified
		case !strings.EqualFold(strings.TrimSpace(user.Email), inv.Email):
			return ErrInvitationEmail
		}
		now := s.now()
		res := tx.Model(&Invitation{}).Where("id = ? AND accepted_at IS NULL", inv.ID).
			Updates(map[string]any{"accepted_at": now, "accepted_by": user.ID})
		if res.Error != nil {
			return res.Error
		}
		if res.RowsAffected == 0 {
			return ErrInvitationUsed
		}
		inv.AcceptedAt, inv.AcceptedBy = &now, &user.ID
		err := tx.Create(&Membership{OrgID: inv.OrgID, UserID: user.ID, Role: inv.Role, CreatedAt: now}).Error
		if uniqueViolation(err) {
			return fmt.Errorf("you are already a member of this organization: %w", ErrConflict)
		}
		return err
	})
	if err != nil {
		return &inv, err
	}
	return &inv, nil
}
