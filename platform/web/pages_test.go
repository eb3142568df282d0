package web_test

import (
	"encoding/csv"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/thinlab/thinlab/internal/dextest"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/platform/web/webtest"
)

// The IdP here is the real Dex (bin/dex) with its login form; the
// platform, database and HTTP are real. The browser is a cookie-jar HTTP
// client: no JavaScript at all, which is the point.

type site struct {
	dex *dextest.Dex
	p   *webtest.Platform
}

// startSite runs the platform with Dex, which knows the given users.
func startSite(t *testing.T, emails ...string) *site {
	t.Helper()
	p, dex := webtest.StartDex(t, emails, nil)
	return &site{dex: dex, p: p}
}

// signIn signs email in with a fresh browser and returns it and the page
// it landed on.
func (s *site) signIn(t *testing.T, email string) (*webtest.Browser, webtest.Page) {
	t.Helper()
	b := webtest.NewBrowser(t)
	pg, _ := b.SignIn(s.dex, s.p.URL+"/auth/login/dex", email)
	if pg.Status != http.StatusOK {
		t.Fatalf("sign-in of %s: HTTP %d at %s, want 200\n%s", email, pg.Status, pg.URL, pg.Body)
	}
	return b, pg
}

func (s *site) userID(t *testing.T, email string) string {
	t.Helper()
	ids := s.p.QueryStrings("SELECT id FROM users WHERE email = $1", email)
	if len(ids) != 1 {
		t.Fatalf("users with email %s: %v, want one", email, ids)
	}
	return ids[0]
}

func (s *site) auditActions(t *testing.T) []string {
	t.Helper()
	return s.p.QueryStrings("SELECT action FROM audit_events WHERE result = $1 ORDER BY id", store.ResultSuccess)
}

func TestEveryPageRendersWithoutJavaScript(t *testing.T) {
	s := startSite(t, "ada@example.com")
	b, home := s.signIn(t, "ada@example.com")
	slug := strings.TrimPrefix(home.URL.Path, "/o/")
	o := s.p.URL + "/o/" + slug
	pages := map[string][]string{
		o:                             {`id="page-title">ada (personal)<`, "Your permissions", "member:manage", `id="org-select"`, "Sign out"},
		o + "/members":                {`id="members"`, "ada@example.com", `<span class="badge">you</span>`},
		o + "/invitations":            {`id="invitations"`, `id="invite-email"`, "No open invitations."},
		o + "/tokens":                 {`id="tokens"`, `id="token-name"`, "No tokens yet."},
		o + "/audit":                  {`id="audit"`, "org.create", `id="export-csv"`, "format=csv"},
		o + "/agents":                 {`id="agents"`, "No agents enrolled yet.", `id="enrollment-name"`, "No enrollment tokens yet."},
		o + "/clones":                 {`id="clones"`, "No clones yet.", `id="clone-form"`, `id="snapshots"`},
		s.p.URL + "/static/style.css": {".topbar"},
	}
	for u, want := range pages {
		pg := b.Get(u)
		if pg.Status != http.StatusOK || pg.URL.String() != u {
			t.Fatalf("GET %s: HTTP %d at %s", u, pg.Status, pg.URL)
		}
		pg.Contains(t, want...)
		if strings.Contains(pg.Body, "<script") {
			t.Errorf("%s has a <script>: pages must not need JavaScript", u)
		}
		if strings.HasSuffix(u, ".css") {
			continue
		}
		if ct := pg.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
			t.Errorf("%s: Content-Type %q", u, ct)
		}
		// Every POST form carries the CSRF token.
		forms := strings.Count(pg.Body, `method="post"`)
		if tokens := strings.Count(pg.Body, `name="csrf_token"`); tokens != forms {
			t.Errorf("%s: %d POST forms but %d CSRF fields", u, forms, tokens)
		}
	}
	// The sign-in page of a signed-in browser goes home; of a new one lists
	// the providers.
	if pg := b.Get(s.p.URL + "/signin"); pg.URL.Path != "/o/"+slug {
		t.Errorf("signed-in /signin went to %s", pg.URL)
	}
	webtest.NewBrowser(t).Get(s.p.URL+"/signin").Contains(t, "Continue with Dex")
	// An organization the user is not in looks like one that does not exist.
	if pg := b.Get(s.p.URL + "/o/someone-elses"); pg.Status != http.StatusNotFound {
		t.Errorf("foreign organization: HTTP %d", pg.Status)
	} else {
		pg.Contains(t, "organization not found")
	}
}

var linkRE = regexp.MustCompile(`id="invitation-link">([^<]+)<`)

