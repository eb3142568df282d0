package web

import (
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/ui"
)

// dashboard is an organization's overview.
func (w *Web) dashboard(c *gin.Context) {
	ctx, orgID, role := c.Request.Context(), access.OrgID(c), access.Role(c)
	var d ui.Dashboard
	members, err := w.store.ListMembers(ctx, orgID)
	if err != nil {
		w.internal(c, "list members", err)
		return
	}
	d.Members = len(members)
	if rbac.Can(role, rbac.MemberManage) {
		invs, err := w.store.ListInvitations(ctx, orgID)
		if err != nil {
			w.internal(c, "list invitations", err)
			return
		}
		d.Invitations, d.ShowInvitations = len(invs), true
	}
	if rbac.Can(role, rbac.TokenManage) {
		toks, err := w.visibleTokens(c)
		if err != nil {
			w.internal(c, "list tokens", err)
			return
		}
		d.ShowTokens = true
		for _, t := range toks {
			if t.RevokedAt == nil {
				d.Tokens++
			}
		}
	}
	for _, perm := range rbac.Grants(role) {
		d.Permissions = append(d.Permissions, string(perm))
	}
	w.render(c, http.StatusOK, ui.DashboardPage(w.page(c, "Overview"), d))
}
