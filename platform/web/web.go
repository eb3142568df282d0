// Package web is the platform's server-rendered UI: one file per page or
// action. Every route is declared in the same access table as the API, so
// the same authentication, organization check, permission (rbac) and audit
// apply; the pages themselves are templ components from ui/.
package web

import (
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"strings"

	"github.com/a-h/templ"
	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/api"
	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/auth"
	"github.com/thinlab/thinlab/platform/billing"
	"github.com/thinlab/thinlab/platform/notify"
	"github.com/thinlab/thinlab/platform/orgrules"
	"github.com/thinlab/thinlab/platform/principal"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/platformapi"
	"github.com/thinlab/thinlab/ui"
)

// Web serves the UI. platform/server builds it with New.
type Web struct {
	auth         *auth.Auth
	store        *store.Store
	logger       *slog.Logger
	disconnector api.AgentDisconnector
	// Agents reaches agents' APIs through their tunnels (clones and
	// snapshots pages); nil without a hub.
	Agents api.AgentTransports
	// Billing is the platform's billing (never nil once the server set
	// it; disabled without billing.enabled).
	Billing *billing.Billing
	// CopyRateMiBPerSecond is the savings estimate's full-copy rate.
	CopyRateMiBPerSecond float64
	// Notifier mails invitations; URLGuard checks channel URLs.
	Notifier *notify.Notifier
	URLGuard api.URLGuard
}

// New returns the UI over a's sign-in and st; its pages render a's
// refusals too. d closes revoked agents' tunnels (nil without a hub).
func New(a *auth.Auth, st *store.Store, logger *slog.Logger, d api.AgentDisconnector) *Web {
	if logger == nil {
		logger = slog.Default()
	}
	w := &Web{auth: a, store: st, logger: logger, disconnector: d}
	a.ErrorPage = w.errorPage
	return w
}

