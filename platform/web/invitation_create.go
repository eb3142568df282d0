package web

import (
	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/api"
	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/notify"
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
	inv, secret, mailed, err := w.Notifier.Invite(c.Request.Context(), w.store, notify.Invitation{
		Org: access.Org(c), Email: email, Role: role, InvitedBy: access.Caller(c).UserID, Inviter: access.Caller(c).Email,
		AcceptURL: func(secret string) string { return api.InvitationURL(w.auth.BaseURL(), secret) },
	})
	if err != nil {
		w.internal(c, "create the invitation", err)
		return
	}
	audit.SetTarget(c, inv.ID)
	p := w.page(c, "Invitations")
	text := "Invitation created for " + email + "."
	if mailed {
		text = "Invitation created and emailed to " + email + "."
	}
	p.Flash = append(p.Flash, ui.Flash{Kind: "success", Text: text})
	w.renderInvitations(c, p, ui.Invitations{NewEmail: email, NewLink: api.InvitationURL(w.auth.BaseURL(), secret)})
}
