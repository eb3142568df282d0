package auth_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/oauth2-proxy/mockoidc"

	"github.com/thinlab/thinlab/internal/dextest"
	"github.com/thinlab/thinlab/platform/auth"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/platform/web/webtest"
)

// These tests run the whole sign-in flow against a real platform server on
// a real PostgreSQL database. The happy paths sign in through the real Dex
// (bin/dex) and its login form. mockoidc, an in-process provider that
// signs in whichever user is queued with whatever claims the test bends,
// is kept for what Dex cannot produce: ID tokens with a wrong audience, an
// expiry in the past or another nonce, and a groups claim (Dex's static
// password users have no groups).

type env struct {
	idp *mockoidc.MockOIDC
	p   *webtest.Platform
}

func start(t *testing.T, mutate func(*auth.ProviderConfig)) *env {
	t.Helper()
	idp, err := mockoidc.Run()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := idp.Shutdown(); err != nil {
			t.Errorf("shut the mock IdP down: %v", err)
		}
	})
	p := webtest.Start(t, func(base string) auth.Config {
		pc := auth.ProviderConfig{
			Name: "mock", DisplayName: "Mock IdP", Issuer: idp.Issuer(),
			ClientID: idp.ClientID, ClientSecret: idp.ClientSecret,
			Scopes: []string{"email", "profile", "groups"},
		}
		if mutate != nil {
			mutate(&pc)
		}
		return auth.Config{Providers: []auth.ProviderConfig{pc}}
	})
	return &env{idp: idp, p: p}
}

// user is a mockoidc user whose ID token claims a test can bend.
type user struct {
	*mockoidc.MockUser
	bend func(*mockoidc.IDTokenClaims)
}

func (u user) Claims(scope []string, c *mockoidc.IDTokenClaims) (jwt.Claims, error) {
	if u.bend != nil {
		u.bend(c)
	}
	return u.MockUser.Claims(scope, c)
}

func mockUser(email string, groups ...string) *mockoidc.MockUser {
	return &mockoidc.MockUser{Subject: "sub-" + email, Email: email, EmailVerified: true, PreferredUsername: strings.Split(email, "@")[0], Groups: groups}
}

// signIn runs the flow in a cookie-jar client and returns the final page.
func (e *env) signIn(t *testing.T, b *webtest.Browser, u mockoidc.User) webtest.Page {
	t.Helper()
	e.idp.QueueUser(u)
	return b.Get(e.p.URL + "/auth/login/mock")
}

// dexEnv is the platform with the real Dex (bin/dex) as its only provider:
// the happy sign-in paths go through Dex's own login form.
type dexEnv struct {
	dex *dextest.Dex
	p   *webtest.Platform
}

func startDex(t *testing.T, emails ...string) *dexEnv {
	t.Helper()
	p, dex := webtest.StartDex(t, emails, nil)
	return &dexEnv{dex: dex, p: p}
}

// signIn signs email in through Dex from the platform's login URL.
func (e *dexEnv) signIn(b *webtest.Browser, email string) (webtest.Page, *dextest.SignInResult) {
	b.T.Helper()
	return b.SignIn(e.dex, e.p.URL+"/auth/login/dex", email)
}

