package web

import (
	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/orgrules"
)

// renameAgent renames an agent, as PATCH /api/v1/orgs/:org/agents/:agent does.
func (w *Web) renameAgent(c *gin.Context) {
	name, err := orgrules.AgentName(c.PostForm("name"))
	if w.refused(c, "rename the agent", err, w.renderAgentsAgain) {
		return
	}
	ag := access.Agent(c)
	err = w.store.RenameAgent(c.Request.Context(), access.OrgID(c), ag.ID, name)
	if w.refused(c, "rename the agent", orgrules.AgentRenameFailed(err, name), w.renderAgentsAgain) {
		return
	}
	w.redirectWithFlash(c, "/o/"+access.Org(c).Slug+"/agents", "Agent "+ag.Name+" renamed to "+name+".")
}
