package store

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/thinlab/thinlab/platform/rbac"
	"gorm.io/gorm"
)

// Organization is a tenant: it owns members, tokens, agents and audit events.
type Organization struct {
	ID        string `gorm:"primaryKey"`
	Slug      string
	Name      string
	CreatedAt time.Time
}

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
		return nil, fmt.Errorf("organization %q: %w", slug, ErrConflict)
	}
	if err != nil {
		return nil, err
	}
	return org, nil
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
