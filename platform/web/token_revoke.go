package web

import (
	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/orgrules"
)

// revokeToken revokes a token the caller may see (their own, or anyone's
// for member managers), as DELETE /api/v1/orgs/:org/tokens/:token does.
func (w *Web) revokeToken(c *gin.Context) {
	tok := access.Token(c)
	if w.refused(c, "revoke the token", orgrules.MayRevokeToken(tok, access.Role(c), access.Caller(c).UserID), w.renderTokensAgain) {
		return
	}
	if err := w.store.RevokeAPIToken(c.Request.Context(), access.OrgID(c), tok.ID); err != nil {
		w.internal(c, "revoke the token", err)
		return
	}
	w.redirectWithFlash(c, "/o/"+access.Org(c).Slug+"/tokens", "Token "+tok.Name+" revoked.")
}
