package auth

import (
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
)

// Users provisions the person behind a verified identity: it creates the
// user on first sign-in, applies the provider's group mapping and returns
// the user ID.
type Users interface {
	SignIn(c *gin.Context, ident Identity) (userID string, err error)
}

// ErrorPage renders a refusal for a person (HTML) or a client (JSON). The
// web package plugs its templ page in; the default writes JSON or text.
type ErrorPage func(c *gin.Context, status int, message string)

// Auth holds the sign-in routes, the session middleware and the CSRF check.
type Auth struct {
	cfg         Config
	providers   map[string]*provider
	users       Users
	sessions    SessionStore
	loginSigner signer
	now         func() time.Time
	log         *slog.Logger

	// ErrorPage renders refusals; set it before serving.
	ErrorPage ErrorPage
}

// Options are the dependencies of New.
type Options struct {
	Users    Users
	Sessions SessionStore
	// HTTPClient talks to the IdPs (default http.DefaultClient with a
	// timeout).
	HTTPClient *http.Client
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// New validates cfg and builds the sign-in machinery.
func New(cfg Config, opts Options) (*Auth, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	client := opts.HTTPClient
	if client == nil {
		client = &http.Client{Timeout: 15 * time.Second}
	}
	a := &Auth{
		cfg:         cfg,
		providers:   map[string]*provider{},
		users:       opts.Users,
		sessions:    opts.Sessions,
		loginSigner: newSigner(cfg.CookieSecret, "login"),
		now:         opts.Now,
		log:         opts.Logger,
	}
	if a.log == nil {
		a.log = slog.Default()
	}
	if a.now == nil {
		a.now = time.Now
	}
	for _, p := range cfg.Providers {
		if !p.EmailVerificationRequired() {
			a.log.Warn("requireEmailVerified is false: invitations trust this provider's email claims without email_verified; anyone who can pick an address at this IdP can accept invitations sent to it", "provider", p.Name)
		}
		a.providers[p.Name] = newProvider(p, cfg.BaseURL, client)
	}
	return a, nil
}

// ProviderLink is one button on the sign-in page.
type ProviderLink struct {
	Name        string
	DisplayName string
	LoginURL    string
}

// Providers lists the configured IdPs in configuration order.
func (a *Auth) Providers(returnTo string) []ProviderLink {
	out := make([]ProviderLink, 0, len(a.cfg.Providers))
	for _, p := range a.cfg.Providers {
		u := "/auth/login/" + p.Name
		if rt := safeReturnTo(returnTo); rt != "/" {
			u += "?return_to=" + urlQueryEscape(rt)
		}
		out = append(out, ProviderLink{Name: p.Name, DisplayName: p.DisplayName, LoginURL: u})
	}
	return out
}

// CallbackURL is the redirect URI to register at the IdP for provider.
func (a *Auth) CallbackURL(provider string) string {
	return a.cfg.BaseURL + "/auth/callback/" + provider
}

// HandleLogin is GET /auth/login/:provider (public).
func (a *Auth) HandleLogin(c *gin.Context) { a.handleLogin(c) }

// HandleCallback is GET /auth/callback/:provider (public).
func (a *Auth) HandleCallback(c *gin.Context) { a.handleCallback(c) }

// HandleLogout is POST /auth/logout (behind the session authenticator, so
// the CSRF token is checked before it runs).
func (a *Auth) HandleLogout(c *gin.Context) { a.handleLogout(c) }

func (a *Auth) fail(c *gin.Context, status int, msg string) {
	if a.ErrorPage != nil {
		a.ErrorPage(c, status, msg)
		c.Abort()
		return
	}
	if wantsJSON(c.Request) {
		c.AbortWithStatusJSON(status, gin.H{"error": msg})
		return
	}
	c.Data(status, "text/plain; charset=utf-8", []byte(msg+"\n"))
	c.Abort()
}

// wantsJSON reports whether the client is a program rather than a browser.
func wantsJSON(r *http.Request) bool {
	return strings.HasPrefix(r.URL.Path, "/api/") ||
		strings.Contains(r.Header.Get("Accept"), "application/json") ||
		strings.HasPrefix(r.Header.Get("Content-Type"), "application/json")
}

// secure reports whether cookies must carry the Secure attribute.
func (a *Auth) secure(r *http.Request) bool {
	return a.cfg.SecureCookies || r.TLS != nil || strings.HasPrefix(a.cfg.BaseURL, "https://")
}

// SetCookie sets (maxAge > 0) or deletes (maxAge < 0) a cookie with the
// platform's one cookie policy: HttpOnly, SameSite=Lax, and Secure
// whenever the platform is reached over https. The web UI's flash cookie
// uses it too.
func (a *Auth) SetCookie(c *gin.Context, name, value, path string, maxAge int) {
	//nolint:gosec // G124: Secure is not constant on purpose: it is set whenever publicURL is https, the request came over TLS or auth.secureCookies is on; over plain http (a local trial) a Secure cookie would never come back
	http.SetCookie(c.Writer, &http.Cookie{
		Name: name, Value: value, Path: path, MaxAge: maxAge,
		HttpOnly: true, SameSite: http.SameSiteLaxMode, Secure: a.secure(c.Request),
	})
}

// BaseURL is the platform's external URL (publicURL), without a trailing
// slash; links in pages start with it.
func (a *Auth) BaseURL() string { return a.cfg.BaseURL }
