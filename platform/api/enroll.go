package api

import (
	"errors"
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/billing"
	"github.com/thinlab/thinlab/platform/orgrules"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/platformapi"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

// EnrollRefusal is the one answer to every refused enrollment token, so
// that a guesser learns nothing about which tokens exist; the platform
// logs (and for a real token of an organization, audits) the reason.
const EnrollRefusal = "enrollment token refused: it is unknown, expired, revoked or used up; ask an admin of your organization for a new one"

// enroll is POST tunnel.EnrollPath: an agent exchanges its enrollment
// token (in the body, never in the URL, which is logged) for its agent
// credential. The route is public; the access chain counts refusals per
// client IP (rateLimits.enrollFailures).
func (a *API) enroll(c *gin.Context) {
	var req tunnel.EnrollRequest
	// Lenient: agents are upgraded apart from the platform, and a newer
	// one may report facts this platform does not know yet.
	if !decodeJSON(c, &req, false) {
		return
	}
	if req.Token == "" {
		invalid(c, "token is required: pass the enrollment token from the platform's Agents page (--enroll-token)", "token")
		return
	}
	if reject(c, orgrules.AgentFacts(req.Facts)) {
		return
	}
	var caps []store.AgentCap
	if cp := a.Billing.AgentCap(c.Request.Context()); cp != nil {
		caps = append(caps, cp)
	}
	agent, credential, tok, err := a.Store.Enroll(c.Request.Context(), req.Token, req.Facts, caps...)
	var capErr *store.AgentCapError
	var limit *billing.LimitError
	switch {
	case errors.As(err, &capErr) && errors.As(err, &limit):
		// A valid token of an organization whose plan allows no more
		// agents: the agent's operator is told which limit.
		a.Logger.Warn("agent enrollment refused by the plan", "org", tok.OrgID, "err", err)
		a.recordEnroll(c, tok.OrgID, tok.ID, err.Error())
		_ = a.Billing.LimitReached(c.Request.Context(), tok.OrgID, limit) // the organization hears of it
		access.Error(c, http.StatusPaymentRequired, CodePlanLimitAPI, limit.Error(), "")
	case errors.As(err, &capErr):
		a.internal(c, "check the plan's agent limit", err)
	case err == nil:
		a.recordEnroll(c, tok.OrgID, agent.ID, "")
		a.Logger.Info("agent enrolled", "agent", agent.ID, "org", agent.OrgID, "enrollment_token", tok.ID, "ip", c.ClientIP())
		c.JSON(http.StatusCreated, tunnel.EnrollResponse{
			AgentID: agent.ID, OrganizationID: agent.OrgID, Name: agent.Name, Credential: credential,
		})
	case errors.Is(err, store.ErrEnrollmentInvalid):
		a.Logger.Warn("agent enrollment refused", "reason", err.Error(), "ip", c.ClientIP())
		access.Error(c, http.StatusUnauthorized, platformapi.CodeUnauthenticated, EnrollRefusal, "")
	case tok != nil:
		// A real token of an organization that cannot be used any more:
		// its admins see the attempt in their audit log.
		a.Logger.Warn("agent enrollment refused", "reason", err.Error(), "enrollment_token", tok.ID, "org", tok.OrgID, "ip", c.ClientIP())
		a.recordEnroll(c, tok.OrgID, tok.ID, err.Error())
		access.Error(c, http.StatusUnauthorized, platformapi.CodeUnauthenticated, EnrollRefusal, "")
	default:
		a.internal(c, "enroll the agent", err)
	}
}

// CodePlanLimitAPI is the API error code of a creation refused by a plan
// limit.
const CodePlanLimitAPI = "plan_limit"

// recordEnroll audits an enrollment into orgID; nobody is signed in, so
// the event has no actor, and target is the new agent (or the refused
// token).
func (a *API) recordEnroll(c *gin.Context, orgID, target, errText string) {
	if a.Audit == nil {
		return
	}
	_ = a.Audit.Record(c, audit.Event{OrgID: orgID, Action: "agent.enroll", Target: target, Err: errText}) // logged by Record
}
