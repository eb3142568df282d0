// Package api is the platform's /api/v1 JSON API: organizations, members,
// invitations, API tokens and the audit log. Routes declares every endpoint
// with the permission it needs; platform/access enforces it.
package api

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/billing"
	"github.com/thinlab/thinlab/platform/notify"
	"github.com/thinlab/thinlab/platform/orgrules"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/platformapi"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

// Prefix is where the API is mounted.
const Prefix = "/api/v1"

// API holds the handlers' dependencies.
type API struct {
	Store  *store.Store
	Logger *slog.Logger
	// Audit records enrollments, which no access chain audits (the route
	// is public; the organization is known only from the token).
	Audit *audit.Recorder
	// Tunnels reaches into connected agents (clone connections); nil
	// without a hub.
	Tunnels Tunnels
	// Disconnector closes revoked agents' tunnels; nil without a hub.
	Disconnector AgentDisconnector
	// BaseURL is the platform's address, for the enrollment command.
	BaseURL string
	// Agents reaches agents' APIs through their tunnels (the engine
	// proxy); nil without a hub: every agent is then unavailable.
	Agents AgentTransports
	// ReplicaID names this replica, to tell "connected elsewhere" apart.
	ReplicaID string
	// Billing enforces plan limits and talks to Stripe; a disabled one
	// (billing.enabled false) limits nothing. Never nil.
	Billing *billing.Billing
	// CopyRateMiBPerSecond is the full-copy rate of the savings estimate
	// (usage.copyRateMiBPerSecond).
	CopyRateMiBPerSecond float64

	cloneCreates orgLocks
	// Notifier mails invitations (nil: invitations are not mailed).
	Notifier *notify.Notifier
	// URLGuard checks Slack and webhook URLs (nil: channels refused).
	URLGuard URLGuard
}

//go:embed openapi.json
var openAPIDoc []byte

// OpenAPI returns the embedded OpenAPI document.
func OpenAPI() []byte { return openAPIDoc }

// Routes is the API's route table.
func Routes(a *API) []access.Route {
	const p = Prefix
	get, post, patch, del := http.MethodGet, http.MethodPost, http.MethodPatch, http.MethodDelete
	return append([]access.Route{
		{Method: get, Path: p + "/openapi.json", Public: true, Handler: a.openAPI},
		{Method: get, Path: p + "/me", Handler: a.me},
		{Method: get, Path: p + "/orgs", Handler: a.listOrgs},
		{Method: post, Path: p + "/orgs", Action: "org.create", Handler: a.createOrg, TokenRefused: TokenRefusedCreateOrg},
		{Method: get, Path: p + "/orgs/:org/members", Permission: rbac.MemberRead, Handler: a.listMembers},
		// Adding an existing user by ID let anyone look up other tenants'
		// users (the answer held their email): people join only through
		// invitations they accept. The route answers 410 with that advice.
		{Method: post, Path: p + "/orgs/:org/members", Permission: rbac.MemberManage, Action: "member.add", Handler: a.addMemberGone},
		{Method: patch, Path: p + "/orgs/:org/members/:user", Permission: rbac.MemberManage, Action: "member.update", Handler: a.updateMember},
		{Method: del, Path: p + "/orgs/:org/members/:user", Permission: rbac.MemberManage, Action: "member.remove", Handler: a.removeMember},
		{Method: get, Path: p + "/orgs/:org/invitations", Permission: rbac.MemberManage, Handler: a.listInvitations},
		{Method: post, Path: p + "/orgs/:org/invitations", Permission: rbac.MemberManage, Action: "invitation.create", Handler: a.createInvitation},
		{Method: del, Path: p + "/orgs/:org/invitations/:invitation", Permission: rbac.MemberManage, Action: "invitation.delete", Handler: a.deleteInvitation},
		{Method: post, Path: p + "/invitations/:token/accept", Action: "invitation.accept", Handler: a.acceptInvitation,
			TokenRefused: TokenRefusedAccept, RateLimit: access.RateInvitationAccept},
		{Method: get, Path: p + "/orgs/:org/tokens", Permission: rbac.TokenManage, Handler: a.listTokens},
		{Method: post, Path: p + "/orgs/:org/tokens", Permission: rbac.TokenManage, Action: "token.create", Handler: a.createToken, TokenRefused: TokenRefusedCreate},
		{Method: del, Path: p + "/orgs/:org/tokens/:token", Permission: rbac.TokenManage, Action: "token.revoke", Handler: a.revokeToken},
		{Method: get, Path: p + "/orgs/:org/audit", Permission: rbac.AuditRead, Handler: a.listAudit},
		// Enrollment tokens and agents. API tokens may create enrollment
		// tokens: Terraform and scripts provision agents.
		{Method: get, Path: p + "/orgs/:org/enrollment-tokens", Permission: rbac.AgentManage, Handler: a.listEnrollmentTokens},
		{Method: post, Path: p + "/orgs/:org/enrollment-tokens", Permission: rbac.AgentManage, Action: "enrollment_token.create", Handler: a.createEnrollmentToken},
		{Method: del, Path: p + "/orgs/:org/enrollment-tokens/:enrollment", Permission: rbac.AgentManage, Action: "enrollment_token.revoke", Handler: a.revokeEnrollmentToken},
		{Method: get, Path: p + "/orgs/:org/agents", Permission: rbac.AgentRead, Handler: a.listAgents},
		{Method: get, Path: p + "/orgs/:org/agents/:agent", Permission: rbac.AgentRead, Handler: a.getAgent},
		// A websocket carrying one TCP stream to a clone's postgres;
		// audited when opened and when closed.
		{Method: get, Path: p + "/orgs/:org/agents/:agent/clones/:clone/connect", Permission: rbac.CloneConnect, Action: ActionCloneConnect, Handler: a.connectClone},
		{Method: patch, Path: p + "/orgs/:org/agents/:agent", Permission: rbac.AgentManage, Action: "agent.rename", Handler: a.renameAgent},
		{Method: del, Path: p + "/orgs/:org/agents/:agent", Permission: rbac.AgentManage, Action: "agent.revoke", Handler: a.revokeAgent},
		// Agents enroll with the enrollment token in the body; the
		// handler audits into the token's organization.
		{Method: post, Path: tunnel.EnrollPath, Public: true, Handler: a.enroll, RateLimit: access.RateEnrollFailures},
		// Usage reports and billing.
		{Method: get, Path: p + "/orgs/:org/usage", Permission: rbac.UsageRead, Handler: a.getUsage},
		{Method: get, Path: p + "/orgs/:org/usage/savings", Permission: rbac.UsageRead, Handler: a.getSavings},
		{Method: get, Path: p + "/orgs/:org/billing", Permission: rbac.BillingRead, Handler: a.getBilling},
		{Method: post, Path: p + "/orgs/:org/billing/checkout", Permission: rbac.BillingManage, Action: "billing.checkout", Handler: a.checkout},
		{Method: post, Path: p + "/orgs/:org/billing/portal", Permission: rbac.BillingManage, Action: "billing.portal", Handler: a.portal},
		// Stripe's webhook: no session or token; the handler verifies
		// Stripe's signature over the body (platform/billing, webhook.go).
		{Method: post, Path: StripeWebhookPath, Public: true, Handler: a.stripeWebhook},
	}, append(a.engineRoutes(), a.notificationRoutes()...)...)
}

