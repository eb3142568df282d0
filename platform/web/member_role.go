package web

import (
	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/orgrules"
	"github.com/thinlab/thinlab/platform/store"
)

// changeRole sets a member's role (same rules as PATCH
// /api/v1/orgs/:org/members/:user).
func (w *Web) changeRole(c *gin.Context) {
	m, ok := w.targetMember(c)
	if !ok {
		return
	}
	role, err := orgrules.GrantRole(access.Role(c), c.PostForm("role"))
	if w.refused(c, "change the role", err, w.renderMembers) {
		return
	}
	err = w.store.SetMemberRole(c.Request.Context(), access.OrgID(c), m.UserID, role)
	if w.refused(c, "change the role", orgrules.MemberChangeFailed(err, "role"), w.renderMembers) {
		return
	}
	w.redirectWithFlash(c, "/o/"+access.Org(c).Slug+"/members", m.Email+" is now "+string(role)+".")
}

// targetMember is the :user the chain loaded, if the caller may change
// them: only someone at least as strong as the member's role.
func (w *Web) targetMember(c *gin.Context) (*store.Member, bool) {
	m := access.Member(c)
	if w.refused(c, "change the member", orgrules.MayChangeMember(access.Role(c), m.Role), w.renderMembers) {
		return nil, false
	}
	return m, true
}
