package store

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/thinlab/thinlab/platform/rbac"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// Organization is a tenant: it owns members, tokens, agents and audit events.
type Organization struct {
	ID   string `gorm:"primaryKey"`
	Slug string
	Name string
	// ManagedBy names the identity provider group mapping that reserved
	// the organization ("idp:<provider>"); empty for ordinary ones.
	ManagedBy string
	CreatedAt time.Time
}

// ErrSlugReserved: the slug belongs to an organization that an identity
// provider's group mapping fills; nobody may register it first.
var ErrSlugReserved = errors.New("reserved for an identity provider group mapping")

var slugPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{1,62}$`)

// ValidSlug explains what is wrong with a slug, or returns nil.
func ValidSlug(slug string) error {
	if !slugPattern.MatchString(slug) {
		return fmt.Errorf("slug %q: use 2-63 lowercase letters, digits and dashes, starting with a letter or digit", slug)
	}
	return nil
}

// CreateOrganization creates an organization with owner as its first owner.
func (s *Store) CreateOrganization(ctx context.Context, slug, name, ownerID string) (*Organization, error) {
	if err := ValidSlug(slug); err != nil {
		return nil, err
	}
	org := &Organization{ID: newID("org"), Slug: slug, Name: strings.TrimSpace(name), CreatedAt: s.now()}
	if org.Name == "" {
		org.Name = slug
	}
	err := s.conn(ctx).Transaction(func(tx *gorm.DB) error {
		if err := tx.Create(org).Error; err != nil {
			return err
		}
		return tx.Create(&Membership{OrgID: org.ID, UserID: ownerID, Role: rbac.Owner, CreatedAt: s.now()}).Error
	})
	if uniqueViolation(err) {
		var managedBy string
		s.conn(ctx).Model(&Organization{}).Where("slug = ?", slug).Pluck("managed_by", &managedBy)
		if managedBy != "" {
			return nil, fmt.Errorf("organization %q: %w: %w", slug, ErrSlugReserved, ErrConflict)
		}
		return nil, fmt.Errorf("organization %q: %w", slug, ErrConflict)
	}
	if err != nil {
		return nil, err
	}
	return org, nil
}

// ReserveOrganization makes sure the organization slug exists and is
// marked managed by managedBy, creating it without members when missing.
// It returns what it did: "created", "adopted" (it existed unmanaged: the
// caller warns, since someone may have registered it first) or "kept".
func (s *Store) ReserveOrganization(ctx context.Context, slug, managedBy string) (*Organization, string, error) {
	if err := ValidSlug(slug); err != nil {
		return nil, "", err
	}
	org := &Organization{ID: newID("org"), Slug: slug, Name: slug, ManagedBy: managedBy, CreatedAt: s.now()}
	res := s.conn(ctx).Clauses(clause.OnConflict{Columns: []clause.Column{{Name: "slug"}}, DoNothing: true}).Create(org)
	if res.Error != nil {
		return nil, "", res.Error
	}
	if res.RowsAffected == 1 {
		return org, "created", nil
	}
	var existing Organization
	if err := s.conn(ctx).Where("slug = ?", slug).Take(&existing).Error; err != nil {
		return nil, "", notFound(err)
	}
	if existing.ManagedBy != "" {
		return &existing, "kept", nil
	}
	existing.ManagedBy = managedBy
	if err := s.conn(ctx).Model(&Organization{}).Where("id = ?", existing.ID).Update("managed_by", managedBy).Error; err != nil {
		return nil, "", err
	}
	return &existing, "adopted", nil
}

// OrganizationByRef finds an organization by ID or slug (URLs carry either).
func (s *Store) OrganizationByRef(ctx context.Context, ref string) (*Organization, error) {
	var org Organization
	q := s.conn(ctx)
	if strings.HasPrefix(ref, "org_") {
		q = q.Where("id = ?", ref)
	} else {
		q = q.Where("slug = ?", ref)
	}
	if err := q.Take(&org).Error; err != nil {
		return nil, notFound(err)
	}
	return &org, nil
}

// OrganizationWithRole is an organization as seen by one member.
type OrganizationWithRole struct {
	Organization
	Role rbac.Role
}

// OrganizationsOfUser lists the organizations userID belongs to.
func (s *Store) OrganizationsOfUser(ctx context.Context, userID string) ([]OrganizationWithRole, error) {
	var out []OrganizationWithRole
	err := s.conn(ctx).Table("organizations o").
		Select("o.id, o.slug, o.name, o.created_at, m.role").
		Joins("JOIN memberships m ON m.org_id = o.id").
		Where("m.user_id = ?", userID).
		Order("o.slug").
		Scan(&out).Error
	return out, err
}
