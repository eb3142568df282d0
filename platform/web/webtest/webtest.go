// Package webtest runs a real platform server with sign-in and the web UI
// for tests: a fresh database from platformtest, the server on its own
// 127.0.0.1 listener (so the external URL, and with it the OIDC callback
// URL, is known before the identity provider is configured), and a browser
// like HTTP client with a cookie jar.
package webtest

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/internal/dextest"
	"github.com/thinlab/thinlab/internal/testenv"
	"github.com/thinlab/thinlab/platform/auth"
	"github.com/thinlab/thinlab/platform/platformtest"
	"github.com/thinlab/thinlab/platform/server"
	"github.com/thinlab/thinlab/platform/store"
)

// CookieSecret signs login cookies in tests.
const CookieSecret = "webtest-cookie-secret-0123456789abcdef"

// Platform is a running server.
type Platform struct {
	T      testing.TB
	URL    string
	Server *server.Server
	Store  *store.Store
	DSN    string // superuser DSN of the test database
}

// QueryStrings runs a query returning one text column, as the superuser.
func (p *Platform) QueryStrings(sql string, args ...any) []string {
	p.T.Helper()
	return platformtest.QueryStrings(p.T, p.DSN, sql, args...)
}

// Count runs a query returning one number (SELECT count(*) ...).
func (p *Platform) Count(sql string, args ...any) int64 {
	p.T.Helper()
	return platformtest.Count(p.T, p.DSN, sql, args...)
}

// Exec runs SQL as the superuser and fails the test on an error.
func (p *Platform) Exec(sql string, args ...any) {
	p.T.Helper()
	if err := platformtest.Exec(p.DSN, sql, args...); err != nil {
		p.T.Fatalf("%s: %v", sql, err)
	}
}

// Start runs a platform whose sign-in configuration (the auth: section)
// is made by authConfig from the server's base URL (its publicURL). The test binary must run platformtest.Main.
func Start(t testing.TB, authConfig func(baseURL string) auth.Config) *Platform {
	t.Helper()
	testenv.NeedsSystem(t, "PostgreSQL and a running platform")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	cfg := server.DefaultConfig()
	cfg.Database.URL = platformtest.Database(t)
	cfg.Listen = ln.Addr().String()
	cfg.PublicURL = base
	cfg.Auth = authConfig(base)
	if cfg.Auth.CookieSecret == "" {
		cfg.Auth.CookieSecret = CookieSecret
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := server.New(ctx, cfg, server.Options{Logger: logger})
	if err != nil {
		_ = ln.Close() // the start failed; that error is reported
		t.Fatalf("webtest: start platform: %v", err)
	}
	sctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(sctx, ln); err != nil {
			t.Errorf("webtest: serve: %v", err)
		}
	}()
	t.Cleanup(func() {
		stop()
		<-done
		if err := srv.Close(); err != nil {
			t.Errorf("webtest: close the platform: %v", err)
		}
	})
	return &Platform{T: t, URL: base, Server: srv, Store: srv.Store(), DSN: cfg.Database.URL}
}

// Browser is an HTTP client with a cookie jar that follows redirects, like
// a browser without JavaScript.
type Browser struct {
	T      testing.TB
	Client *http.Client
	Jar    *cookiejar.Jar
}

// NewBrowser returns a fresh cookie jar client.
func NewBrowser(t testing.TB) *Browser {
	jar, _ := cookiejar.New(nil)
	return &Browser{T: t, Jar: jar, Client: &http.Client{Jar: jar, Timeout: 30 * time.Second}}
}

// Page is a fetched page.
type Page struct {
	Status int
	URL    *url.URL // after redirects
	Body   string
	Header http.Header
}

// Get fetches u (following redirects).
func (b *Browser) Get(u string) Page {
	b.T.Helper()
	resp, err := b.Client.Get(u)
	if err != nil {
		b.T.Fatal(err)
	}
	return read(b.T, resp)
}

// PostForm posts form values to u (following redirects).
func (b *Browser) PostForm(u string, form url.Values) Page {
	b.T.Helper()
	resp, err := b.Client.PostForm(u, form)
	if err != nil {
		b.T.Fatal(err)
	}
	return read(b.T, resp)
}

