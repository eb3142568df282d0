package web

import (
	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
)

// revokeEnrollmentToken revokes an enrollment token; agents it enrolled
// stay enrolled.
func (w *Web) revokeEnrollmentToken(c *gin.Context) {
	tok := access.EnrollmentToken(c)
	if err := w.store.RevokeEnrollmentToken(c.Request.Context(), access.OrgID(c), tok.ID); err != nil {
		w.internal(c, "revoke the enrollment token", err)
		return
	}
	w.redirectWithFlash(c, "/o/"+access.Org(c).Slug+"/agents", "Enrollment token "+tok.Prefix+"… revoked.")
}
