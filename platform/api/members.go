package api

import (
	"errors"
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/platformapi"
)

func memberJSON(m store.Member) platformapi.Member {
	return platformapi.Member{UserID: m.UserID, Email: m.Email, Name: m.Name, Role: string(m.Role), CreatedAt: m.CreatedAt.UTC()}
}

func (a *API) listMembers(c *gin.Context) {
	members, err := a.Store.ListMembers(c.Request.Context(), access.OrgID(c))
	if err != nil {
		a.internal(c, "list members", err)
		return
	}
	out := make([]platformapi.Member, 0, len(members))
	for _, m := range members {
		out = append(out, memberJSON(m))
	}
	c.JSON(http.StatusOK, platformapi.List[platformapi.Member]{Items: out})
}

// parseRole validates a requested role and that the caller may grant it:
// nobody grants a role stronger than their own.
func parseRole(c *gin.Context, raw string) (rbac.Role, bool) {
	role, err := rbac.ParseRole(raw)
	if err != nil {
		invalid(c, err.Error(), "role")
		return "", false
	}
	if !rbac.AtLeast(access.Role(c), role) {
		forbidden(c, "your role "+string(access.Role(c))+" cannot grant role "+string(role))
		return "", false
	}
	return role, true
}

// addMemberGone refuses the old add-by-user-id call without reading the
// body or looking anyone up.
func (a *API) addMemberGone(c *gin.Context) {
	access.Error(c, http.StatusGone, platformapi.CodeGone,
		"adding members by user id was removed: invite people by email (POST /api/v1/orgs/"+c.Param("org")+"/invitations); they join when they accept", "")
}

// targetMember loads :user in the organization and checks the caller may
// change that member: only owners change owners.
func (a *API) targetMember(c *gin.Context) (*store.Member, bool) {
	userID := c.Param("user")
	audit.SetTarget(c, userID)
	m, err := a.Store.Member(c.Request.Context(), access.OrgID(c), userID)
	if errors.Is(err, store.ErrNotFound) {
		notFound(c, "member")
		return nil, false
	}
	if err != nil {
		a.internal(c, "load the member", err)
		return nil, false
	}
	if !rbac.AtLeast(access.Role(c), m.Role) {
		forbidden(c, "your role "+string(access.Role(c))+" cannot change a member whose role is "+string(m.Role))
		return nil, false
	}
	return m, true
}

func (a *API) updateMember(c *gin.Context) {
	m, ok := a.targetMember(c)
	if !ok {
		return
	}
	var req platformapi.UpdateMemberRequest
	if !decode(c, &req) {
		return
	}
	role, ok := parseRole(c, req.Role)
	if !ok {
		return
	}
	ctx := c.Request.Context()
	err := a.Store.SetMemberRole(ctx, access.OrgID(c), m.UserID, role)
	if a.memberChangeFailed(c, err, "role") {
		return
	}
	m.Role = role
	c.JSON(http.StatusOK, memberJSON(*m))
}

func (a *API) removeMember(c *gin.Context) {
	m, ok := a.targetMember(c)
	if !ok {
		return
	}
	err := a.Store.RemoveMember(c.Request.Context(), access.OrgID(c), m.UserID)
	if a.memberChangeFailed(c, err, "") {
		return
	}
	c.Status(http.StatusNoContent)
}

func (a *API) memberChangeFailed(c *gin.Context, err error, field string) bool {
	switch {
	case err == nil:
		return false
	case errors.Is(err, store.ErrLastOwner):
		access.Error(c, http.StatusConflict, platformapi.CodeLastOwner, store.ErrLastOwner.Error(), field)
	case errors.Is(err, store.ErrNotFound):
		notFound(c, "member")
	default:
		a.internal(c, "change the member", err)
	}
	return true
}
