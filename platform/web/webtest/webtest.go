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

	"github.com/thinlab/thinlab/internal/testenv"
	"github.com/thinlab/thinlab/platform/auth"
	"github.com/thinlab/thinlab/platform/platformtest"
	"github.com/thinlab/thinlab/platform/server"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/platform/web"
)

// CookieSecret signs login cookies in tests.
const CookieSecret = "webtest-cookie-secret-0123456789abcdef"

// Platform is a running server.
type Platform struct {
	T      testing.TB
	URL    string
	Server *server.Server
	Store  *store.Store
}

// Start runs a platform whose sign-in configuration is made by authConfig
// from the server's base URL. The test binary must run platformtest.Main.
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
	ac := authConfig(base)
	if ac.BaseURL == "" {
		ac.BaseURL = base
	}
	if ac.CookieSecret == "" {
		ac.CookieSecret = CookieSecret
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := server.New(ctx, cfg, server.Options{Logger: logger, Setup: []func(*server.Server) error{web.Setup(ac)}})
	if err != nil {
		ln.Close()
		t.Fatalf("webtest: start platform: %v", err)
	}
	sctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(sctx, ln)
	}()
	t.Cleanup(func() {
		stop()
		<-done
		srv.Close()
	})
	return &Platform{T: t, URL: base, Server: srv, Store: srv.Store()}
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
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
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
	b.Jar.SetCookies(u, []*http.Cookie{{Name: name, Value: value, Path: "/"}})
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
