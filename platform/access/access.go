// Package access decides who may call which platform route. Every route is
// declared in a Table with the permission it needs; Mount puts the same
// chain in front of each: authenticate (API token or session), audit
// (mutations), authorize (organization membership, then permission).
package access

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/principal"
	"github.com/thinlab/thinlab/platform/ratelimit"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/platformapi"
)

// Route is one endpoint and what it takes to call it.
type Route struct {
	Method string
	Path   string // gin syntax; a path with :org is an organization route
	// Public routes skip authentication (health, login, static files).
	Public bool
	// Permission is required in the :org organization. Organization routes
	// must name one; other routes must not.
	Permission rbac.Permission
	// Action, when set, audits every call (success and failure) under this
	// name, such as "member.update". Every mutation sets it.
	Action  string
	Handler gin.HandlerFunc
	// OnError renders a denial (401/403/404/429) for this route; JSON when
	// nil. Web pages use it to redirect to sign-in instead.
	OnError func(c *gin.Context, status int, body platformapi.ErrorBody)
	// TokenRefused, when set, refuses API tokens with 403 and this
	// message: a stolen token must not mint longer-lived credentials or
	// join organizations (token creation, invitation acceptance).
	TokenRefused string
	// RateLimit names the rate limit class of the route ("" for none).
	RateLimit RateClass
}

// RateClass is a group of routes that share a rate limit.
type RateClass string

// Rate limit classes.
const (
	// RateSignIn limits sign-in starts and callbacks per client IP.
	RateSignIn RateClass = "signin"
	// RateInvitationAccept limits invitation accepts per user and per
	// client IP (guessing invitation secrets).
	RateInvitationAccept RateClass = "invitation.accept"
	// RateEnrollFailures limits refused agent enrollments per client IP
	// (guessing enrollment tokens); successful ones are not counted.
	RateEnrollFailures RateClass = "enroll.failures"
)

// Limits are the rate limiters of the chain; a nil limiter allows all.
type Limits struct {
	SignIn           *ratelimit.Limiter
	BearerFailures   *ratelimit.Limiter // failed bearer authentications per client IP
	InvitationAccept *ratelimit.Limiter
	EnrollFailures   *ratelimit.Limiter // refused agent enrollments per client IP
}

// OrgRoute reports whether the route acts inside an organization.
func (r Route) OrgRoute() bool { return strings.Contains(r.Path, "/:org") }

// Mutation reports whether the route changes state.
func (r Route) Mutation() bool {
	return r.Method != http.MethodGet && r.Method != http.MethodHead && r.Method != http.MethodOptions
}

// Validate checks the declaration is complete.
func (r Route) Validate() error {
	switch {
	case r.Handler == nil:
		return fmt.Errorf("route %s %s: no handler", r.Method, r.Path)
	case r.OrgRoute() && r.Permission == "":
		return fmt.Errorf("route %s %s: organization routes must declare a permission", r.Method, r.Path)
	case !r.OrgRoute() && r.Permission != "":
		return fmt.Errorf("route %s %s: a permission needs an :org in the path", r.Method, r.Path)
	case r.Public && (r.Permission != "" || r.OrgRoute()):
		return fmt.Errorf("route %s %s: a public route cannot be an organization route", r.Method, r.Path)
	case r.Mutation() && !r.Public && r.Action == "":
		return fmt.Errorf("route %s %s: mutations must name an audit action", r.Method, r.Path)
	case r.Public && r.TokenRefused != "":
		return fmt.Errorf("route %s %s: a public route cannot refuse tokens", r.Method, r.Path)
	case r.RateLimit != "" && r.RateLimit != RateSignIn && r.RateLimit != RateInvitationAccept && r.RateLimit != RateEnrollFailures:
		return fmt.Errorf("route %s %s: unknown rate limit class %q", r.Method, r.Path, r.RateLimit)
	case r.RateLimit == RateInvitationAccept && r.Public:
		return fmt.Errorf("route %s %s: the invitation accept limit is per user and needs authentication", r.Method, r.Path)
	}
	return nil
}

// Guard is what the chain needs: authenticators in the order they are
// tried, the store for memberships, and the audit recorder.
type Guard struct {
	Authenticators []principal.Authenticator
	Store          *store.Store
	Audit          *audit.Recorder
	Logger         *slog.Logger
	Limits         Limits
}

