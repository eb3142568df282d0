package web

import (
	"errors"
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/platform/store"
)

// changeRole sets a member's role (same rules as PATCH
// /api/v1/orgs/:org/members/:user).
func (w *Web) changeRole(c *gin.Context) {
	m, ok := w.targetMember(c)
	if !ok {
		return
	}
	role, err := rbac.ParseRole(c.PostForm("role"))
	if err != nil {
		w.fail(c, http.StatusBadRequest, err.Error(), w.renderMembers)
		return
	}
	if !rbac.AtLeast(access.Role(c), role) {
		w.fail(c, http.StatusForbidden, "your role "+string(access.Role(c))+" cannot grant role "+string(role), w.renderMembers)
		return
	}
	err = w.store.SetMemberRole(c.Request.Context(), access.OrgID(c), m.UserID, role)
	if w.memberChangeFailed(c, err, "change the role") {
		return
	}
	redirectWithFlash(c, "/o/"+access.Org(c).Slug+"/members", m.Email+" is now "+string(role)+".")
}

// targetMember loads :user and checks the caller may change them: only
// someone at least as strong as the member's role.
func (w *Web) targetMember(c *gin.Context) (*store.Member, bool) {
	userID := c.Param("user")
	audit.SetTarget(c, userID)
	m, err := w.store.Member(c.Request.Context(), access.OrgID(c), userID)
	if errors.Is(err, store.ErrNotFound) {
		w.fail(c, http.StatusNotFound, "no such member: "+userID, w.renderMembers)
		return nil, false
	}
	if err != nil {
		w.internal(c, "load the member", err)
		return nil, false
	}
	if !rbac.AtLeast(access.Role(c), m.Role) {
		w.fail(c, http.StatusForbidden, "your role "+string(access.Role(c))+" cannot change a member whose role is "+string(m.Role), w.renderMembers)
		return nil, false
	}
	return m, true
}

func (w *Web) memberChangeFailed(c *gin.Context, err error, what string) bool {
	switch {
	case err == nil:
		return false
	case errors.Is(err, store.ErrLastOwner):
		w.fail(c, http.StatusConflict, store.ErrLastOwner.Error(), w.renderMembers)
	case errors.Is(err, store.ErrNotFound):
		w.fail(c, http.StatusNotFound, "no such member", w.renderMembers)
	default:
		w.internal(c, what, err)
	}
	return true
}