func TestSignInCreatesUserAndPersonalOrg(t *testing.T) {
	e := startDex(t, "grace@example.com")
	b := webtest.NewBrowser(t)

	// Before sign-in, pages send the browser to the sign-in page.
	pg := b.Get(e.p.URL + "/o/anything/members")
	if pg.URL.Path != "/signin" || pg.URL.Query().Get("return_to") != "/o/anything/members" {
		t.Fatalf("unauthenticated page landed on %s, want /signin?return_to=/o/anything/members", pg.URL)
	}
	pg.Contains(t, "Continue with Dex", `href="/auth/login/dex?return_to=`)

	pg, res := e.signIn(b, "grace@example.com")
	if pg.Status != http.StatusOK || !strings.HasPrefix(pg.URL.Path, "/o/grace") {
		t.Fatalf("after sign-in: HTTP %d at %s, want 200 on the personal organization /o/grace...\n%s", pg.Status, pg.URL, pg.Body)
	}
	pg.Contains(t, "grace@example.com", "owner", "Members", "API tokens", "Audit log")

	sub, err := webtest.DexUser(t, e.dex, "grace@example.com").Subject()
	if err != nil {
		t.Fatal(err)
	}
	n := e.p.Count("SELECT count(*) FROM users WHERE oidc_issuer = $1 AND oidc_subject = $2 AND email = $3", e.dex.Issuer, sub, "grace@example.com")
	if n != 1 {
		t.Fatalf("users row for the first sign-in (issuer %s, subject %s): count %d; want 1", e.dex.Issuer, sub, n)
	}
	actions := auditActions(t, e.p)
	for _, want := range []string{"user.create", "org.create"} {
		if !strings.Contains(actions, want) {
			t.Errorf("audit log lacks %s: %s", want, actions)
		}
	}
	// The session cookie the callback sets is HttpOnly and SameSite=Lax.
	cb, ok := res.Hop("/auth/callback/")
	if !ok {
		t.Fatalf("the sign-in never reached the platform's callback: %+v", res.Hops)
	}
	sc := sessionSetCookie(cb.Header)
	if !strings.Contains(sc, "HttpOnly") || !strings.Contains(sc, "SameSite=Lax") {
		t.Errorf("session cookie attributes: %q, want HttpOnly and SameSite=Lax", sc)
	}

	// A second sign-in reuses the user and creates nothing new.
	before := e.p.Count("SELECT count(*) FROM organizations")
	b2 := webtest.NewBrowser(t)
	if pg, _ := e.signIn(b2, "grace@example.com"); pg.Status != http.StatusOK {
		t.Fatalf("second sign-in: HTTP %d at %s, want 200", pg.Status, pg.URL)
	}
	n = e.p.Count("SELECT count(*) FROM users WHERE email = $1", "grace@example.com")
	after := e.p.Count("SELECT count(*) FROM organizations")
	if n != 1 || after != before {
		t.Fatalf("second sign-in: %d users, organizations %d -> %d; want 1 user and no new organization", n, before, after)
	}
}

// sessionSetCookie returns the Set-Cookie header of the session cookie.
func sessionSetCookie(h http.Header) string {
	for _, c := range h.Values("Set-Cookie") {
		if strings.HasPrefix(c, auth.SessionCookie+"=") {
			return c
		}
	}
	return ""
}

func auditActions(t *testing.T, p *webtest.Platform) string {
	t.Helper()
	return strings.Join(p.QueryStrings("SELECT action FROM audit_events ORDER BY id"), ",")
}

func TestGroupsClaimMapsToOrgRole(t *testing.T) {
	e := start(t, func(pc *auth.ProviderConfig) {
		pc.GroupsClaim = "groups"
		pc.GroupRoles = []auth.GroupRole{
			{Group: "engineering", Org: "eng", Role: "member"},
			{Group: "platform-admins", Org: "eng", Role: "admin"},
			{Group: "finance", Org: "money", Role: "viewer"},
		}
	})
	ctx := t.Context()
	// The mapped organizations exist from the start, without members.
	eng, err := e.p.Store.OrganizationByRef(ctx, "eng")
	if err != nil || eng.ManagedBy != "idp:mock" {
		t.Fatalf("mapped organization eng at start: %+v %v, want reserved (managed by idp:mock)", eng, err)
	}
	if _, err := e.p.Store.OrganizationByRef(ctx, "money"); err != nil {
		t.Fatalf("mapped organization money at start: %v", err)
	}
	b := webtest.NewBrowser(t)
	pg := e.signIn(t, b, mockUser("lin@example.com", "engineering", "platform-admins", "unrelated"))
	if pg.URL.Path != "/o/eng" {
		t.Fatalf("landed on %s, want /o/eng (no personal org when a group places the user)", pg.URL)
	}
	pg.Contains(t, `id="my-role">admin<`)
	role := strings.Join(e.p.QueryStrings("SELECT m.role FROM memberships m JOIN users u ON u.id = m.user_id WHERE m.org_id = $1 AND u.email = $2", eng.ID, "lin@example.com"), ",")
	if role != string(rbac.Admin) {
		t.Fatalf("role in eng = %q, want admin (strongest mapped group)", role)
	}
	if acts := auditActions(t, e.p); !strings.Contains(acts, "member.add") {
		t.Errorf("audit log lacks member.add: %s", acts)
	}
}

