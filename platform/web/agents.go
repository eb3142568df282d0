package web

import (
	"time"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/api"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/ui"
)

// healthKind is the event kind of the agent's periodic health summary
// (agent/events.Health; platform/ cannot import agent/).
const healthKind = "agent.health"

// agents lists the organization's agents and, for agent managers, the
// enrollment tokens with the create form.
func (w *Web) agents(c *gin.Context) {
	w.renderAgents(c, w.page(c, "Agents"), ui.Agents{})
}

func (w *Web) renderAgentsAgain(c *gin.Context, p ui.Page) { w.renderAgents(c, p, ui.Agents{}) }

func (w *Web) renderAgents(c *gin.Context, p ui.Page, v ui.Agents) {
	p.Title = "Agents"
	ctx := c.Request.Context()
	orgID := access.OrgID(c)
	agents, err := w.store.ListAgents(ctx, orgID)
	if err != nil {
		w.internal(c, "list agents", err)
		return
	}
	health, err := w.store.LatestAgentEvents(ctx, orgID, healthKind)
	if err != nil {
		w.internal(c, "load the agents' health", err)
		return
	}
	v.CanManage = rbac.Can(access.Role(c), rbac.AgentManage)
	now := time.Now()
	for i := range agents {
		v.Agents = append(v.Agents, agentRow(&agents[i], health, now, v.CanManage))
	}
	if v.CanManage {
		toks, err := w.store.ListEnrollmentTokens(ctx, orgID)
		if err != nil {
			w.internal(c, "list enrollment tokens", err)
			return
		}
		for _, t := range toks {
			v.Tokens = append(v.Tokens, ui.EnrollmentToken{
				ID: t.ID, Name: t.Name, Prefix: t.Prefix, Uses: t.Uses, MaxUses: t.MaxUses,
				Created: t.CreatedAt, Expires: t.ExpiresAt, Revoked: t.RevokedAt, Usable: t.Usable(now),
			})
		}
	}
	w.render(c, p.Status, ui.AgentsPage(p, v))
}

// agentRow is the view of one agent: the connection as the API reports
// it, the health from the agent's last health event, the rest from its
// facts.
func agentRow(a *store.Agent, health map[string]store.AgentEvent, now time.Time, canManage bool) ui.Agent {
	conn := api.AgentConnection(a, now)
	f := a.AgentFacts()
	row := ui.Agent{
		ID: a.ID, Name: a.Name, Version: a.Version, State: conn.State,
		ConnectedSince: conn.ConnectedSince, LastHeartbeat: conn.LastHeartbeatAt, DisconnectedSince: conn.DisconnectedSince,
		Enrolled: a.EnrolledAt, Revoked: a.RevokedAt, PostgresVersions: f.PostgresVersions,
		LastRefresh: f.Retrieval.LastRefresh, CanManage: canManage,
	}
	if h, ok := health[a.ID]; ok {
		t := h.Time
		row.Health, row.HealthMessage, row.HealthAt = h.Severity, h.Message, &t
	}
	switch {
	case f.Retrieval.Mode != "" && f.Retrieval.Status != "":
		row.Retrieval = f.Retrieval.Mode + ": " + f.Retrieval.Status
	default:
		row.Retrieval = f.Retrieval.Mode + f.Retrieval.Status
	}
	for _, pl := range f.Pools {
		row.Pools = append(row.Pools, ui.AgentPool{
			Name: pl.Name, Backend: pl.Backend, Mode: pl.Mode, UsedBytes: pl.UsedBytes, FreeBytes: pl.FreeBytes,
			Snapshots: pl.Snapshots, Clones: pl.Clones,
		})
	}
	return row
}
