package web

import (
	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/ui"
)

// invitations lists open invitations and the invite form.
func (w *Web) invitations(c *gin.Context) {
	w.renderInvitations(c, w.page(c, "Invitations"), ui.Invitations{})
}

func (w *Web) renderInvitations(c *gin.Context, p ui.Page, v ui.Invitations) {
	p.Title = "Invitations"
	invs, err := w.store.ListInvitations(c.Request.Context(), access.OrgID(c))
	if err != nil {
		w.internal(c, "list invitations", err)
		return
	}
	role := access.Role(c)
	v.CanManage = rbac.Can(role, rbac.MemberManage)
	for _, r := range rbac.Roles {
		if rbac.AtLeast(role, r) {
			v.Roles = append(v.Roles, string(r))
		}
	}
	for _, inv := range invs {
		v.Invitations = append(v.Invitations, ui.Invitation{
			ID: inv.ID, Email: inv.Email, Role: string(inv.Role), Created: inv.CreatedAt, Expires: inv.ExpiresAt,
		})
	}
	w.render(c, p.Status, ui.InvitationsPage(p, v))
}

func (w *Web) renderInvitationsAgain(c *gin.Context, p ui.Page) {
	w.renderInvitations(c, p, ui.Invitations{})
}