// callbackURL runs the flow up to the IdP's redirect back to the platform
// and returns that URL without following it.
func (e *env) callbackURL(t *testing.T, b *webtest.Browser, u mockoidc.User) *url.URL {
	t.Helper()
	e.idp.QueueUser(u)
	var cb *url.URL
	b.Client.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if strings.HasPrefix(req.URL.Path, "/auth/callback/") {
			cb = req.URL
			return http.ErrUseLastResponse
		}
		return nil
	}
	resp, err := b.Client.Get(e.p.URL + "/auth/login/mock")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close() // CheckRedirect captured the callback; the body is not needed
	b.Client.CheckRedirect = nil
	if cb == nil {
		t.Fatalf("the IdP did not redirect back (HTTP %d)", resp.StatusCode)
	}
	return cb
}

// TestSignInRefusedCallbackState runs the real Dex sign-in up to Dex's
// redirect back to the platform and tampers with what the platform
// checks itself: the state parameter and the login cookie.
func TestSignInRefusedCallbackState(t *testing.T) {
	e := startDex(t, "s@example.com", "c@example.com")
	cases := []struct {
		name   string
		email  string
		tamper func(u *url.URL, b *webtest.Browser)
		want   string
	}{
		{
			name:  "bad state",
			email: "s@example.com",
			tamper: func(u *url.URL, _ *webtest.Browser) {
				q := u.Query()
				q.Set("state", "forged")
				u.RawQuery = q.Encode()
			},
			want: "state parameter does not match",
		},
		{
			name:   "missing login cookie",
			email:  "c@example.com",
			tamper: func(_ *url.URL, b *webtest.Browser) { b.Client.Jar = emptyJar() },
			want:   "sign-in state cookie is missing",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := webtest.NewBrowser(t)
			cb, res, err := e.dex.SignInUntil(t.Context(), b.Client, e.p.URL+"/auth/login/dex", webtest.DexUser(t, e.dex, tc.email), "/auth/callback/")
			if err != nil {
				t.Fatalf("sign-in up to the callback: %v (hops %+v)", err, res.Hops)
			}
			tc.tamper(cb, b)
			expectRefused(t, e.p, b, cb, tc.want)
		})
	}
}

// expectRefused sends the callback and expects the refusal page with want.
func expectRefused(t *testing.T, p *webtest.Platform, b *webtest.Browser, cb *url.URL, want string) {
	t.Helper()
	pg := b.Get(cb.String())
	if pg.Status != http.StatusBadRequest {
		t.Fatalf("HTTP %d, want 400:\n%s", pg.Status, pg.Body)
	}
	pg.Contains(t, "Sign-in failed", want)
	if b.Cookie(p.URL, auth.SessionCookie) != "" {
		t.Fatal("a refused sign-in set a session cookie")
	}
}

