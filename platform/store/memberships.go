package store

import (
	"context"
	"fmt"
	"time"

	"github.com/thinlab/thinlab/platform/rbac"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// Membership gives a user a role in an organization.
type Membership struct {
	OrgID     string `gorm:"primaryKey"`
	UserID    string `gorm:"primaryKey"`
	Role      rbac.Role
	CreatedAt time.Time
}

// Member is a membership joined with its user.
type Member struct {
	UserID    string
	Email     string
	Name      string
	Role      rbac.Role
	CreatedAt time.Time
}

// MembershipOf returns userID's membership in orgID (ErrNotFound if none).
func (s *Store) MembershipOf(ctx context.Context, orgID, userID string) (*Membership, error) {
	var m Membership
	if err := s.conn(ctx).Where("org_id = ? AND user_id = ?", orgID, userID).Take(&m).Error; err != nil {
		return nil, notFound(err)
	}
	return &m, nil
}

// ListMembers lists orgID's members, by email.
func (s *Store) ListMembers(ctx context.Context, orgID string) ([]Member, error) {
	var out []Member
	err := s.conn(ctx).Table("memberships m").
		Select("m.user_id, u.email, u.name, m.role, m.created_at").
		Joins("JOIN users u ON u.id = m.user_id").
		Where("m.org_id = ?", orgID).
		Order("lower(u.email), m.user_id").
		Scan(&out).Error
	return out, err
}

// Member returns one member of orgID.
func (s *Store) Member(ctx context.Context, orgID, userID string) (*Member, error) {
	var out []Member
	err := s.conn(ctx).Table("memberships m").
		Select("m.user_id, u.email, u.name, m.role, m.created_at").
		Joins("JOIN users u ON u.id = m.user_id").
		Where("m.org_id = ? AND m.user_id = ?", orgID, userID).
		Scan(&out).Error
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, ErrNotFound
	}
	return &out[0], nil
}

// AddMember makes userID a member of orgID with role.
func (s *Store) AddMember(ctx context.Context, orgID, userID string, role rbac.Role) error {
	err := s.conn(ctx).Create(&Membership{OrgID: orgID, UserID: userID, Role: role, CreatedAt: s.now()}).Error
	if uniqueViolation(err) {
		return fmt.Errorf("user %s is already a member: %w", userID, ErrConflict)
	}
	return err
}

// SetMemberRole changes userID's role in orgID. Demoting the last owner
// fails with ErrLastOwner.
func (s *Store) SetMemberRole(ctx context.Context, orgID, userID string, role rbac.Role) error {
	return s.conn(ctx).Transaction(func(tx *gorm.DB) error {
		m, err := lockMembers(tx, orgID, userID)
		if err != nil {
			return err
		}
		if m.Role == rbac.Owner && role != rbac.Owner {
			if err := requireAnotherOwner(tx, orgID, userID); err != nil {
				return err
			}
		}
		return tx.Model(&Membership{}).Where("org_id = ? AND user_id = ?", orgID, userID).Update("role", role).Error
	})
}

// RemoveMember removes userID from orgID, and the user's API tokens for it.
// Removing the last owner fails with ErrLastOwner.
func (s *Store) RemoveMember(ctx context.Context, orgID, userID string) error {
	return s.conn(ctx).Transaction(func(tx *gorm.DB) error {
		m, err := lockMembers(tx, orgID, userID)
		if err != nil {
			return err
		}
		if m.Role == rbac.Owner {
			if err := requireAnotherOwner(tx, orgID, userID); err != nil {
				return err
			}
		}
		if err := tx.Where("org_id = ? AND user_id = ?", orgID, userID).Delete(&Membership{}).Error; err != nil {
			return err
		}
		return tx.Model(&APIToken{}).
			Where("org_id = ? AND user_id = ? AND revoked_at IS NULL", orgID, userID).
			Update("revoked_at", time.Now().UTC()).Error
	})
}

// lockMembers locks every membership row of orgID (so two concurrent
// demotions cannot both see "another owner") and returns userID's.
func lockMembers(tx *gorm.DB, orgID, userID string) (*Membership, error) {
	var all []Membership
	if err := tx.Clauses(clause.Locking{Strength: "UPDATE"}).Where("org_id = ?", orgID).Find(&all).Error; err != nil {
		return nil, err
	}
	for i := range all {
		if all[i].UserID == userID {
			return &all[i], nil
		}
	}
	return nil, ErrNotFound
}

func requireAnotherOwner(tx *gorm.DB, orgID, userID string) error {
	var n int64
	if err := tx.Model(&Membership{}).Where("org_id = ? AND role = ? AND user_id <> ?", orgID, rbac.Owner, userID).Count(&n).Error; err != nil {
		return err
	}
	if n == 0 {
		return ErrLastOwner
	}
	return nil
}