// The notification permissions, short for the route table.
const (
	notificationRead   = rbac.NotificationRead
	notificationManage = rbac.NotificationManage
)

// Refusals of API tokens on the routes only a signed-in person may call
// (the web UI's routes give the same answers).
//
//nolint:gosec // G101: messages that mention tokens, not credentials
const (
	TokenRefusedCreateOrg = "an API token acts inside one organization: sign in through the browser to create organizations"
	TokenRefusedCreate    = "API tokens cannot create tokens: sign in through the browser to create tokens"
	TokenRefusedAccept    = "API tokens cannot accept invitations: sign in through the browser to accept an invitation"
)

func (a *API) openAPI(c *gin.Context) {
	c.Data(http.StatusOK, "application/json", openAPIDoc)
}

// maxBody bounds a request body; every body of this API is small.
const maxBody = 1 << 20

// decode reads a JSON body into dst strictly (unknown fields are errors)
// and answers 400 naming the field on failure.
func decode(c *gin.Context, dst any) bool { return decodeJSON(c, dst, true) }

// decodeJSON is decode; strict=false ignores unknown fields, for bodies
// that programs of another version send (an agent newer than the
// platform reports facts this platform does not know yet).
func decodeJSON(c *gin.Context, dst any, strict bool) bool {
	body, err := io.ReadAll(io.LimitReader(c.Request.Body, maxBody+1))
	if err != nil {
		invalid(c, "could not read the request body", "")
		return false
	}
	if len(body) > maxBody {
		invalid(c, "request body is larger than 1 MiB", "")
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if strict {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(dst); err != nil {
		var typeErr *json.UnmarshalTypeError
		var syntaxErr *json.SyntaxError
		switch {
		case errors.As(err, &typeErr):
			invalid(c, fmt.Sprintf("%s must be a %s", typeErr.Field, typeErr.Type), typeErr.Field)
		case errors.As(err, &syntaxErr), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
			invalid(c, "request body must be a JSON object", "")
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			field := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
			invalid(c, fmt.Sprintf("unknown field %q", field), field)
		default:
			invalid(c, "invalid JSON: "+err.Error(), "")
		}
		return false
	}
	return true
}

// refused answers err and reports whether there was one: a broken
// organization rule (orgrules) with its status, code and field, anything
// else as a server failure while doing what.
func (a *API) refused(c *gin.Context, what string, err error) bool {
	if err == nil {
		return false
	}
	if !reject(c, err) {
		a.internal(c, what, err)
	}
	return true
}

// reject answers a broken organization rule and reports whether err was
// one (nil and other errors answer nothing).
func reject(c *gin.Context, err error) bool {
	var re *orgrules.Error
	if !errors.As(err, &re) {
		return false
	}
	status, code := http.StatusBadRequest, platformapi.CodeInvalid
	switch {
	case errors.Is(err, orgrules.ErrForbidden):
		status, code = http.StatusForbidden, platformapi.CodeForbidden
	case errors.Is(err, orgrules.ErrNotFound):
		status, code = http.StatusNotFound, platformapi.CodeNotFound
	case errors.Is(err, orgrules.ErrLastOwner):
		status, code = http.StatusConflict, platformapi.CodeLastOwner
	case errors.Is(err, orgrules.ErrConflict):
		status, code = http.StatusConflict, platformapi.CodeConflict
	}
	access.Error(c, status, code, re.Message, re.Field)
	return true
}

func invalid(c *gin.Context, message, field string) {
	access.Error(c, http.StatusBadRequest, platformapi.CodeInvalid, message, field)
}

func notFound(c *gin.Context, what string) {
	access.Error(c, http.StatusNotFound, platformapi.CodeNotFound, what+" not found", "")
}

func forbidden(c *gin.Context, message string) {
	access.Error(c, http.StatusForbidden, platformapi.CodeForbidden, message, "")
}

// internal logs err and answers 500 without details.
func (a *API) internal(c *gin.Context, what string, err error) {
	a.Logger.Error(what, "route", c.FullPath(), "err", err)
	access.Error(c, http.StatusInternalServerError, platformapi.CodeInternal, what+" failed on the server; try again", "")
}
