package web

import (
	"errors"
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/store"
)

// revokeInvitation withdraws an open invitation.
func (w *Web) revokeInvitation(c *gin.Context) {
	id := c.Param("invitation")
	audit.SetTarget(c, id)
	err := w.store.DeleteInvitation(c.Request.Context(), access.OrgID(c), id)
	if errors.Is(err, store.ErrNotFound) {
		w.fail(c, http.StatusNotFound, "no open invitation "+id+" (already accepted or revoked)", w.renderInvitationsAgain)
		return
	}
	if err != nil {
		w.internal(c, "revoke the invitation", err)
		return
	}
	w.redirectWithFlash(c, "/o/"+access.Org(c).Slug+"/invitations", "Invitation revoked.")
}
