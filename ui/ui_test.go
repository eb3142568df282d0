package ui

import (
	"bytes"
	"io/fs"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/a-h/templ"
)

func render(t *testing.T, c templ.Component) string {
	t.Helper()
	var b bytes.Buffer
	if err := c.Render(t.Context(), &b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func page() Page {
	org := &Org{ID: "org_1", Slug: "acme", Name: "Acme", Role: "owner"}
	return Page{
		Title: "Members", User: &User{ID: "usr_1", Email: "ada@example.com"}, Org: org,
		Orgs: []Org{*org, {ID: "org_2", Slug: "beta", Name: "Beta", Role: "viewer"}},
		Nav:  []NavItem{{Label: "Members", Href: "/o/acme/members", Active: true}, {Label: "Agents", Soon: true}},
		CSRF: "tok<en>", Flash: []Flash{{Kind: "success", Text: "Saved <b>"}},
	}
}

func TestPagesRenderEscapedWithoutScripts(t *testing.T) {
	now := time.Now()
	pages := map[string]templ.Component{
		"members":     MembersPage(page(), Members{CanManage: true, Members: []Member{{UserID: "usr_2", Email: "<x>@example.com", Role: "member", CanEdit: true, Assignee: []string{"admin", "member"}, Since: now}}}),
		"invitations": InvitationsPage(page(), Invitations{CanManage: true, Roles: []string{"member"}, NewLink: "http://x/invitations/accept?secret=s", NewEmail: "b@example.com"}),
		"tokens":      TokensPage(page(), Tokens{CanManage: true, NewSecret: "thl_secret", NewName: "ci", Tokens: []Token{{ID: "tok_1", Name: "ci", Prefix: "thl_ab", Created: now, CanEdit: true}}}),
		"audit":       AuditPage(page(), Audit{CSVURL: "/o/acme/audit/export.csv", JSONURL: "/o/acme/audit/export.json", Events: []AuditEvent{{Time: now, Action: "token.create", Result: "error", Error: "boom"}}}),
		"dashboard":   DashboardPage(page(), Dashboard{Members: 2, Permissions: []string{"audit:read"}}),
		"clones": ClonesPage(page(), Clones{CanCreate: true, Agents: []CloneAgent{{ID: "agt_1", Name: "db<x>", Connected: true,
			Clones:    []CloneRow{{AgentID: "agt_1", ID: "c<b>", Status: "CREATING", Href: "/o/acme/agents/agt_1/clones/c"}},
			Snapshots: []SnapshotRow{{ID: "pool@snapshot_<x>", Pool: "pool"}}}, {ID: "agt_2", Name: "off", Error: "agent <b> is not connected"}}}),
		"clone": ClonePage(page(), CloneDetail{AgentID: "agt_1", AgentName: "db<x>", ID: "c<b>", Status: "OK", ConnStr: "host=AGENT_HOST user=<b>",
			HostNote: "<b>", ConnectCommand: "thinlab connect c<b> --agent db<x>", CanUpdate: true, CanDelete: true, Base: "/o/acme/agents/agt_1/clones/c"}),
		"signin": SignInPage(Page{Title: "Sign in"}, SignIn{Providers: []Provider{{DisplayName: "Dex", LoginURL: "/auth/login/dex"}}}),
		"error":  ErrorPage(Page{Title: "Forbidden"}, Error{Status: http.StatusForbidden, Title: "Forbidden", Message: "CSRF token missing or invalid"}),
	}
	for name, c := range pages {
		html := render(t, c)
		if strings.Contains(html, "<script") {
			t.Errorf("%s: page has a script; pages must work without JavaScript", name)
		}
		if strings.Contains(html, "<b>") || strings.Contains(html, "<x>") || strings.Contains(html, "tok<en>") {
			t.Errorf("%s: unescaped user content in %s", name, html)
		}
		if !strings.Contains(html, `href="/static/style.css"`) {
			t.Errorf("%s: no stylesheet", name)
		}
	}
	if html := render(t, pages["members"]); !strings.Contains(html, `name="csrf_token" value="tok&lt;en&gt;"`) {
		t.Errorf("members: forms lack the CSRF field:\n%s", html)
	}
	pg := page()
	pg.RefreshSeconds = 2
	if html := render(t, ClonePage(pg, CloneDetail{ID: "c1", Status: "CREATING", InProgress: true})); !strings.Contains(html, `http-equiv="refresh" content="2"`) || !strings.Contains(html, `id="clone-progress"`) || strings.Contains(html, `id="clone-connstr"`) {
		t.Errorf("clone in progress: want a self-reloading page with the progress and no connection string:\n%s", html)
	}
	if html := render(t, pages["tokens"]); !strings.Contains(html, `id="token-secret">thl_secret<`) {
		t.Errorf("tokens: the new secret is not shown")
	}
}

func TestStaticHasStylesheet(t *testing.T) {
	b, err := fs.ReadFile(Static, "static/style.css")
	if err != nil || len(b) == 0 {
		t.Fatalf("static/style.css: %v", err)
	}
}
