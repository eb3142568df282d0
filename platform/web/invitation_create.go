package web

import (
	"net/http"
	"net/mail"
	"net/url"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/principal"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/ui"
)

// createInvitation invites an email address with a role; the acceptance
// link is shown once (only its hash is stored).
func (w *Web) createInvitation(c *gin.Context) {
	email := strings.TrimSpace(c.PostForm("email"))
	if a, err := mail.ParseAddress(email); err != nil || a.Address != email {
		w.fail(c, http.StatusBadRequest, "email "+email+" is not an email address such as ada@example.com", w.renderInvitationsAgain)
		return
	}
	role, err := rbac.ParseRole(c.PostForm("role"))
	if err != nil {
		w.fail(c, http.StatusBadRequest, err.Error(), w.renderInvitationsAgain)
		return
	}
	if !rbac.AtLeast(access.Role(c), role) {
		w.fail(c, http.StatusForbidden, "your role "+string(access.Role(c))+" cannot grant role "+string(role), w.renderInvitationsAgain)
		return
	}
	inv, secret, err := w.store.CreateInvitation(c.Request.Context(), access.OrgID(c), email, role, principal.From(c).UserID)
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
