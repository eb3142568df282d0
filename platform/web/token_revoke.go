package web

import (
	"errors"
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/orgrules"
	"github.com/thinlab/thinlab/platform/store"
)

// revokeToken revokes a token the caller may see (their own, or anyone's
// for member managers), as DELETE /api/v1/orgs/:org/tokens/:token does.
func (w *Web) revokeToken(c *gin.Context) {
	id := c.Param("token")
	audit.SetTarget(c, id)
	ctx := c.Request.Context()
	tok, err := w.store.APITokenByID(ctx, access.OrgID(c), id)
	if errors.Is(err, store.ErrNotFound) {
		w.fail(c, http.StatusNotFound, "no such token: "+id, w.renderTokensAgain)
		return
	}
	if err != nil {
		w.internal(c, "load the token", err)
		return
	}
	if w.refused(c, "revoke the token", orgrules.MayRevokeToken(tok, access.Role(c), access.Caller(c).UserID), w.renderTokensAgain) {
		return
	}
	if err := w.store.RevokeAPIToken(ctx, access.OrgID(c), id); err != nil {
		w.internal(c, "revoke the token", err)
		return
	}
	w.redirectWithFlash(c, "/o/"+access.Org(c).Slug+"/tokens", "Token "+tok.Name+" revoked.")
}