// Mount registers routes on r behind the chain. It fails on a route whose
// declaration is incomplete, so an unguarded route cannot be added.
func (g *Guard) Mount(r gin.IRoutes, routes []Route) error {
	for _, rt := range routes {
		if err := rt.Validate(); err != nil {
			return err
		}
		var chain []gin.HandlerFunc
		switch rt.RateLimit {
		case RateSignIn:
			chain = append(chain, g.limitSignIn(rt))
		case RateEnrollFailures:
			chain = append(chain, g.limitEnrollFailures(rt))
		}
		if !rt.Public {
			chain = append(chain, g.authenticate(rt))
		}
		if rt.Action != "" {
			chain = append(chain, g.Audit.Middleware(rt.Action, orgIDIfAny))
		}
		if rt.RateLimit == RateInvitationAccept {
			chain = append(chain, g.limitInvitationAccept(rt))
		}
		if rt.OrgRoute() {
			chain = append(chain, g.authorize(rt))
		}
		// After authorization: another organization stays a 404.
		if rt.TokenRefused != "" {
			chain = append(chain, refuseTokens(rt))
		}
		chain = append(chain, rt.Handler)
		r.Handle(rt.Method, rt.Path, chain...)
	}
	return nil
}

func (g *Guard) authenticate(rt Route) gin.HandlerFunc {
	return func(c *gin.Context) {
		// Failed bearer authentications are counted per client IP, so that
		// token secrets cannot be guessed at the speed of the network.
		bearer := c.GetHeader("Authorization") != ""
		if bearer {
			if ok, wait := g.Limits.BearerFailures.Check(c.ClientIP()); !ok {
				tooMany(c, rt, wait, "too many failed authentications from your address")
				return
			}
		}
		for _, auth := range g.Authenticators {
			p, err := auth(c)
			if err != nil {
				if rej, ok := principal.IsRejection(err); ok {
					if bearer {
						g.Limits.BearerFailures.Spend(c.ClientIP())
					}
					deny(c, rt, http.StatusUnauthorized, platformapi.CodeUnauthenticated, rej.Message)
					return
				}
				g.logger().Error("authenticate", "path", rt.Path, "err", err)
				deny(c, rt, http.StatusInternalServerError, platformapi.CodeInternal, "authentication failed on the server; try again")
				return
			}
			if p != nil {
				principal.Set(c, p)
				c.Next()
				return
			}
		}
		deny(c, rt, http.StatusUnauthorized, platformapi.CodeUnauthenticated, "sign in or send Authorization: Bearer <api token>")
	}
}

// refuseTokens answers 403 to API tokens on routes that only a person
// signed in through the browser may call.
func refuseTokens(rt Route) gin.HandlerFunc {
	return func(c *gin.Context) {
		if p := principal.From(c); p != nil && p.Method == principal.MethodToken {
			deny(c, rt, http.StatusForbidden, platformapi.CodeForbidden, rt.TokenRefused)
			return
		}
		c.Next()
	}
}

func (g *Guard) limitSignIn(rt Route) gin.HandlerFunc {
	return func(c *gin.Context) {
		if ok, wait := g.Limits.SignIn.Allow(c.ClientIP()); !ok {
			tooMany(c, rt, wait, "too many sign-in attempts from your address")
			return
		}
		c.Next()
	}
}

// limitEnrollFailures refuses an address whose refused enrollments used
// up its bucket, and spends from it on every refusal (401).
func (g *Guard) limitEnrollFailures(rt Route) gin.HandlerFunc {
	return func(c *gin.Context) {
		if ok, wait := g.Limits.EnrollFailures.Check(c.ClientIP()); !ok {
			tooMany(c, rt, wait, "too many refused enrollments from your address")
			return
		}
		c.Next()
		if c.Writer.Status() == http.StatusUnauthorized {
			g.Limits.EnrollFailures.Spend(c.ClientIP())
		}
	}
}

func (g *Guard) limitInvitationAccept(rt Route) gin.HandlerFunc {
	return func(c *gin.Context) {
		ok, wait := g.Limits.InvitationAccept.Allow("ip:" + c.ClientIP())
		if ok {
			if p := principal.From(c); p != nil {
				ok, wait = g.Limits.InvitationAccept.Allow("user:" + p.UserID)
			}
		}
		if !ok {
			tooMany(c, rt, wait, "too many invitation accepts")
			return
		}
		c.Next()
	}
}

// tooMany answers 429 with Retry-After in whole seconds.
func tooMany(c *gin.Context, rt Route, wait time.Duration, what string) {
	secs := ratelimit.RetryAfterSeconds(wait)
	c.Header("Retry-After", strconv.Itoa(secs))
	deny(c, rt, http.StatusTooManyRequests, platformapi.CodeRateLimited, fmt.Sprintf("%s: try again in %d s", what, secs))
}