// TestSignInRefusesBentIDTokens needs ID tokens no honest provider
// issues (Dex cannot be made to): the in-process mock IdP signs a token
// for another audience, an expired one, and one with another nonce.
func TestSignInRefusesBentIDTokens(t *testing.T) {
	e := start(t, nil)
	cases := []struct {
		name string
		user mockoidc.User
		want string
	}{
		{
			name: "wrong audience",
			user: user{MockUser: mockUser("a@example.com"), bend: func(c *mockoidc.IDTokenClaims) { c.Audience = jwt.ClaimStrings{"someone-else"} }},
			want: "wrong audience",
		},
		{
			name: "expired ID token",
			user: user{MockUser: mockUser("x@example.com"), bend: func(c *mockoidc.IDTokenClaims) {
				past := time.Now().Add(-time.Hour)
				c.ExpiresAt, c.IssuedAt, c.NotBefore = jwt.NewNumericDate(past), jwt.NewNumericDate(past.Add(-time.Hour)), jwt.NewNumericDate(past.Add(-time.Hour))
			}},
			want: "ID token has expired",
		},
		{
			name: "nonce mismatch",
			user: user{MockUser: mockUser("n@example.com"), bend: func(c *mockoidc.IDTokenClaims) { c.Nonce = "replayed" }},
			want: "nonce does not match",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := webtest.NewBrowser(t)
			expectRefused(t, e.p, b, e.callbackURL(t, b, tc.user), tc.want)
		})
	}
}

