package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"

	"github.com/gin-gonic/gin"
	"github.com/rs/xid"

	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/principal"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/platform/store"
)

// StoreUsers provisions users in the platform database.
type StoreUsers struct {
	Store *store.Store
	// PersonalOrg gives a person who signs in for the first time and whom
	// no group mapping places anywhere an organization of their own (as
	// owner), so the platform is usable at once.
	PersonalOrg bool
	// Audit records the mutations sign-in makes: user.create, org.create,
	// member.add and member.update (by group mapping).
	Audit *audit.Recorder
}

// ReserveMappedOrganizations creates (or marks) every organization that a
// provider's groupRoles name, before anyone can sign in, so that nobody can
// register such a slug first and then receive the group's members.
func ReserveMappedOrganizations(ctx context.Context, st *store.Store, cfg Config, log *slog.Logger) error {
	for _, p := range cfg.Providers {
		for i, e := range p.EmailRoles {
			org, did, err := st.ReserveOrganization(ctx, e.Org, "idp:"+p.Name)
			if err != nil {
				return fmt.Errorf("auth.providers %s emailRoles[%d].org %s: reserve the organization: %w", p.Name, i, e.Org, err)
			}
			if did == "adopted" {
				log.Warn("an email mapping names an organization that already existed: its current members keep their access; check them, since the slug could have been registered by anyone", "org", org.Slug, "provider", p.Name)
			}
		}
		for i, g := range p.GroupRoles {
			org, did, err := st.ReserveOrganization(ctx, g.Org, "idp:"+p.Name)
			if err != nil {
				return fmt.Errorf("auth.providers %s groupRoles[%d].org %s: reserve the organization: %w", p.Name, i, g.Org, err)
			}
			switch did {
			case "created":
				log.Info("organization reserved for a group mapping", "org", org.Slug, "provider", p.Name, "group", g.Group)
			case "adopted":
				log.Warn("a group mapping names an organization that already existed: its current members keep their access; check them, since the slug could have been registered by anyone", "org", org.Slug, "provider", p.Name, "group", g.Group)
			}
		}
	}
	return nil
}

// SignIn creates the user on first sign-in, refreshes email and name, and
// applies group roles. Group roles only ever raise a role: a role granted
// in the platform is never lowered by the IdP (demote people in the
// platform, or remove them from the organization).
func (u StoreUsers) SignIn(c *gin.Context, ident Identity) (string, error) {
	ctx := c.Request.Context()
	_, err := u.Store.UserByOIDC(ctx, ident.Issuer, ident.Subject)
	first := errors.Is(err, store.ErrNotFound)
	if err != nil && !first {
		return "", fmt.Errorf("look up user: %w", err)
	}
	user, err := u.Store.UpsertOIDCUser(ctx, ident.Issuer, ident.Subject, ident.Email, ident.Name, ident.EmailVerified)
	if err != nil {
		return "", fmt.Errorf("upsert user: %w", err)
	}
	if first {
		u.record(c, user, audit.Event{Action: "user.create", Target: user.ID})
	}
	placed := false
	for _, or := range ident.OrgRoles {
		ok, err := u.applyOrgRole(c, user, or)
		if err != nil {
			return "", err
		}
		placed = placed || ok
	}
	if first && !placed && u.PersonalOrg {
		if err := u.createPersonalOrg(c, user); err != nil {
			return "", err
		}
	}
	return user.ID, nil
}

func (u StoreUsers) applyOrgRole(c *gin.Context, user *store.User, or OrgRole) (bool, error) {
	ctx := c.Request.Context()
	org, err := u.Store.OrganizationByRef(ctx, or.Org)
	if errors.Is(err, store.ErrNotFound) {
		slog.Warn("group role names an organization that does not exist; create it first", "org", or.Org, "user", user.ID)
		return false, nil
	}
	if err != nil {
		return false, err
	}
	role := rbac.Role(or.Role)
	m, err := u.Store.MembershipOf(ctx, org.ID, user.ID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		if err := u.Store.AddMember(ctx, org.ID, user.ID, role); err != nil && !errors.Is(err, store.ErrConflict) {
			return false, fmt.Errorf("add %s to %s: %w", user.ID, org.Slug, err)
		}
		u.record(c, user, audit.Event{OrgID: org.ID, Action: "member.add", Target: user.ID + " role=" + string(role) + " (group mapping)"})
	case err != nil:
		return false, err
	case m.Role != role && rbac.AtLeast(role, m.Role):
		if err := u.Store.SetMemberRole(ctx, org.ID, user.ID, role); err != nil {
			return false, fmt.Errorf("set role of %s in %s: %w", user.ID, org.Slug, err)
		}
		u.record(c, user, audit.Event{OrgID: org.ID, Action: "member.update", Target: user.ID + " role=" + string(role) + " (group mapping)"})
	}
	return true, nil
}

var slugJunk = regexp.MustCompile(`[^a-z0-9-]+`)

func (u StoreUsers) createPersonalOrg(c *gin.Context, user *store.User) error {
	ctx := c.Request.Context()
	// Two first sign-ins racing (two tabs) should not give two personal
	// organizations: the second finds the first's.
	if orgs, err := u.Store.OrganizationsOfUser(ctx, user.ID); err != nil {
		return fmt.Errorf("list organizations: %w", err)
	} else if len(orgs) > 0 {
		return nil
	}
	local, _, _ := strings.Cut(strings.ToLower(user.Email), "@")
	base := strings.Trim(slugJunk.ReplaceAllString(local, "-"), "-")
	if len(base) > 40 {
		base = base[:40]
	}
	if len(base) < 2 {
		base = "user"
	}
	slug := base
	for range 5 {
		org, err := u.Store.CreateOrganization(ctx, slug, personalOrgName(user), user.ID)
		if errors.Is(err, store.ErrConflict) {
			slug = base + "-" + xid.New().String()[12:]
			continue
		}
		if err != nil {
			return fmt.Errorf("create personal organization: %w", err)
		}
		u.record(c, user, audit.Event{OrgID: org.ID, Action: "org.create", Target: org.ID + " " + org.Slug})
		return nil
	}
	return fmt.Errorf("create personal organization: no free slug for %q", base)
}

// record audits a sign-in mutation as done by the user signing in (there is
// no principal yet at the callback).
func (u StoreUsers) record(c *gin.Context, user *store.User, ev audit.Event) {
	if u.Audit == nil {
		return
	}
	if principal.From(c) == nil {
		principal.Set(c, &principal.Principal{UserID: user.ID, Email: user.Email, Name: user.Name, Method: principal.MethodSession})
	}
	_ = u.Audit.Record(c, ev)
}

// personalOrgName is "Ada (personal)", from the IdP's name or the email.
func personalOrgName(u *store.User) string {
	name := strings.TrimSpace(u.Name)
	if name == "" {
		name, _, _ = strings.Cut(u.Email, "@")
	}
	return name + " (personal)"
}