const (
	keyOrg    = "thinlab.org"
	keyRole   = "thinlab.role"
	keyMember = "thinlab.member"
	keyToken  = "thinlab.token"
	keyAgent  = "thinlab.agent"
	keyEnroll = "thinlab.enrollment"
)

// errNoOrg is the answer for an organization the caller cannot see: the
// same for one that does not exist, so existence does not leak.
const errNoOrg = "organization not found"

func (g *Guard) authorize(rt Route) gin.HandlerFunc {
	return func(c *gin.Context) {
		p := principal.From(c)
		ref := c.Param("org")
		org, err := g.Store.OrganizationByRef(c.Request.Context(), ref)
		if errors.Is(err, store.ErrNotFound) {
			deny(c, rt, http.StatusNotFound, platformapi.CodeNotFound, errNoOrg)
			return
		}
		if err != nil {
			g.logger().Error("resolve organization", "err", err)
			deny(c, rt, http.StatusInternalServerError, platformapi.CodeInternal, "could not load the organization; try again")
			return
		}
		// A token acts only in its own organization.
		if p.TokenOrgID != "" && p.TokenOrgID != org.ID {
			deny(c, rt, http.StatusNotFound, platformapi.CodeNotFound, errNoOrg)
			return
		}
		m, err := g.Store.MembershipOf(c.Request.Context(), org.ID, p.UserID)
		if errors.Is(err, store.ErrNotFound) {
			deny(c, rt, http.StatusNotFound, platformapi.CodeNotFound, errNoOrg)
			return
		}
		if err != nil {
			g.logger().Error("load membership", "err", err)
			deny(c, rt, http.StatusInternalServerError, platformapi.CodeInternal, "could not load your membership; try again")
			return
		}
		// From here on the caller may know the organization exists.
		c.Set(keyOrg, org)
		c.Set(keyRole, m.Role)
		if !rbac.Can(m.Role, rt.Permission) {
			deny(c, rt, http.StatusForbidden, platformapi.CodeForbidden,
				fmt.Sprintf("your role %s lacks permission %s", m.Role, rt.Permission))
			return
		}
		// After the permission check: a caller who may not act gets 403
		// before anyone looks the resource up.
		if !g.loadResources(c, rt, org) {
			return
		}
		c.Next()
	}
}

// loadResources loads what an organization route's path names besides
// the organization, inside that organization: the member (:user), the
// API token (:token), the agent (:agent) and the enrollment token
// (:enrollment). Another organization's is "not found".
func (g *Guard) loadResources(c *gin.Context, rt Route, org *store.Organization) bool {
	ctx := c.Request.Context()
	if strings.Contains(rt.Path, "/:user") {
		id := c.Param("user")
		audit.SetTarget(c, id)
		m, err := g.Store.Member(ctx, org.ID, id)
		if !g.loaded(c, rt, err, "member") {
			return false
		}
		c.Set(keyMember, m)
	}
	if strings.Contains(rt.Path, "/:token") {
		id := c.Param("token")
		audit.SetTarget(c, id)
		tok, err := g.Store.APITokenByID(ctx, org.ID, id)
		if !g.loaded(c, rt, err, "token") {
			return false
		}
		c.Set(keyToken, tok)
	}
	if strings.Contains(rt.Path, "/:agent") {
		id := c.Param("agent")
		audit.SetTarget(c, id)
		// By ID or by name: the CLI's --agent NAME.
		a, err := g.Store.AgentByRef(ctx, org.ID, id)
		if !g.loaded(c, rt, err, "agent") {
			return false
		}
		audit.SetTarget(c, a.ID)
		c.Set(keyAgent, a)
	}
	if strings.Contains(rt.Path, "/:enrollment") {
		id := c.Param("enrollment")
		audit.SetTarget(c, id)
		tok, err := g.Store.EnrollmentTokenByID(ctx, org.ID, id)
		if !g.loaded(c, rt, err, "enrollment token") {
			return false
		}
		c.Set(keyEnroll, tok)
	}
	return true
}

func (g *Guard) loaded(c *gin.Context, rt Route, err error, what string) bool {
	switch {
	case err == nil:
		return true
	case errors.Is(err, store.ErrNotFound):
		deny(c, rt, http.StatusNotFound, platformapi.CodeNotFound, what+" not found")
	default:
		g.logger().Error("load the "+what, "err", err)
		deny(c, rt, http.StatusInternalServerError, platformapi.CodeInternal, "could not load the "+what+"; try again")
	}
	return false
}

func (g *Guard) logger() *slog.Logger {
	if g.Logger != nil {
		return g.Logger
	}
	return slog.Default()
}