func TestCSRFTamperedCookieAndLogout(t *testing.T) {
	e := startDex(t, "kim@example.com")
	b := webtest.NewBrowser(t)
	pg, _ := e.signIn(b, "kim@example.com")
	slug := strings.TrimPrefix(pg.URL.Path, "/o/")
	tokens := e.p.URL + "/o/" + slug + "/tokens"
	csrf := webtest.CSRF(t, b.Get(tokens).Body)

	// A form without the token, or with another one, is refused.
	for name, form := range map[string]url.Values{
		"missing": {"name": {"ci"}},
		"wrong":   {"name": {"ci"}, "csrf_token": {"not-" + csrf}},
	} {
		pg := b.PostForm(tokens, form)
		if pg.Status != http.StatusForbidden {
			t.Fatalf("%s CSRF token: HTTP %d, want 403", name, pg.Status)
		}
		pg.Contains(t, "CSRF token missing or invalid")
	}
	// A JSON client using the session cookie gets the same reason.
	req, _ := http.NewRequest(http.MethodPost, e.p.URL+"/api/v1/orgs/"+slug+"/tokens", strings.NewReader(`{"name":"x"}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := b.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		Error struct{ Message string } `json:"error"`
	}
	err = json.NewDecoder(resp.Body).Decode(&body)
	_ = resp.Body.Close() // decoded above; a close error changes nothing
	if err != nil || resp.StatusCode != http.StatusUnauthorized || body.Error.Message != auth.CSRFRefusal {
		t.Fatalf("API POST with session cookie and no CSRF token: HTTP %d %q (decode: %v), want 401 %q", resp.StatusCode, body.Error.Message, err, auth.CSRFRefusal)
	}
	if n := e.p.Count("SELECT count(*) FROM api_tokens"); n != 0 {
		t.Fatalf("%d tokens created by refused requests", n)
	}

	// With the token it works.
	pg = b.PostForm(tokens, url.Values{"name": {"ci"}, "csrf_token": {csrf}})
	if pg.Status != http.StatusOK {
		t.Fatalf("create token with CSRF token: HTTP %d\n%s", pg.Status, pg.Body)
	}
	pg.Contains(t, `id="token-secret">thl_`)

	// A tampered session cookie is no session.
	good := b.Cookie(e.p.URL, auth.SessionCookie)
	b.SetCookie(e.p.URL, auth.SessionCookie, good[:len(good)-2]+flip(good[len(good)-2:]))
	if pg := b.Get(tokens); pg.URL.Path != "/signin" {
		t.Fatalf("tampered session cookie reached %s", pg.URL)
	}
	b.SetCookie(e.p.URL, auth.SessionCookie, good)

	// Logout ends the session on the server: the old cookie is dead.
	pg = b.PostForm(e.p.URL+"/auth/logout", url.Values{"csrf_token": {csrf}})
	if pg.URL.Path != "/signin" || b.Cookie(e.p.URL, auth.SessionCookie) != "" {
		t.Fatalf("after logout: at %s, cookie %q", pg.URL, b.Cookie(e.p.URL, auth.SessionCookie))
	}
	pg.Contains(t, "You are signed out")
	b.SetCookie(e.p.URL, auth.SessionCookie, good)
	if pg := b.Get(tokens); pg.URL.Path != "/signin" {
		t.Fatalf("the cookie of a logged-out session still reaches %s", pg.URL)
	}
	if acts := auditActions(t, e.p); !strings.Contains(acts, "session.logout") || !strings.Contains(acts, "token.create") {
		t.Errorf("audit log: %s", acts)
	}
}

func flip(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r == 'A' {
			b.WriteRune('B')
		} else {
			b.WriteRune('A')
		}
	}
	return b.String()
}

func emptyJar() http.CookieJar {
	j, _ := cookiejar.New(nil)
	return j
}

func TestExpiredSessionIsNoSession(t *testing.T) {
	e := startDex(t, "old@example.com")
	b := webtest.NewBrowser(t)
	pg, _ := e.signIn(b, "old@example.com")
	if pg.Status != http.StatusOK || !strings.HasPrefix(pg.URL.Path, "/o/") {
		t.Fatalf("sign-in: HTTP %d at %s, want 200 on an organization page", pg.Status, pg.URL)
	}
	e.p.Exec("UPDATE web_sessions SET expires_at = now() - interval '1 second'")
	if again := b.Get(pg.URL.String()); again.URL.Path != "/signin" {
		t.Fatalf("expired session reached %s", again.URL)
	}
}

func TestSecureCookiesWhenConfigured(t *testing.T) {
	p := webtest.Start(t, func(base string) auth.Config {
		dex := dextest.Start(t, dextest.Options{RedirectURIs: []string{base + "/auth/callback/dex"}})
		return auth.Config{SecureCookies: true, Providers: []auth.ProviderConfig{{
			Name: "dex", Issuer: dex.Issuer, ClientID: dex.ClientID, ClientSecret: dex.ClientSecret,
		}}}
	})
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Get(p.URL + "/auth/login/dex")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close() // a redirect: only its status and cookies matter
	sc := resp.Header.Get("Set-Cookie")
	for _, attr := range []string{"thinlab_login=", "Secure", "HttpOnly", "SameSite=Lax", "Path=/auth/"} {
		if !strings.Contains(sc, attr) {
			t.Errorf("login cookie lacks %s: %s", attr, sc)
		}
	}
	loc, _ := url.Parse(resp.Header.Get("Location"))
	q := loc.Query()
	if q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" || q.Get("nonce") == "" || q.Get("state") == "" {
		t.Errorf("authorization request lacks PKCE S256, nonce or state: %s", loc)
	}
	if q.Get("redirect_uri") != p.URL+"/auth/callback/dex" {
		t.Errorf("redirect_uri = %s", q.Get("redirect_uri"))
	}
}

// TestMappedOrgSlugCannotBeSquatted: with a group mapping for "acme", a
// signed-in user who is not in the group tries to register "acme" first
// (API and web form). Both are refused with 409 naming the reservation;
// the group's members then land in the real "acme", the squatter not.
func TestMappedOrgSlugCannotBeSquatted(t *testing.T) {
	e := start(t, func(pc *auth.ProviderConfig) {
		pc.GroupsClaim = "groups"
		pc.GroupRoles = []auth.GroupRole{{Group: "acme-staff", Org: "acme", Role: "member"}}
	})
	ctx := t.Context()
	b := webtest.NewBrowser(t)
	e.signIn(t, b, mockUser("mallory@example.com"))
	home := b.Get(e.p.URL + "/")
	pg := b.PostForm(e.p.URL+"/orgs", url.Values{"csrf_token": {webtest.CSRF(t, home.Body)}, "slug": {"acme"}, "name": {"Acme"}})
	if pg.Status != http.StatusConflict || !strings.Contains(pg.Body, "reserved") {
		t.Fatalf("web: squatting acme: HTTP %d, want 409 naming the reservation\n%s", pg.Status, pg.Body)
	}
	// Through the API, with the same session (CSRF header for JSON).
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, e.p.URL+"/api/v1/orgs", strings.NewReader(`{"slug":"acme","name":"Acme"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-CSRF-Token", webtest.CSRF(t, home.Body))
	resp, err := b.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close() // read in full above
	if resp.StatusCode != http.StatusConflict || !strings.Contains(string(body), "reserved") || !strings.Contains(string(body), `"field":"slug"`) {
		t.Fatalf("API: squatting acme: %d %s, want 409 naming the reservation", resp.StatusCode, body)
	}
	staff := webtest.NewBrowser(t)
	if pg := e.signIn(t, staff, mockUser("sam@example.com", "acme-staff")); pg.URL.Path != "/o/acme" {
		t.Fatalf("group member landed on %s, want /o/acme", pg.URL)
	}
	emails := e.p.QueryStrings("SELECT u.email FROM memberships m JOIN users u ON u.id = m.user_id JOIN organizations o ON o.id = m.org_id WHERE o.slug = $1 ORDER BY u.email", "acme")
	if strings.Join(emails, ",") != "sam@example.com" {
		t.Fatalf("members of acme: %v, want only the group member", emails)
	}
}

// TestEmailRolesGrantOnlyToVerifiedAddresses: an emailRoles entry makes
// its organization at start and places the person with that verified
// address there (any letter case); the same address unverified, or
// another address, gets nothing of it.
func TestEmailRolesGrantOnlyToVerifiedAddresses(t *testing.T) {
	e := start(t, func(pc *auth.ProviderConfig) {
		pc.EmailRoles = []auth.EmailRole{{Email: "Owner@Example.com", Org: "first", Role: "owner"}}
	})
	ctx := t.Context()
	first, err := e.p.Store.OrganizationByRef(ctx, "first")
	if err != nil {
		t.Fatalf("organization of an email mapping at start: %v", err)
	}
	members := func() string {
		return strings.Join(e.p.QueryStrings("SELECT u.email || ':' || m.role FROM memberships m JOIN users u ON u.id = m.user_id WHERE m.org_id = $1 ORDER BY u.email", first.ID), ",")
	}

	unverified := mockUser("owner@example.com")
	unverified.Subject = "sub-unverified"
	unverified.EmailVerified = false
	e.signIn(t, webtest.NewBrowser(t), unverified)
	e.signIn(t, webtest.NewBrowser(t), mockUser("someone@example.com"))
	if got := members(); got != "" {
		t.Fatalf("members of first after an unverified and an unrelated sign-in: %q, want none", got)
	}

	pg := e.signIn(t, webtest.NewBrowser(t), mockUser("owner@example.com"))
	if pg.URL.Path != "/o/first" {
		t.Fatalf("landed on %s, want /o/first", pg.URL)
	}
	if got := members(); got != "owner@example.com:owner" {
		t.Fatalf("members of first: %q, want owner@example.com:owner", got)
	}
}

func TestEmailRolesConfigErrorsNameTheField(t *testing.T) {
	cfg := auth.Config{BaseURL: "http://127.0.0.1", CookieSecret: strings.Repeat("c", 32), Providers: []auth.ProviderConfig{{
		Name: "sso", Issuer: "http://127.0.0.1:1", ClientID: "x", ClientSecret: "y",
		EmailRoles: []auth.EmailRole{{Email: "nobody", Org: "Bad Slug", Role: "king"}},
	}}}
	err := cfg.Validate()
	for _, want := range []string{"emailRoles[0].email", "emailRoles[0].org", "emailRoles[0].role"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want an error naming %s", err, want)
		}
	}
}
