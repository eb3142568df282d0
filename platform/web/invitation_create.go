package web

import (
	"net/url"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/orgrules"
	"github.com/thinlab/thinlab/ui"
)

// createInvitation invites an email address with a role; the acceptance
// link is shown once (only its hash is stored).
func (w *Web) createInvitation(c *gin.Context) {
	email, err := orgrules.InvitationEmail(c.PostForm("email"))
	if w.refused(c, "create the invitation", err, w.renderInvitationsAgain) {
		return
	}
	role, err := orgrules.GrantRole(access.Role(c), c.PostForm("role"))
	if w.refused(c, "create the invitation", err, w.renderInvitationsAgain) {
		return
	}
	inv, secret, err := w.store.CreateInvitation(c.Request.Context(), access.OrgID(c), email, role, access.Caller(c).UserID)
	if err != nil {
		w.internal(c, "create the invitation", err)
		return
	}
	audit.SetTarget(c, inv.ID)
	p := w.page(c, "Invitations")
	p.Flash = append(p.Flash, ui.Flash{Kind: "success", Text: "Invitation created for " + email + "."})
	w.renderInvitations(c, p, ui.Invitations{
		NewEmail: email,
		NewLink:  w.auth.BaseURL() + "/invitations/accept?secret=" + url.QueryEscape(secret),
	})
}
