package web

import (
	"errors"
	"net/http"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/ui"
)

// acceptInvitationPage shows what the invitation link offers; a person who
// is not signed in is sent to sign in first and comes back here.
func (w *Web) acceptInvitationPage(c *gin.Context) {
	secret := c.Query("secret")
	p := w.page(c, "Invitation")
	v := ui.AcceptInvitation{Secret: secret}
	inv, err := w.store.InvitationBySecret(c.Request.Context(), secret)
	switch {
	case errors.Is(err, store.ErrNotFound) || secret == "":
		v.Error = "This invitation link is not valid. Ask for a new invitation."
		p.Status = http.StatusNotFound
	case err != nil:
		w.internal(c, "load the invitation", err)
		return
	case inv.AcceptedAt != nil:
		v.Error = store.ErrInvitationUsed.Error() + "."
		p.Status = http.StatusGone
	default:
		v.Email, v.Role = inv.Email, string(inv.Role)
		v.OrgName = inv.OrgID
		if org, err := w.store.OrganizationByRef(c.Request.Context(), inv.OrgID); err == nil {
			v.OrgName = org.Name
		}
		if !strings.EqualFold(inv.Email, access.Caller(c).Email) {
			v.Error = store.ErrInvitationEmail.Error() + " (you are signed in as " + access.Caller(c).Email + ")."
			p.Status = http.StatusForbidden
		}
	}
	w.render(c, p.Status, ui.AcceptInvitationPage(p, v))
}

// acceptInvitation makes the signed-in person a member.
func (w *Web) acceptInvitation(c *gin.Context) {
	secret := c.PostForm("secret")
	u, err := w.store.UserByID(c.Request.Context(), access.Caller(c).UserID)
	if err != nil {
		w.internal(c, "load your account", err)
		return
	}
	inv, err := w.store.AcceptInvitation(c.Request.Context(), secret, u)
	if inv != nil && inv.ID != "" {
		audit.SetOrg(c, inv.OrgID)
		audit.SetTarget(c, inv.ID)
	}
	if err != nil {
		var status int
		msg := err.Error()
		switch {
		case errors.Is(err, store.ErrNotFound):
			status, msg = http.StatusNotFound, "This invitation link is not valid. Ask for a new invitation."
		case errors.Is(err, store.ErrInvitationEmail), errors.Is(err, store.ErrEmailUnverified):
			status = http.StatusForbidden
		case errors.Is(err, store.ErrInvitationUsed), errors.Is(err, store.ErrInvitationExpired):
			status = http.StatusGone
		case errors.Is(err, store.ErrConflict):
			status = http.StatusConflict
		default:
			w.internal(c, "accept the invitation", err)
			return
		}
		audit.SetError(c, msg)
		p := w.page(c, "Invitation")
		w.render(c, status, ui.AcceptInvitationPage(p, ui.AcceptInvitation{Error: msg}))
		return
	}
	org, err := w.store.OrganizationByRef(c.Request.Context(), inv.OrgID)
	if err != nil {
		w.internal(c, "load the organization", err)
		return
	}
	w.redirectWithFlash(c, "/o/"+org.Slug, "Welcome to "+org.Name+": you joined as "+string(inv.Role)+".")
}