// Routes is the UI's part of the route table.
func (w *Web) Routes() []access.Route {
	get, post := http.MethodGet, http.MethodPost
	rs := []access.Route{
		{Method: get, Path: "/static/*filepath", Public: true, Handler: w.static},
		{Method: get, Path: "/signin", Public: true, Handler: w.signIn},
		{Method: get, Path: "/auth/login/:provider", Public: true, Handler: w.auth.HandleLogin, RateLimit: access.RateSignIn},
		{Method: get, Path: "/auth/callback/:provider", Public: true, Handler: w.auth.HandleCallback, RateLimit: access.RateSignIn},
		{Method: post, Path: "/auth/logout", Action: "session.logout", Handler: w.auth.HandleLogout},
		{Method: get, Path: "/", Handler: w.home},
		{Method: get, Path: "/switch", Handler: w.switchOrg},
		{Method: post, Path: "/orgs", Action: "org.create", Handler: w.createOrg, TokenRefused: api.TokenRefusedCreateOrg},
		{Method: get, Path: "/invitations/accept", Handler: w.acceptInvitationPage},
		{Method: post, Path: "/invitations/accept", Action: "invitation.accept", Handler: w.acceptInvitation,
			TokenRefused: api.TokenRefusedAccept, RateLimit: access.RateInvitationAccept},
		{Method: get, Path: "/o/:org", Permission: rbac.MemberRead, Handler: w.dashboard},
		{Method: get, Path: "/o/:org/members", Permission: rbac.MemberRead, Handler: w.members},
		{Method: post, Path: "/o/:org/members/:user/role", Permission: rbac.MemberManage, Action: "member.update", Handler: w.changeRole},
		{Method: post, Path: "/o/:org/members/:user/remove", Permission: rbac.MemberManage, Action: "member.remove", Handler: w.removeMember},
		{Method: get, Path: "/o/:org/invitations", Permission: rbac.MemberManage, Handler: w.invitations},
		{Method: post, Path: "/o/:org/invitations", Permission: rbac.MemberManage, Action: "invitation.create", Handler: w.createInvitation},
		{Method: post, Path: "/o/:org/invitations/:invitation/revoke", Permission: rbac.MemberManage, Action: "invitation.delete", Handler: w.revokeInvitation},
		{Method: get, Path: "/o/:org/tokens", Permission: rbac.TokenManage, Handler: w.tokens},
		{Method: post, Path: "/o/:org/tokens", Permission: rbac.TokenManage, Action: "token.create", Handler: w.createToken, TokenRefused: api.TokenRefusedCreate},
		{Method: post, Path: "/o/:org/tokens/:token/revoke", Permission: rbac.TokenManage, Action: "token.revoke", Handler: w.revokeToken},
		{Method: get, Path: "/o/:org/audit", Permission: rbac.AuditRead, Handler: w.auditLog},
		{Method: get, Path: "/o/:org/agents", Permission: rbac.AgentRead, Handler: w.agents},
		{Method: post, Path: "/o/:org/agents/:agent/rename", Permission: rbac.AgentManage, Action: "agent.rename", Handler: w.renameAgent},
		{Method: post, Path: "/o/:org/agents/:agent/revoke", Permission: rbac.AgentManage, Action: "agent.revoke", Handler: w.revokeAgent},
		{Method: post, Path: "/o/:org/enrollment-tokens", Permission: rbac.AgentManage, Action: "enrollment_token.create", Handler: w.createEnrollmentToken},
		{Method: post, Path: "/o/:org/enrollment-tokens/:enrollment/revoke", Permission: rbac.AgentManage, Action: "enrollment_token.revoke", Handler: w.revokeEnrollmentToken},
		// Clones and snapshots of the organization's agents, through
		// their tunnels; the agent of a form is loaded inside the route's
		// organization. Audited with the agent's answer, as the engine
		// proxy of the API is.
		{Method: get, Path: "/o/:org/clones", Permission: rbac.CloneRead, Handler: w.clones},
		{Method: post, Path: "/o/:org/clones", Permission: rbac.CloneCreate, Action: "clone.create", Handler: w.createClone},
		{Method: get, Path: "/o/:org/agents/:agent/clones/:clone", Permission: rbac.CloneRead, Handler: w.clonePage},
		{Method: post, Path: "/o/:org/agents/:agent/clones/:clone/reset", Permission: rbac.CloneUpdate, Action: "clone.reset", Handler: w.resetClone},
		{Method: post, Path: "/o/:org/agents/:agent/clones/:clone/protect", Permission: rbac.CloneUpdate, Action: "clone.update", Handler: w.protectClone},
		{Method: post, Path: "/o/:org/agents/:agent/clones/:clone/destroy", Permission: rbac.CloneDelete, Action: "clone.destroy", Handler: w.destroyClone},
		{Method: get, Path: "/o/:org/agents/:agent/clones/:clone/diff", Permission: rbac.CloneRead, Handler: w.cloneDiffPage},
		{Method: get, Path: "/o/:org/agents/:agent/branches", Permission: rbac.SnapshotRead, Handler: w.branchesPage},
		{Method: get, Path: "/o/:org/agents/:agent/metrics", Permission: rbac.AgentRead, Handler: w.agentMetricsPage},
		{Method: get, Path: "/o/:org/agents/:agent/snapshots/diff", Permission: rbac.SnapshotRead, Handler: w.snapshotDiffPage},
		{Method: post, Path: "/o/:org/agents/:agent/snapshots", Permission: rbac.SnapshotCreate, Action: "snapshot.create", Handler: w.createSnapshot},
		{Method: post, Path: "/o/:org/agents/:agent/snapshots/delete", Permission: rbac.SnapshotDelete, Action: "snapshot.delete", Handler: w.deleteSnapshot},
		{Method: get, Path: "/o/:org/usage", Permission: rbac.UsageRead, Handler: w.usagePage},
		{Method: get, Path: "/o/:org/billing", Permission: rbac.BillingRead, Handler: w.billingPage},
		{Method: post, Path: "/o/:org/billing/checkout", Permission: rbac.BillingManage, Action: "billing.checkout", Handler: w.checkout},
		{Method: post, Path: "/o/:org/billing/portal", Permission: rbac.BillingManage, Action: "billing.portal", Handler: w.portal},
	}
	rs = append(rs, w.notificationRoutes()...)
	for i := range rs {
		if !rs[i].Public {
			rs[i].OnError = w.deny
		}
	}
	return rs
}

// deny renders the access chain's refusals for people: sign-in for "not
// signed in", a page with the reason otherwise.
func (w *Web) deny(c *gin.Context, status int, body platformapi.ErrorBody) {
	if status == http.StatusUnauthorized && body.Message == auth.CSRFRefusal {
		w.errorPage(c, http.StatusForbidden, auth.CSRFRefusal+". Reload the page and submit the form again.")
		return
	}
	if status == http.StatusUnauthorized {
		target := "/signin"
		if c.Request.Method == http.MethodGet && c.Request.URL.Path != "/" {
			target += "?return_to=" + url.QueryEscape(c.Request.URL.RequestURI())
		}
		c.Redirect(http.StatusSeeOther, target)
		return
	}
	w.errorPage(c, status, body.Message)
}

// errorPage renders a refusal or failure as a page.
func (w *Web) errorPage(c *gin.Context, status int, message string) {
	title := http.StatusText(status)
	switch {
	case status == http.StatusForbidden && strings.HasPrefix(message, auth.CSRFRefusal):
		title = "Form expired or forged"
	case status == http.StatusNotFound:
		title = "Not found"
	case status == http.StatusBadRequest && strings.HasPrefix(message, "Sign-in failed"):
		title = "Sign-in failed"
	}
	audit.SetError(c, message)
	p := w.basePage(c, title)
	w.render(c, status, ui.ErrorPage(p, ui.Error{Status: status, Title: title, Message: message}))
	c.Abort()
}

