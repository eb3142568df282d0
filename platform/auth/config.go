// Package auth signs people in to the platform: OpenID Connect login
// (authorization code flow with PKCE) against one or more identity
// providers, server-side sessions in an HttpOnly cookie, and the CSRF token
// every form of a session must carry.
package auth

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/platform/store"
)

// Config is the sign-in part of the platform configuration: the auth:
// section of the platform's config file (platform/server.Config).
type Config struct {
	// BaseURL is the platform's external URL (https://thinlab.example.com):
	// the platform's publicURL, filled in by the server, not a key of its
	// own. Callback URLs are BaseURL + "/auth/callback/" + provider name.
	BaseURL string `yaml:"-"`
	// CookieSecret signs the short-lived login cookie (state, nonce, PKCE
	// verifier). Every replica needs the same value; at least 32 bytes.
	CookieSecret string `yaml:"cookieSecret"`
	// SecureCookies forces the Secure attribute; it is also set when
	// BaseURL is https or the request came over TLS.
	SecureCookies bool `yaml:"secureCookies"`
	// SessionTTL is how long a session lasts after sign-in (default 12h).
	SessionTTL time.Duration `yaml:"sessionTTL"`
	// Providers are the identity providers offered on the sign-in page.
	Providers []ProviderConfig `yaml:"providers"`
}

// ProviderConfig is one OIDC identity provider.
type ProviderConfig struct {
	// Name is the URL-safe identifier used in /auth/login/<name>.
	Name string `yaml:"name"`
	// DisplayName is shown on the sign-in button (defaults to Name).
	DisplayName string `yaml:"displayName"`
	Issuer      string `yaml:"issuer"`
	ClientID    string `yaml:"clientID"`
	// ClientSecret or ClientSecretEnv (the name of an environment variable
	// holding it); the env form keeps secrets out of config files.
	ClientSecret    string `yaml:"clientSecret"`
	ClientSecretEnv string `yaml:"clientSecretEnv"`
	// Scopes requested besides "openid" (default: email profile).
	Scopes []string `yaml:"scopes"`
	// GroupsClaim is the ID token claim that lists the user's groups
	// (e.g. "groups"); empty disables group mapping.
	GroupsClaim string `yaml:"groupsClaim"`
	// GroupRoles grant organization roles to members of IdP groups at
	// every sign-in.
	GroupRoles []GroupRole `yaml:"groupRoles"`
	// EmailRoles grant organization roles to people by their verified
	// email address at every sign-in: the first owners of a fresh
	// install, or an IdP without groups.
	EmailRoles []EmailRole `yaml:"emailRoles"`
	// RequireEmailVerified (default true) trusts the email claim for
	// invitations only when the ID token says email_verified: true. Set it
	// to false only for an IdP that never sends the claim and verifies
	// every address itself: anyone who can choose their address there can
	// then accept invitations sent to that address.
	RequireEmailVerified *bool `yaml:"requireEmailVerified"`
}

// EmailVerificationRequired reports whether email_verified must be true
// (the default).
func (p ProviderConfig) EmailVerificationRequired() bool {
	return p.RequireEmailVerified == nil || *p.RequireEmailVerified
}

// EmailRole maps a person's email address (compared case-insensitively,
// only when the provider vouches for it: see RequireEmailVerified) to a
// role in an organization (by slug), created when it does not exist yet.
type EmailRole struct {
	Email string `yaml:"email"`
	Org   string `yaml:"org"`
	Role  string `yaml:"role"`
}

// GroupRole maps an IdP group to a role in an organization (by slug). The
// organization is created when it does not exist yet.
type GroupRole struct {
	Group string `yaml:"group"`
	Org   string `yaml:"org"`
	Role  string `yaml:"role"`
}

var providerNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)

// DefaultSessionTTL applies when Config.SessionTTL is zero.
const DefaultSessionTTL = 12 * time.Hour

