package web_test

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/oauth2-proxy/mockoidc"

	"github.com/thinlab/thinlab/platform/auth"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/platform/web/webtest"
)

// TestSecurityHeadersOnEveryResponse asks the real server for an API
// answer, a web page, a public page, API and web errors and an unknown
// route: each carries the same protective headers.
func TestSecurityHeadersOnEveryResponse(t *testing.T) {
	s := startSite(t, "hedy@example.com")
	b, _ := s.signIn(t, "hedy@example.com")
	want := map[string]string{
		"X-Content-Type-Options":  "nosniff",
		"X-Frame-Options":         "DENY",
		"Content-Security-Policy": "frame-ancestors 'none'",
		"Referrer-Policy":         "strict-origin-when-cross-origin",
	}
	check := func(name string, h http.Header, status int) {
		t.Helper()
		for k, v := range want {
			// Pages send a stricter policy that includes frame-ancestors.
			if got := h.Get(k); !strings.Contains(got, v) {
				t.Errorf("%s (HTTP %d): %s = %q, want %q", name, status, k, got, v)
			}
		}
		// The test server is plain http with an http public URL: no HSTS.
		if h.Get("Strict-Transport-Security") != "" {
			t.Errorf("%s: HSTS sent over plain http", name)
		}
	}
	for _, path := range []string{"/api/v1/me", "/", "/signin", "/healthz", "/api/v1/orgs/nope/members", "/o/nope", "/no/such/route"} {
		pg := b.Get(s.p.URL + path)
		check("GET "+path+" signed in", pg.Header, pg.Status)
	}
	resp, err := http.Get(s.p.URL + "/api/v1/me") // 401
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close() // only the status and headers are checked
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("anonymous /api/v1/me: %d, want 401", resp.StatusCode)
	}
	check("anonymous /api/v1/me", resp.Header, resp.StatusCode)
}

// answer is what the rate limit tests look at: the status and headers.
type answer struct {
	StatusCode int
	Header     http.Header
}

// closed keeps resp's status and headers and closes its body (only the
// status matters to the rate limit tests).
func closed(resp *http.Response) answer {
	_ = resp.Body.Close() // nothing was read; a close error changes no status
	return answer{StatusCode: resp.StatusCode, Header: resp.Header}
}

// TestBearerFailuresRateLimited guesses API tokens from one address: after
// the configured burst of failures (default 20) the next request is
// answered 429 with Retry-After, even with a well-formed guess.
func TestBearerFailuresRateLimited(t *testing.T) {
	s := startSite(t, "ok@example.com")
	const burst = 20 // server.DefaultConfig's rateLimits.bearerFailures.burst
	guess := func() answer {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, s.p.URL+"/api/v1/me", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer thl_guess"+strconv.Itoa(burst))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return closed(resp)
	}
	for i := range burst {
		if r := guess(); r.StatusCode != http.StatusUnauthorized {
			t.Fatalf("guess %d: %d, want 401 (within the burst)", i+1, r.StatusCode)
		}
	}
	r := guess()
	if r.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("guess %d: %d, want 429", burst+1, r.StatusCode)
	}
	secs, err := strconv.Atoi(r.Header.Get("Retry-After"))
	if err != nil || secs < 1 {
		t.Fatalf("Retry-After = %q, want whole seconds >= 1", r.Header.Get("Retry-After"))
	}
	if r.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Error("429 answer lacks the security headers")
	}
	// A browser session from the same address is not a bearer request and
	// still works.
	b, _ := s.signIn(t, "ok@example.com")
	if pg := b.Get(s.p.URL + "/api/v1/me"); pg.Status != http.StatusOK || !strings.Contains(pg.Body, "ok@example.com") {
		t.Fatalf("session after the bearer lockout: %d", pg.Status)
	}
}

