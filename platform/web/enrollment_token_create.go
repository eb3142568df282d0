package web

import (
	"net/http"
	"strconv"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/api"
	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/orgrules"
	"github.com/thinlab/thinlab/ui"
)

// createEnrollmentToken creates an enrollment token and shows it once,
// with the command that enrolls an agent.
func (w *Web) createEnrollmentToken(c *gin.Context) {
	name, err := orgrules.EnrollmentTokenName(c.PostForm("name"))
	if w.refused(c, "create the enrollment token", err, w.renderAgentsAgain) {
		return
	}
	hours, err := strconv.Atoi(c.DefaultPostForm("expires_hours", "24"))
	if err != nil || hours < 1 {
		w.fail(c, http.StatusBadRequest, "expires_hours must be a whole number of hours, at least 1", w.renderAgentsAgain)
		return
	}
	now := time.Now()
	ask := now.Add(time.Duration(hours) * time.Hour)
	expiresAt, err := orgrules.EnrollmentExpiry(&ask, now)
	if w.refused(c, "create the enrollment token", err, w.renderAgentsAgain) {
		return
	}
	var maxUses *int
	switch c.DefaultPostForm("uses", "single") {
	case "single":
		one := 1
		maxUses = &one
	case "multi":
	default:
		w.fail(c, http.StatusBadRequest, "uses must be single or multi", w.renderAgentsAgain)
		return
	}
	tok, secret, err := w.store.CreateEnrollmentToken(c.Request.Context(), access.OrgID(c), access.Caller(c).UserID, name, expiresAt, maxUses)
	if err != nil {
		w.internal(c, "create the enrollment token", err)
		return
	}
	audit.SetTarget(c, tok.ID)
	label := tok.Name
	if label == "" {
		label = tok.Prefix + "…"
	}
	w.renderAgents(c, w.page(c, "Agents"), ui.Agents{
		NewSecret: secret, NewName: label, NewCommand: api.EnrollCommand(w.auth.BaseURL(), secret),
	})
}