// Validate checks the configuration and fills defaults. Errors name the
// field and the fix.
func (c *Config) Validate() error {
	var errs []error
	u, err := url.Parse(c.BaseURL)
	if c.BaseURL == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("publicURL %q: set the platform's external URL, e.g. https://thinlab.example.com", c.BaseURL))
	}
	c.BaseURL = strings.TrimRight(c.BaseURL, "/")
	if len(c.CookieSecret) < 32 {
		errs = append(errs, errors.New("auth.cookieSecret: set at least 32 random bytes (the same on every replica), e.g. `openssl rand -hex 32`"))
	}
	if c.SessionTTL == 0 {
		c.SessionTTL = DefaultSessionTTL
	}
	if c.SessionTTL < time.Minute {
		errs = append(errs, fmt.Errorf("auth.sessionTTL %s: use at least 1m", c.SessionTTL))
	}
	seen := map[string]bool{}
	for i := range c.Providers {
		p := &c.Providers[i]
		field := fmt.Sprintf("auth.providers[%d]", i)
		if !providerNameRE.MatchString(p.Name) {
			errs = append(errs, fmt.Errorf("%s.name %q: use 1-32 lowercase letters, digits, - or _", field, p.Name))
		}
		if seen[p.Name] {
			errs = append(errs, fmt.Errorf("%s.name %q: used twice; provider names must be unique", field, p.Name))
		}
		seen[p.Name] = true
		if p.DisplayName == "" {
			p.DisplayName = p.Name
		}
		if iu, err := url.Parse(p.Issuer); p.Issuer == "" || err != nil || iu.Host == "" {
			errs = append(errs, fmt.Errorf("%s.issuer %q: set the provider's issuer URL (its /.well-known/openid-configuration must answer)", field, p.Issuer))
		}
		if p.ClientID == "" {
			errs = append(errs, fmt.Errorf("%s.clientID: set the OAuth client ID registered at the provider", field))
		}
		if p.ClientSecret == "" && p.ClientSecretEnv != "" {
			p.ClientSecret = os.Getenv(p.ClientSecretEnv)
			if p.ClientSecret == "" {
				errs = append(errs, fmt.Errorf("%s.clientSecretEnv: environment variable %s is empty or unset", field, p.ClientSecretEnv))
			}
		}
		if p.ClientSecret == "" && p.ClientSecretEnv == "" {
			errs = append(errs, fmt.Errorf("%s.clientSecret: set clientSecret or clientSecretEnv", field))
		}
		if len(p.Scopes) == 0 {
			p.Scopes = []string{"email", "profile"}
		}
		if len(p.GroupRoles) > 0 && p.GroupsClaim == "" {
			errs = append(errs, fmt.Errorf("%s.groupsClaim: set the ID token claim holding groups (e.g. groups) to use groupRoles", field))
		}
		for j, g := range p.GroupRoles {
			gf := fmt.Sprintf("%s.groupRoles[%d]", field, j)
			if g.Group == "" {
				errs = append(errs, fmt.Errorf("%s.group: set the IdP group name", gf))
			}
			if store.ValidSlug(g.Org) != nil {
				errs = append(errs, fmt.Errorf("%s.org %q: use an organization slug (2-63 lowercase letters, digits or -)", gf, g.Org))
			}
			if roleRank(g.Role) < 0 {
				errs = append(errs, fmt.Errorf("%s.role %q: use one of %s", gf, g.Role, roleNames()))
			}
		}
		for j, e := range p.EmailRoles {
			ef := fmt.Sprintf("%s.emailRoles[%d]", field, j)
			if !strings.Contains(e.Email, "@") {
				errs = append(errs, fmt.Errorf("%s.email %q: set the person's email address as the IdP reports it", ef, e.Email))
			}
			if store.ValidSlug(e.Org) != nil {
				errs = append(errs, fmt.Errorf("%s.org %q: use an organization slug (2-63 lowercase letters, digits or -)", ef, e.Org))
			}
			if roleRank(e.Role) < 0 {
				errs = append(errs, fmt.Errorf("%s.role %q: use one of %s", ef, e.Role, roleNames()))
			}
		}
	}
	return errors.Join(errs...)
}

// Provider returns the provider configuration by name.
func (c *Config) Provider(name string) (ProviderConfig, bool) {
	for _, p := range c.Providers {
		if p.Name == name {
			return p, true
		}
	}
	return ProviderConfig{}, false
}

// roleRank orders roles as rbac does: 0 is the strongest; -1 means
// unknown (group mappings name roles exactly, without ParseRole's folding).
func roleRank(role string) int { return slices.Index(rbac.Roles, rbac.Role(role)) }

// roleNames lists the roles a group mapping may grant, strongest first.
func roleNames() string {
	names := make([]string, len(rbac.Roles))
	for i, r := range rbac.Roles {
		names[i] = string(r)
	}
	return strings.Join(names, ", ")
}

// OrgRole is a role in an organization (by slug).
type OrgRole struct {
	Org  string
	Role string
}

// MapGroups returns the organization roles that groups grant under p: the
// strongest role per organization, in configuration order.
func (p ProviderConfig) MapGroups(groups []string) []OrgRole {
	return p.MapIdentity(groups, "", false)
}

// MapIdentity returns the organization roles that groups and a verified
// email grant under p (groupRoles, then emailRoles): the strongest role per
// organization, in configuration order. An email counts only when
// verified, or when p does not require verification.
func (p ProviderConfig) MapIdentity(groups []string, email string, emailVerified bool) []OrgRole {
	have := map[string]bool{}
	for _, g := range groups {
		have[g] = true
	}
	best := map[string]string{}
	var order []string
	grant := func(org, role string) {
		cur, ok := best[org]
		if !ok {
			order = append(order, org)
		}
		if !ok || roleRank(role) < roleRank(cur) {
			best[org] = role
		}
	}
	for _, gr := range p.GroupRoles {
		if have[gr.Group] {
			grant(gr.Org, gr.Role)
		}
	}
	if email != "" && (emailVerified || !p.EmailVerificationRequired()) {
		for _, er := range p.EmailRoles {
			if strings.EqualFold(er.Email, email) {
				grant(er.Org, er.Role)
			}
		}
	}
	out := make([]OrgRole, 0, len(order))
	for _, org := range order {
		out = append(out, OrgRole{Org: org, Role: best[org]})
	}
	return out
}