func TestMembersInvitationsTokensAndAuditActions(t *testing.T) {
	s := startSite(t, "owner@example.com", "bob@example.com")
	owner, home := s.signIn(t, "owner@example.com")
	slug := strings.TrimPrefix(home.URL.Path, "/o/")
	o := s.p.URL + "/o/" + slug
	csrf := webtest.CSRF(t, owner.Get(o+"/invitations").Body)

	// Invite bob as admin; the link is shown once.
	pg := owner.PostForm(o+"/invitations", url.Values{"csrf_token": {csrf}, "email": {"bob@example.com"}, "role": {"admin"}})
	pg.Contains(t, "Invitation created for bob@example.com", "/invitations/accept?secret=")
	link := strings.ReplaceAll(linkRE.FindStringSubmatch(pg.Body)[1], "&amp;", "&")
	// A bad address is refused with the reason, and audited as an error.
	pg = owner.PostForm(o+"/invitations", url.Values{"csrf_token": {csrf}, "email": {"not-an-address"}, "role": {"member"}})
	if pg.Status != http.StatusBadRequest {
		t.Fatalf("bad email: HTTP %d", pg.Status)
	}
	pg.Contains(t, "is not an email address")

	// Bob follows the link: sign-in first, then back to the invitation.
	// Dex says bob's address is verified, which accepting requires.
	bob := webtest.NewBrowser(t)
	pg = bob.Get(link)
	if pg.URL.Path != "/signin" {
		t.Fatalf("invitation link without a session went to %s, want /signin", pg.URL)
	}
	login := regexp.MustCompile(`href="(/auth/login/dex[^"]*)"`).FindStringSubmatch(pg.Body)
	if login == nil {
		t.Fatalf("sign-in page lacks the Dex link:\n%s", pg.Body)
	}
	pg, _ = bob.SignIn(s.dex, s.p.URL+strings.ReplaceAll(login[1], "&amp;", "&"), "bob@example.com")
	if pg.URL.Path != "/invitations/accept" {
		t.Fatalf("after sign-in from the invitation link: at %s, want back at /invitations/accept", pg.URL)
	}
	pg.Contains(t, "Accept invitation", "admin")
	pg = bob.PostForm(s.p.URL+"/invitations/accept", url.Values{"csrf_token": {webtest.CSRF(t, pg.Body)}, "secret": {mustQuery(t, link, "secret")}})
	if pg.URL.Path != "/o/"+slug {
		t.Fatalf("after accepting: %s\n%s", pg.URL, pg.Body)
	}
	pg.Contains(t, "you joined as admin")

	// Bob (admin) cannot make himself owner: nobody grants a role above
	// their own.
	bobID := s.userID(t, "bob@example.com")
	bobCSRF := webtest.CSRF(t, bob.Get(o+"/members").Body)
	pg = bob.PostForm(o+"/members/"+bobID+"/role", url.Values{"csrf_token": {bobCSRF}, "role": {"owner"}})
	if pg.Status != http.StatusForbidden {
		t.Fatalf("admin granting owner: HTTP %d", pg.Status)
	}
	pg.Contains(t, "cannot grant role owner")

	// The owner demotes bob to viewer; bob loses the admin pages.
	pg = owner.PostForm(o+"/members/"+bobID+"/role", url.Values{"csrf_token": {csrf}, "role": {"viewer"}})
	pg.Contains(t, "bob@example.com is now viewer.")
	if pg := bob.Get(o + "/tokens"); pg.Status != http.StatusForbidden {
		t.Fatalf("viewer on the tokens page: HTTP %d", pg.Status)
	} else {
		pg.Contains(t, "lacks permission token:manage")
	}
	nav := bob.Get(o)
	if strings.Contains(nav.Body, `href="/o/`+slug+`/tokens"`) || !strings.Contains(nav.Body, `href="/o/`+slug+`/members"`) {
		t.Errorf("viewer navigation should show Members but not API tokens")
	}
	// The last owner cannot demote themself.
	ownerID := s.userID(t, "owner@example.com")
	pg = owner.PostForm(o+"/members/"+ownerID+"/role", url.Values{"csrf_token": {csrf}, "role": {"member"}})
	if pg.Status != http.StatusConflict {
		t.Fatalf("demoting the last owner: HTTP %d", pg.Status)
	}
	pg.Contains(t, "last owner")

	// Tokens: create (shown once), then revoke.
	pg = owner.PostForm(o+"/tokens", url.Values{"csrf_token": {csrf}, "name": {"ci-main"}, "expires_days": {"30"}})
	secret := regexp.MustCompile(`id="token-secret">(thl_[A-Za-z0-9]+)<`).FindStringSubmatch(pg.Body)[1]
	if resp := apiGet(t, s.p.URL+"/api/v1/me", secret); resp != http.StatusOK {
		t.Fatalf("new token on /api/v1/me: HTTP %d", resp)
	}
	if again := owner.Get(o + "/tokens"); strings.Contains(again.Body, secret) {
		t.Fatal("the token secret is shown again after creation")
	}
	tokID := s.p.QueryStrings("SELECT id FROM api_tokens WHERE name = $1", "ci-main")[0]
	pg = owner.PostForm(o+"/tokens/"+tokID+"/revoke", url.Values{"csrf_token": {csrf}})
	pg.Contains(t, "Token ci-main revoked.", "revoked")
	if resp := apiGet(t, s.p.URL+"/api/v1/me", secret); resp != http.StatusUnauthorized {
		t.Fatalf("revoked token on /api/v1/me: HTTP %d", resp)
	}

	// Invitations: revoke an open one.
	owner.PostForm(o+"/invitations", url.Values{"csrf_token": {csrf}, "email": {"carol@example.com"}, "role": {"member"}})
	invID := s.p.QueryStrings("SELECT id FROM invitations WHERE email = $1", "carol@example.com")[0]
	pg = owner.PostForm(o+"/invitations/"+invID+"/revoke", url.Values{"csrf_token": {csrf}})
	pg.Contains(t, "Invitation revoked.", "No open invitations.")

	// Remove bob.
	pg = owner.PostForm(o+"/members/"+bobID+"/remove", url.Values{"csrf_token": {csrf}})
	pg.Contains(t, "bob@example.com was removed")
	if pg := bob.Get(o); pg.Status != http.StatusNotFound {
		t.Fatalf("removed member still sees the organization: HTTP %d", pg.Status)
	}

	// Every action is in the audit log, which filters and exports.
	got := strings.Join(s.auditActions(t), ",")
	for _, want := range []string{"invitation.create", "invitation.accept", "member.update", "token.create", "token.revoke", "invitation.delete", "member.remove"} {
		if !strings.Contains(got, want) {
			t.Errorf("audit log lacks %s: %s", want, got)
		}
	}
	pg = owner.Get(o + "/audit?action=token.")
	pg.Contains(t, "token.create", "token.revoke")
	if strings.Contains(pg.Body, "<code>member.remove</code>") {
		t.Error("audit filter action=token. shows member.remove")
	}
	pg = owner.Get(o + "/audit?action=invitation.create")
	pg.Contains(t, "is not an email address") // the refused invitation, as an error
	csvURL := strings.ReplaceAll(regexp.MustCompile(`id="export-csv" href="([^"]+)"|href="([^"]+)"[^>]*id="export-csv"`).FindStringSubmatch(pg.Body)[2], "&amp;", "&")
	exp := owner.Get(s.p.URL + csvURL)
	if exp.Status != http.StatusOK || !strings.HasPrefix(exp.Header.Get("Content-Type"), "text/csv") {
		t.Fatalf("CSV export: HTTP %d %s\n%s", exp.Status, exp.Header.Get("Content-Type"), exp.Body)
	}
	rows, err := csv.NewReader(strings.NewReader(exp.Body)).ReadAll()
	if err != nil || len(rows) < 3 || rows[0][4] != "action" {
		t.Fatalf("CSV export: %v %v", err, rows)
	}
	for _, r := range rows[1:] {
		if r[4] != "invitation.create" {
			t.Fatalf("CSV export ignores the filter: %v", r)
		}
	}
}

