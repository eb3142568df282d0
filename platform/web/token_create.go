package web

import (
	"net/http"
	"strconv"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/orgrules"
	"github.com/thinlab/thinlab/ui"
)

// createToken creates an API token for the caller and shows its secret
// once, in this response (it is never stored, so it cannot be shown again).
func (w *Web) createToken(c *gin.Context) {
	name, err := orgrules.TokenName(c.PostForm("name"))
	if w.refused(c, "create the token", err, w.renderTokensAgain) {
		return
	}
	var expiresAt *time.Time
	days, err := strconv.Atoi(c.DefaultPostForm("expires_days", "90"))
	if err != nil || days < 0 || days > 3650 {
		w.fail(c, http.StatusBadRequest, "expires_days must be a number of days from 0 (never) to 3650", w.renderTokensAgain)
		return
	}
	if days > 0 {
		t := time.Now().UTC().Add(time.Duration(days) * 24 * time.Hour)
		expiresAt = &t
	}
	tok, secret, err := w.store.CreateAPIToken(c.Request.Context(), access.OrgID(c), access.Caller(c).UserID, name, expiresAt)
	if err != nil {
		w.internal(c, "create the token", err)
		return
	}
	audit.SetTarget(c, tok.ID)
	p := w.page(c, "API tokens")
	w.renderTokens(c, p, ui.Tokens{NewSecret: secret, NewName: tok.Name})
}