func read(t testing.TB, resp *http.Response) Page {
	t.Helper()
	body, err := io.ReadAll(resp.Body)
	if cerr := resp.Body.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	return Page{Status: resp.StatusCode, URL: resp.Request.URL, Body: string(body), Header: resp.Header}
}

// Cookie returns the value of the named cookie the jar holds for base.
func (b *Browser) Cookie(base, name string) string {
	u, _ := url.Parse(base)
	for _, c := range b.Jar.Cookies(u) {
		if c.Name == name {
			return c.Value
		}
	}
	return ""
}

// SetCookie replaces a cookie in the jar.
func (b *Browser) SetCookie(base, name, value string) {
	u, _ := url.Parse(base)
	// The jar only stores it: the attributes a server sets do not matter
	// here, and a Secure cookie would not be sent to the http test server.
	b.Jar.SetCookies(u, []*http.Cookie{{Name: name, Value: value, Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode}}) //nolint:gosec // G124: see above

}

var csrfRE = regexp.MustCompile(`name="csrf_token" value="([^"]+)"`)

// CSRF returns the CSRF token of the first form on a page.
func CSRF(t testing.TB, body string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no CSRF token on the page:\n%s", snippet(body))
	}
	return m[1]
}

func snippet(s string) string {
	if len(s) > 3000 {
		return s[:3000] + "..."
	}
	return s
}

// Contains fails the test unless the page contains every string.
func (p Page) Contains(t testing.TB, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(p.Body, w) {
			t.Fatalf("page %s (HTTP %d) lacks %q:\n%s", p.URL, p.Status, w, snippet(p.Body))
		}
	}
}

// Password is the password of every Dex user made by StartDex.
const Password = "webtest-password-0123"

// StartDex runs the real Dex (bin/dex) with a static password user for
// each email and a platform whose only provider ("dex") is that Dex.
// mutate, when not nil, adjusts the provider configuration.
func StartDex(t testing.TB, emails []string, mutate func(*auth.ProviderConfig)) (*Platform, *dextest.Dex) {
	t.Helper()
	users := make([]dextest.User, 0, len(emails))
	for _, e := range emails {
		users = append(users, dextest.User{Email: e, Password: Password})
	}
	var dex *dextest.Dex
	p := Start(t, func(base string) auth.Config {
		dex = dextest.Start(t, dextest.Options{RedirectURIs: []string{base + "/auth/callback/dex"}, Users: users})
		pc := auth.ProviderConfig{
			Name: "dex", DisplayName: "Dex", Issuer: dex.Issuer,
			ClientID: dex.ClientID, ClientSecret: dex.ClientSecret,
		}
		if mutate != nil {
			mutate(&pc)
		}
		return auth.Config{Providers: []auth.ProviderConfig{pc}}
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("dex log:\n%s", tail(dex.LogContent(), 4000))
		}
	})
	return p, dex
}

// DexUser returns the Dex user with email.
func DexUser(t testing.TB, dex *dextest.Dex, email string) dextest.User {
	t.Helper()
	for _, u := range dex.Users {
		if u.Email == email {
			return u
		}
	}
	t.Fatalf("webtest: %s is not a Dex user of this test: pass it to StartDex", email)
	return dextest.User{}
}

// SignIn signs email in through Dex, starting at loginURL (the platform's
// /auth/login/dex, perhaps with a return_to), submitting Dex's login form
// like a browser without JavaScript. It returns the page landed on and
// every hop; it fails the test when the sign-in does not end on a page.
func (b *Browser) SignIn(dex *dextest.Dex, loginURL, email string) (Page, *dextest.SignInResult) {
	b.T.Helper()
	res, err := dex.SignIn(b.T.Context(), b.Client, loginURL, DexUser(b.T, dex, email))
	if err != nil {
		b.T.Fatalf("sign-in of %s through Dex from %s: %v", email, loginURL, err)
	}
	last := res.Final()
	return Page{Status: last.Status, URL: last.URL, Body: res.Body, Header: last.Header}, res
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}
