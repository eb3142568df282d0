package web

import (
	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/api"
)

// revokeAgent revokes an agent and closes its tunnel, as DELETE
// /api/v1/orgs/:org/agents/:agent does.
func (w *Web) revokeAgent(c *gin.Context) {
	ag := access.Agent(c)
	if err := api.RevokeAgent(c, w.store, w.disconnector, ag); err != nil {
		w.internal(c, "revoke the agent", err)
		return
	}
	w.redirectWithFlash(c, "/o/"+access.Org(c).Slug+"/agents", "Agent "+ag.Name+" revoked: its credential no longer works.")
}