func deny(c *gin.Context, rt Route, status int, code, message string) {
	body := platformapi.ErrorBody{Code: code, Message: message}
	audit.SetError(c, message)
	if rt.OnError != nil {
		rt.OnError(c, status, body)
		c.Abort()
		return
	}
	c.Abort()
	c.PureJSON(status, platformapi.ErrorResponse{Error: body})
}

// Org returns the organization the route acts on, which the chain loaded
// (once) when it authorized the caller. It panics on a route without an
// :org in its path, or a handler mounted without the chain: a handler
// must never run its tenant queries without the organization it was
// authorized for. The server's recovery answers 500 and logs the panic.
func Org(c *gin.Context) *store.Organization {
	o := OrgIfAny(c)
	if o == nil {
		panic(fmt.Sprintf("access.Org: %s %s ran without the access chain's organization check; declare the route with :org in the access table (platform/server mounts it)", c.Request.Method, c.FullPath()))
	}
	return o
}

// OrgID is Org's ID; it panics as Org does.
func OrgID(c *gin.Context) string { return Org(c).ID }

// OrgIfAny returns the authorized organization, or nil outside
// organization routes (the page layout, the audit log's organization).
func OrgIfAny(c *gin.Context) *store.Organization {
	v, _ := c.Get(keyOrg)
	o, _ := v.(*store.Organization)
	return o
}

func orgIDIfAny(c *gin.Context) string {
	if o := OrgIfAny(c); o != nil {
		return o.ID
	}
	return ""
}

// Role returns the caller's role in Org; it panics as Org does.
func Role(c *gin.Context) rbac.Role {
	v, _ := c.Get(keyRole)
	r, ok := v.(rbac.Role)
	if !ok {
		panic(fmt.Sprintf("access.Role: %s %s ran without the access chain's organization check; declare the route with :org in the access table", c.Request.Method, c.FullPath()))
	}
	return r
}

// Member returns the member a /:user route acts on, loaded by the chain;
// it panics as Org does when the chain did not load one.
func Member(c *gin.Context) *store.Member {
	v, _ := c.Get(keyMember)
	m, ok := v.(*store.Member)
	if !ok {
		panic(fmt.Sprintf("access.Member: %s %s ran without the access chain loading :user; declare the route with :org and :user in the access table", c.Request.Method, c.FullPath()))
	}
	return m
}

// Token returns the API token a /:token organization route acts on,
// loaded by the chain; it panics as Org does when the chain did not load one.
func Token(c *gin.Context) *store.APIToken {
	v, _ := c.Get(keyToken)
	t, ok := v.(*store.APIToken)
	if !ok {
		panic(fmt.Sprintf("access.Token: %s %s ran without the access chain loading :token; declare the route with :org and :token in the access table", c.Request.Method, c.FullPath()))
	}
	return t
}

// Caller returns the authenticated caller. It panics on a public route or
// a handler mounted without the chain, instead of handing it a nil.
func Caller(c *gin.Context) *principal.Principal {
	p := principal.From(c)
	if p == nil {
		panic(fmt.Sprintf("access.Caller: %s %s ran without authentication; only routes that are not Public have a caller", c.Request.Method, c.FullPath()))
	}
	return p
}

// Error answers a failed request with the API's error shape and tells the
// audit log why. field names the request field at fault, when there is one.
func Error(c *gin.Context, status int, code, message, field string) {
	audit.SetError(c, message)
	// PureJSON: messages quote things like "<api token>"; keep them readable.
	c.Abort()
	c.PureJSON(status, platformapi.ErrorResponse{Error: platformapi.ErrorBody{Code: code, Message: message, Field: field}})
}

// Agent returns the agent an /:agent organization route acts on, loaded
// by the chain; it panics as Org does when the chain did not load one.
func Agent(c *gin.Context) *store.Agent {
	v, _ := c.Get(keyAgent)
	a, ok := v.(*store.Agent)
	if !ok {
		panic(fmt.Sprintf("access.Agent: %s %s ran without the access chain loading :agent; declare the route with :org and :agent in the access table", c.Request.Method, c.FullPath()))
	}
	return a
}

// EnrollmentToken returns the enrollment token an /:enrollment
// organization route acts on, loaded by the chain; it panics as Org does
// when the chain did not load one.
func EnrollmentToken(c *gin.Context) *store.EnrollmentToken {
	v, _ := c.Get(keyEnroll)
	t, ok := v.(*store.EnrollmentToken)
	if !ok {
		panic(fmt.Sprintf("access.EnrollmentToken: %s %s ran without the access chain loading :enrollment; declare the route with :org and :enrollment in the access table", c.Request.Method, c.FullPath()))
	}
	return t
}
