package web

import (
	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/orgrules"
)

// removeMember removes a member and revokes their tokens in the
// organization (same rules as DELETE /api/v1/orgs/:org/members/:user).
func (w *Web) removeMember(c *gin.Context) {
	m, ok := w.targetMember(c)
	if !ok {
		return
	}
	err := w.store.RemoveMember(c.Request.Context(), access.OrgID(c), m.UserID)
	if w.refused(c, "remove the member", orgrules.MemberChangeFailed(err, ""), w.renderMembers) {
		return
	}
	w.redirectWithFlash(c, "/o/"+access.Org(c).Slug+"/members", m.Email+" was removed from the organization.")
}