// TestUnverifiedEmailCannotAcceptInvitation: the in-process IdP signs in
// eve with email_verified=false and the address an invitation was sent to.
// The accept is refused (403) and eve joins nothing. The same person through
// a provider configured with requireEmailVerified: false is let in.
func TestUnverifiedEmailCannotAcceptInvitation(t *testing.T) {
	for _, tc := range []struct {
		name    string
		require *bool
		want    int
	}{
		{"email_verified required (default)", nil, http.StatusForbidden},
		{"requireEmailVerified false", new(bool), http.StatusSeeOther},
	} {
		t.Run(tc.name, func(t *testing.T) {
			idp, err := mockoidc.Run()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = idp.Shutdown() }) // the test is over; a slow IdP shutdown fails nothing
			p := webtest.Start(t, func(string) auth.Config {
				return auth.Config{Providers: []auth.ProviderConfig{{
					Name: "mock", Issuer: idp.Issuer(), ClientID: idp.ClientID, ClientSecret: idp.ClientSecret,
					RequireEmailVerified: tc.require,
				}}}
			})
			ctx := t.Context()
			boss, err := p.Store.UpsertOIDCUser(ctx, "https://other", "boss", "boss@example.com", "Boss", true)
			if err != nil {
				t.Fatal(err)
			}
			org, err := p.Store.CreateOrganization(ctx, "target", "Target", boss.ID)
			if err != nil {
				t.Fatal(err)
			}
			_, secret, err := p.Store.CreateInvitation(ctx, org.ID, "eve@example.com", rbac.Admin, boss.ID)
			if err != nil {
				t.Fatal(err)
			}
			idp.QueueUser(&mockoidc.MockUser{Subject: "sub-eve", Email: "eve@example.com", EmailVerified: false, PreferredUsername: "eve"})
			b := webtest.NewBrowser(t)
			if pg := b.Get(p.URL + "/auth/login/mock"); pg.Status != http.StatusOK {
				t.Fatalf("sign-in: %d %s", pg.Status, pg.Body)
			}
			page := b.Get(p.URL + "/invitations/accept?secret=" + url.QueryEscape(secret))
			b.Client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
			pg := b.PostForm(p.URL+"/invitations/accept", url.Values{"csrf_token": {webtest.CSRF(t, page.Body)}, "secret": {secret}})
			if pg.Status != tc.want {
				t.Fatalf("accept: HTTP %d, want %d\n%s", pg.Status, tc.want, pg.Body)
			}
			members := p.QueryStrings("SELECT m.role FROM memberships m JOIN users u ON u.id = m.user_id WHERE m.org_id = $1 AND u.email = $2", org.ID, "eve@example.com")
			if joined := len(members) == 1; joined != (tc.want == http.StatusSeeOther) {
				t.Fatalf("eve member of target: %v; want %v", members, tc.want == http.StatusSeeOther)
			}
			if tc.want == http.StatusForbidden && !strings.Contains(pg.Body, "email_verified") {
				t.Errorf("refusal does not say why (email_verified): %s", pg.Body)
			}
		})
	}
}

// TestSignInRateLimited starts sign-ins from one address until the
// default burst (20) is spent: the next start is answered 429 with
// Retry-After instead of a redirect to the IdP.
func TestSignInRateLimited(t *testing.T) {
	s := startSite(t)
	const burst = 20 // server.DefaultConfig's rateLimits.signIn.burst
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	start := func() answer {
		resp, err := client.Get(s.p.URL + "/auth/login/dex")
		if err != nil {
			t.Fatal(err)
		}
		return closed(resp)
	}
	for i := range burst {
		if r := start(); r.StatusCode != http.StatusFound {
			t.Fatalf("sign-in start %d: %d, want 302 to the IdP", i+1, r.StatusCode)
		}
	}
	r := start()
	if r.StatusCode != http.StatusTooManyRequests || r.Header.Get("Retry-After") == "" {
		t.Fatalf("sign-in start %d: %d Retry-After=%q, want 429 with Retry-After", burst+1, r.StatusCode, r.Header.Get("Retry-After"))
	}
}