func mustQuery(t *testing.T, raw, key string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u.Query().Get(key)
}

func apiGet(t *testing.T, u, token string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

// TestMissingMemberAndTokenAreNotFound: the chain loads the member and the
// token a form acts on, in the caller's organization; one that does not
// exist there (or belongs to another organization) is a 404 page.
func TestMissingMemberAndTokenAreNotFound(t *testing.T) {
	s := startSite(t, "owner@example.com", "other@example.com")
	owner, home := s.signIn(t, "owner@example.com")
	_, other := s.signIn(t, "other@example.com")
	o := s.p.URL + home.URL.Path
	csrf := webtest.CSRF(t, owner.Get(o+"/members").Body)
	otherID := s.userID(t, "other@example.com")
	n := s.p.Count("SELECT count(*) FROM organizations WHERE slug = $1", strings.TrimPrefix(other.URL.Path, "/o/"))
	if n != 1 {
		t.Fatalf("the other user's personal organization %s does not exist", other.URL.Path)
	}
	for _, tc := range []struct{ name, path, want string }{
		{"no such member", o + "/members/usr_none/role", "member not found"},
		{"member of another organization", o + "/members/" + otherID + "/remove", "member not found"},
		{"no such token", o + "/tokens/tok_none/revoke", "token not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pg := owner.PostForm(tc.path, url.Values{"csrf_token": {csrf}, "role": {"viewer"}})
			if pg.Status != http.StatusNotFound {
				t.Fatalf("HTTP %d, want 404\n%s", pg.Status, pg.Body)
			}
			pg.Contains(t, tc.want)
		})
	}
}
