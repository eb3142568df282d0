package api

import (
	"net/http"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/orgrules"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/platformapi"
)

// AgentDisconnector closes an agent's tunnel on this platform (the tunnel
// hub implements it). Revocation calls it after the credential stopped
// working, so the agent cannot come back.
type AgentDisconnector interface {
	Disconnect(agentID string)
}

// StaleAfter is how old an agent's last heartbeat may be before an agent
// recorded as connected is shown as stale: a replica that died without
// marking its agents disconnected leaves them so.
const StaleAfter = 45 * time.Second

// AgentConnection is the platform's view of a's tunnel at now.
func AgentConnection(a *store.Agent, now time.Time) platformapi.AgentConnection {
	out := platformapi.AgentConnection{
		ConnectedSince: utc(a.ConnectedSince), LastHeartbeatAt: utc(a.LastHeartbeatAt), DisconnectedSince: utc(a.DisconnectedSince),
	}
	switch {
	case a.RevokedAt != nil:
		out.State = platformapi.AgentRevoked
	case a.Connected() && a.LastHeartbeatAt != nil && now.Sub(*a.LastHeartbeatAt) > StaleAfter:
		out.State = platformapi.AgentStale
	case a.Connected():
		out.State = platformapi.AgentConnected
	case a.DisconnectedSince != nil:
		out.State = platformapi.AgentDisconnected
	default:
		out.State = platformapi.AgentNeverSeen
	}
	return out
}

// AgentJSON is how the API shows an agent.
func AgentJSON(a *store.Agent, now time.Time) platformapi.Agent {
	return platformapi.Agent{
		ID: a.ID, Name: a.Name, Version: a.Version, EnrolledAt: a.EnrolledAt.UTC(), RevokedAt: utc(a.RevokedAt),
		Connection: AgentConnection(a, now), Facts: a.AgentFacts(), FactsUpdatedAt: a.FactsUpdatedAt.UTC(),
	}
}

func (a *API) listAgents(c *gin.Context) {
	agents, err := a.Store.ListAgents(c.Request.Context(), access.OrgID(c))
	if err != nil {
		a.internal(c, "list agents", err)
		return
	}
	now := time.Now()
	out := make([]platformapi.Agent, 0, len(agents))
	for i := range agents {
		out = append(out, AgentJSON(&agents[i], now))
	}
	c.JSON(http.StatusOK, platformapi.List[platformapi.Agent]{Items: out})
}

func (a *API) getAgent(c *gin.Context) {
	c.JSON(http.StatusOK, AgentJSON(access.Agent(c), time.Now()))
}

func (a *API) renameAgent(c *gin.Context) {
	var req platformapi.UpdateAgentRequest
	if !decode(c, &req) {
		return
	}
	name, err := orgrules.AgentName(req.Name)
	if reject(c, err) {
		return
	}
	ag := access.Agent(c)
	err = a.Store.RenameAgent(c.Request.Context(), access.OrgID(c), ag.ID, name)
	if a.refused(c, "rename the agent", orgrules.AgentRenameFailed(err, name)) {
		return
	}
	ag.Name = name
	c.JSON(http.StatusOK, AgentJSON(ag, time.Now()))
}

func (a *API) revokeAgent(c *gin.Context) {
	ag := access.Agent(c)
	if err := RevokeAgent(c, a.Store, a.Disconnector, ag); err != nil {
		a.internal(c, "revoke the agent", err)
		return
	}
	c.Status(http.StatusNoContent)
}

// RevokeAgent revokes ag in the organization the route acts on and then
// closes its tunnel (when a hub is plugged in): first the credential
// stops working, so the closed tunnel cannot come back.
func RevokeAgent(c *gin.Context, st *store.Store, d AgentDisconnector, ag *store.Agent) error {
	if err := st.RevokeAgent(c.Request.Context(), access.OrgID(c), ag.ID); err != nil {
		return err
	}
	if d != nil {
		d.Disconnect(ag.ID)
	}
	return nil
}

// EnrollCommand is the command that runs an agent enrolling with secret
// into the platform at baseURL.
func EnrollCommand(baseURL, secret string) string {
	return "thinlab agent run --platform " + strings.TrimRight(baseURL, "/") + " --enroll-token " + secret
}