func (w *Web) render(c *gin.Context, status int, comp templ.Component) {
	c.Header("Content-Type", "text/html; charset=utf-8")
	c.Header("Cache-Control", "no-store")
	c.Header("X-Frame-Options", "DENY")
	c.Header("Content-Security-Policy", "default-src 'self'; script-src 'none'; frame-ancestors 'none'; form-action 'self'")
	c.Status(status)
	if err := comp.Render(c.Request.Context(), c.Writer); err != nil {
		w.logger.Error("render page", "path", c.FullPath(), "err", err)
	}
}

// fail records why an action failed and shows the page again with the
// reason; the status makes the audit event an error.
func (w *Web) fail(c *gin.Context, status int, message string, again func(c *gin.Context, p ui.Page)) {
	audit.SetError(c, message)
	p := w.page(c, "")
	p.Flash = append(p.Flash, ui.Flash{Kind: "error", Text: message})
	p.Status = status
	again(c, p)
}

// refused shows err on the page again (again) and reports whether there
// was one: a broken organization rule (orgrules) with its status and
// message, anything else as a server failure while doing what.
func (w *Web) refused(c *gin.Context, what string, err error, again func(c *gin.Context, p ui.Page)) bool {
	if err == nil {
		return false
	}
	var re *orgrules.Error
	if !errors.As(err, &re) {
		w.internal(c, what, err)
		return true
	}
	status := http.StatusBadRequest
	switch {
	case errors.Is(err, orgrules.ErrForbidden):
		status = http.StatusForbidden
	case errors.Is(err, orgrules.ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, orgrules.ErrConflict):
		status = http.StatusConflict
	}
	w.fail(c, status, re.Message, again)
	return true
}

func (w *Web) internal(c *gin.Context, what string, err error) {
	w.logger.Error(what, "err", err)
	w.errorPage(c, http.StatusInternalServerError, "Could not "+what+" because of a server error. Try again.")
}

// basePage is the layout data every page has: user, organizations, the
// current organization with its navigation, CSRF token and flashes.
func (w *Web) basePage(c *gin.Context, title string) ui.Page {
	p := ui.Page{Title: title, CSRF: auth.CSRFToken(c), Status: http.StatusOK}
	pr := principal.From(c) // nil on public pages (sign-in)
	if pr == nil {
		return p
	}
	p.User = &ui.User{ID: pr.UserID, Email: pr.Email, Name: pr.Name}
	orgs, err := w.store.OrganizationsOfUser(c.Request.Context(), pr.UserID)
	if err != nil {
		w.logger.Error("list organizations of user", "err", err)
	}
	for _, o := range orgs {
		p.Orgs = append(p.Orgs, ui.Org{ID: o.ID, Slug: o.Slug, Name: o.Name, Role: string(o.Role)})
	}
	if org := access.OrgIfAny(c); org != nil {
		p.Org = &ui.Org{ID: org.ID, Slug: org.Slug, Name: org.Name, Role: string(access.Role(c))}
		p.Nav = nav(p.Org, access.Role(c), c.FullPath())
		if rbac.Can(access.Role(c), rbac.NotificationRead) {
			n, err := w.store.UnreadCount(c.Request.Context(), org.ID, pr.UserID)
			if err != nil {
				w.logger.Error("count unread notifications", "err", err)
			}
			for i := range p.Nav {
				if p.Nav[i].Label == navNotifications {
					p.Nav[i].Count = n
				}
			}
		}
	}
	p.Flash = w.takeFlash(c)
	return p
}

// page is basePage with the status of a successful GET.
func (w *Web) page(c *gin.Context, title string) ui.Page { return w.basePage(c, title) }

// navNotifications is the inbox's entry in the navigation (with the
// unread count).
const navNotifications = "Notifications"

// nav lists the organization's sections the role may open; sections not
// built yet are shown as "soon".
func nav(org *ui.Org, role rbac.Role, route string) []ui.NavItem {
	base := "/o/" + org.Slug
	items := []struct {
		label, path string
		perm        rbac.Permission
	}{
		{"Overview", "", rbac.MemberRead},
		{"Members", "/members", rbac.MemberRead},
		{"Invitations", "/invitations", rbac.MemberManage},
		{"API tokens", "/tokens", rbac.TokenManage},
		{"Agents", "/agents", rbac.AgentRead},
		{"Clones", "/clones", rbac.CloneRead},
		{navNotifications, "/notifications", rbac.NotificationRead},
		{"Audit log", "/audit", rbac.AuditRead},
		{"Usage", "/usage", rbac.UsageRead},
		{"Billing", "/billing", rbac.BillingRead},
	}
	var out []ui.NavItem
	for _, it := range items {
		if !rbac.Can(role, it.perm) {
			continue
		}
		out = append(out, ui.NavItem{Label: it.label, Href: base + it.path, Active: route == "/o/:org"+it.path})
	}
	return out
}
