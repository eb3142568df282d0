package web_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/thinlab/thinlab/internal/browsertest"
	"github.com/thinlab/thinlab/internal/dextest"
	"github.com/thinlab/thinlab/platform/auth"
	"github.com/thinlab/thinlab/platform/web/webtest"
	"github.com/thinlab/thinlab/sdk/platformapi"
)

// TestE2ESignInWithDexCreateTokenInBrowser is the whole path a person
// takes, with real parts only: the platform server on a real PostgreSQL,
// the real Dex IdP (bin/dex) with its own login form, and headless
// Chromium. Sign in through Dex, land on the dashboard, create an API
// token in the UI, read it from the page (shown once) and use it on the
// API.
func TestE2ESignInWithDexCreateTokenInBrowser(t *testing.T) {
	var dex *dextest.Dex
	p := webtest.Start(t, func(base string) auth.Config {
		dex = dextest.Start(t, dextest.Options{RedirectURIs: []string{base + "/auth/callback/dex"}})
		return auth.Config{Providers: []auth.ProviderConfig{{
			Name: "dex", DisplayName: "Dex", Issuer: dex.Issuer,
			ClientID: dex.ClientID, ClientSecret: dex.ClientSecret,
		}}}
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("dex log:\n%s", dex.LogContent())
		}
	})
	user := dex.Users[0]
	ctx := browsertest.New(t)

	browsertest.Step(t, ctx, "open the sign-in page",
		chromedp.Navigate(p.URL+"/"),
		chromedp.WaitVisible(`a[href^="/auth/login/dex"]`),
		chromedp.Click(`a[href^="/auth/login/dex"]`),
	)
	browsertest.Step(t, ctx, "fill Dex's login form",
		chromedp.WaitVisible("#login"),
		chromedp.SendKeys("#login", user.Email),
		chromedp.SendKeys("#password", user.Password),
		// Clicking #submit-login hangs in this Chromium; submitting works.
		chromedp.Submit("#password"),
	)
	browsertest.Step(t, ctx, "land on the dashboard", chromedp.WaitVisible("#my-role"))
	if loc := browsertest.Get(t, ctx, "location", chromedp.Location()); !strings.HasPrefix(loc, p.URL+"/o/") {
		t.Fatalf("after sign-in the browser is at %s", loc)
	}
	if email := browsertest.Get(t, ctx, "header", chromedp.Text("#user-email")); email != user.Email {
		t.Fatalf("header shows %q, want %q", email, user.Email)
	}
	if role := browsertest.Get(t, ctx, "role", chromedp.Text("#my-role")); role != "owner" {
		t.Fatalf("role on the dashboard = %q, want owner of the personal organization", role)
	}

	browsertest.Step(t, ctx, "open API tokens",
		chromedp.Click(`nav a[href$="/tokens"]`),
		chromedp.WaitVisible("#token-name"),
	)
	browsertest.Step(t, ctx, "create a token",
		chromedp.SendKeys("#token-name", "e2e-ci"),
		chromedp.Submit("#token-name"),
		chromedp.WaitVisible("#token-secret"),
	)
	secret := strings.TrimSpace(browsertest.Get(t, ctx, "read the token", chromedp.Text("#token-secret")))
	if !strings.HasPrefix(secret, "thl_") {
		t.Fatalf("token on the page: %q", secret)
	}

	req, _ := http.NewRequest(http.MethodGet, p.URL+"/api/v1/me", nil)
	req.Header.Set("Authorization", "Bearer "+secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	var me platformapi.Me
	if err := json.NewDecoder(resp.Body).Decode(&me); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || me.Email != user.Email || me.Method != "token" {
		t.Fatalf("GET /api/v1/me with the token: HTTP %d %+v", resp.StatusCode, me)
	}
	// The account was made from Dex's ID token: its identity is Dex's
	// issuer and a subject Dex chose, not something the platform invented.
	u, err := p.Store.UserByID(t.Context(), me.ID)
	if err != nil {
		t.Fatalf("user %s of /api/v1/me: %v", me.ID, err)
	}
	if u.OIDCIssuer != dex.Issuer || u.OIDCSubject == "" {
		t.Fatalf("user identity = (%q, %q), want issuer %q and Dex's subject", u.OIDCIssuer, u.OIDCSubject, dex.Issuer)
	}
}
