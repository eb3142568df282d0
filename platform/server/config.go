package server

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/thinlab/thinlab/platform/auth"
	"github.com/thinlab/thinlab/platform/billing"
	"github.com/thinlab/thinlab/platform/notify"
	"github.com/thinlab/thinlab/platform/ratelimit"
	"github.com/thinlab/thinlab/platform/store"
)

// Config is the platform server's configuration: a YAML file, then
// THINLAB_PLATFORM_* environment variables over it. docs/platform-config.md
// lists every key.
type Config struct {
	// Listen is the HTTP address (env THINLAB_PLATFORM_LISTEN).
	Listen string `yaml:"listen"`
	// PublicURL is how browsers and agents reach the platform, used in
	// links and OIDC redirects (env THINLAB_PLATFORM_PUBLIC_URL).
	PublicURL string `yaml:"publicURL"`
	// DataDir holds the embedded database (env THINLAB_PLATFORM_DATA_DIR).
	DataDir  string         `yaml:"dataDir"`
	Database DatabaseConfig `yaml:"database"`
	// TrustedProxies are the proxies whose X-Forwarded-For is believed
	// for the client IP in audit events (env THINLAB_PLATFORM_TRUSTED_PROXIES,
	// comma-separated).
	TrustedProxies []string `yaml:"trustedProxies"`
	// ShutdownTimeout bounds a graceful stop (env THINLAB_PLATFORM_SHUTDOWN_TIMEOUT).
	ShutdownTimeout time.Duration `yaml:"shutdownTimeout"`
	// OIDC is the short form of one identity provider, named "sso"; used
	// when auth.providers is empty.
	OIDC OIDCConfig `yaml:"oidc"`
	// Auth is sign-in: identity providers, group mapping, cookies and
	// sessions (env THINLAB_PLATFORM_AUTH_COOKIE_SECRET,
	// THINLAB_PLATFORM_AUTH_SESSION_TTL, THINLAB_PLATFORM_AUTH_SECURE_COOKIES).
	// Its base URL is publicURL.
	Auth auth.Config `yaml:"auth"`
	// RateLimits bound sign-ins, failed bearer authentications and
	// invitation accepts. Counted in memory per replica: with N replicas
	// a client gets up to N times the limit.
	RateLimits RateLimits `yaml:"rateLimits"`
	// Bootstrap prepares a fresh install for scripts, without a browser.
	Bootstrap Bootstrap `yaml:"bootstrap"`
	// Tunnel is the agent hub: where agents' tunnels end on this replica.
	Tunnel TunnelConfig `yaml:"tunnel"`
	// Usage configures usage reports (docs/billing.md).
	Usage UsageConfig `yaml:"usage"`
	// Billing is usage-based billing through Stripe (docs/billing.md);
	// off unless a Stripe secret key is set.
	Billing billing.Config `yaml:"billing"`
	// Notifications: the SMTP server, where webhooks may go, and the
	// delivery workers (env THINLAB_PLATFORM_NOTIFICATIONS_SMTP_HOST,
	// _SMTP_PORT, _SMTP_USERNAME, _SMTP_PASSWORD, _SMTP_FROM).
	Notifications notify.Config `yaml:"notifications"`
}

// UsageConfig configures usage reports.
type UsageConfig struct {
	// CopyRateMiBPerSecond is the rate a full copy of a clone's data is
	// assumed to be made at, for the savings estimate (default 600, what
	// `cp -a` reached on the project's machines).
	CopyRateMiBPerSecond float64 `yaml:"copyRateMiBPerSecond"`
}

// Bootstrap makes, at start, what a scripted install (make demo, a VM
// image, docker compose) needs before anybody has signed in.
type Bootstrap struct {
	// Organization (a slug) is created at start when missing, reserved
	// like the organizations of auth emailRoles and groupRoles.
	Organization string `yaml:"organization"`
	// EnrollmentTokenFile, when set and the file does not exist, receives
	// (mode 0600) a new multi-use enrollment token of Organization valid
	// for 24 hours, for the first agents: `thinlab agent run --platform
	// URL --enroll-token "$(cat FILE)"`. Delete the file to get a new one
	// at the next start; revoke tokens on the Agents page.
	EnrollmentTokenFile string `yaml:"enrollmentTokenFile"`
}

// TunnelConfig configures this replica's end of the agents' tunnels.
type TunnelConfig struct {
	// ReplicaID names this replica in the platform database (which replica
	// holds which agent's tunnel) (env THINLAB_PLATFORM_TUNNEL_REPLICA_ID).
	// Empty: the host name and a random suffix, new at every start. Set a
	// stable one per replica so that a restarted replica clears what its
	// previous run left marked as connected.
	ReplicaID string `yaml:"replicaID"`
	// HeartbeatInterval is how often the replica pings each agent; an agent
	// that misses a ping for as long again is disconnected (env
	// THINLAB_PLATFORM_TUNNEL_HEARTBEAT_INTERVAL). Default 5s.
	HeartbeatInterval time.Duration `yaml:"heartbeatInterval"`
	// RelayURL, with several replicas, is this replica's base URL as the
	// other replicas reach it (env THINLAB_PLATFORM_TUNNEL_RELAY_URL); it
	// is then also the replica ID. A request for an agent whose tunnel
	// another replica holds is relayed there (docs/architecture.md).
	RelayURL string `yaml:"relayURL"`
	// RelaySecret signs relays between replicas, the same on every replica,
	// at least 32 characters (env THINLAB_PLATFORM_TUNNEL_RELAY_SECRET:
	// keep it out of the file).
	RelaySecret string `yaml:"relaySecret"`
	// RelayCAFile verifies the other replicas' https certificates (system
	// roots when empty).
	RelayCAFile string `yaml:"relayCAFile"`
}

// RateLimits are token buckets per key; perMinute 0 disables one.
type RateLimits struct {
	// SignIn: /auth/login and /auth/callback per client IP.
	SignIn ratelimit.Limit `yaml:"signIn"`
	// BearerFailures: failed "Authorization: Bearer" requests per client
	// IP; once spent, every bearer request from that IP gets 429.
	BearerFailures ratelimit.Limit `yaml:"bearerFailures"`
	// InvitationAccept: accepts per user and per client IP.
	InvitationAccept ratelimit.Limit `yaml:"invitationAccept"`
	// EnrollFailures: refused agent enrollments per client IP; once
	// spent, every enrollment from that IP gets 429 (successful ones do
	// not count, so a fleet behind one NAT address enrolls freely).
	EnrollFailures ratelimit.Limit `yaml:"enrollFailures"`
}

// DatabaseConfig chooses the platform database.
type DatabaseConfig struct {
	// URL of an external PostgreSQL (env THINLAB_PLATFORM_DATABASE_URL).
	// Empty: an embedded cluster under DataDir/pg, started and stopped with
	// the server.
	URL string `yaml:"url"`
	// MigrationURL connects as the role that owns the schema and runs the
	// migrations (env THINLAB_PLATFORM_DATABASE_MIGRATION_URL); URL is then
	// the runtime role, which gets only the grants it needs (no UPDATE,
	// DELETE or TRUNCATE on the audit log, no ownership). Empty: URL does
	// both, and the audit log is not tamper-proof against the application
	// role (a warning is logged).
	MigrationURL string `yaml:"migrationURL"`
	// PostgresBinDir overrides where initdb/postgres are found for the
	// embedded cluster (env THINLAB_PLATFORM_DATABASE_POSTGRES_BIN_DIR).
	PostgresBinDir string `yaml:"postgresBinDir"`
	// OSUser runs the embedded cluster (env THINLAB_PLATFORM_DATABASE_OS_USER).
	OSUser string `yaml:"osUser"`
}

// OIDCConfig is single sign-on; platform/auth reads it.
type OIDCConfig struct {
	Issuer       string `yaml:"issuer"`       // env THINLAB_PLATFORM_OIDC_ISSUER
	ClientID     string `yaml:"clientID"`     // env THINLAB_PLATFORM_OIDC_CLIENT_ID
	ClientSecret string `yaml:"clientSecret"` // env THINLAB_PLATFORM_OIDC_CLIENT_SECRET
}

// Defaults.
const (
	DefaultListen          = "127.0.0.1:8080"
	DefaultDataDir         = "/var/lib/thinlab/platform"
	DefaultShutdownTimeout = 15 * time.Second
)

// DefaultConfig returns the configuration an empty file gives.
func DefaultConfig() Config {
	return Config{
		Listen:          DefaultListen,
		DataDir:         DefaultDataDir,
		Database:        DatabaseConfig{OSUser: DefaultEmbeddedOSUser},
		ShutdownTimeout: DefaultShutdownTimeout,
		RateLimits: RateLimits{
			SignIn:           ratelimit.Limit{PerMinute: 30, Burst: 20},
			BearerFailures:   ratelimit.Limit{PerMinute: 10, Burst: 20},
			InvitationAccept: ratelimit.Limit{PerMinute: 10, Burst: 10},
			EnrollFailures:   ratelimit.Limit{PerMinute: 10, Burst: 20},
		},
	}
}

// LoadConfig reads path (may be "" for none), applies the environment and
// validates. Unknown YAML keys are errors, so a typo does not pass silently.
func LoadConfig(path string) (Config, error) {
	cfg := DefaultConfig()
	if path != "" {
		raw, err := os.ReadFile(path) //nolint:gosec // G304: the operator names the config file (--config or THINLAB_PLATFORM_CONFIG)
		if err != nil {
			return cfg, fmt.Errorf("read platform config: %w", err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(raw))
		dec.KnownFields(true)
		if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) /* an empty file means all defaults */ {
			return cfg, fmt.Errorf("platform config %s: %w", path, err)
		}
	}
	if err := cfg.applyEnv(os.LookupEnv); err != nil {
		return cfg, err
	}
	return cfg, cfg.Validate()
}

// EnvPrefix starts every environment variable of the platform.
const EnvPrefix = "THINLAB_PLATFORM_"

// movedEnv are variables that were replaced, with where their setting went.
var movedEnv = map[string]string{
	EnvPrefix + "AUTH_CONFIG":   "move the keys of that file (except baseURL, which is publicURL) under auth: in the platform config file (see docs/platform-config.md)",
	EnvPrefix + "COOKIE_SECRET": "set " + EnvPrefix + "AUTH_COOKIE_SECRET (or auth.cookieSecret in the platform config) instead",
}

// applyEnv overlays THINLAB_PLATFORM_* variables.
func (c *Config) applyEnv(lookup func(string) (string, bool)) error {
	str := func(key string, dst *string) {
		if v, ok := lookup(EnvPrefix + key); ok {
			*dst = v
		}
	}
	str("LISTEN", &c.Listen)
	str("PUBLIC_URL", &c.PublicURL)
	str("DATA_DIR", &c.DataDir)
	str("DATABASE_URL", &c.Database.URL)
	str("DATABASE_MIGRATION_URL", &c.Database.MigrationURL)
	str("DATABASE_POSTGRES_BIN_DIR", &c.Database.PostgresBinDir)
	str("DATABASE_OS_USER", &c.Database.OSUser)
	str("TUNNEL_REPLICA_ID", &c.Tunnel.ReplicaID)
	str("TUNNEL_RELAY_URL", &c.Tunnel.RelayURL)
	str("TUNNEL_RELAY_SECRET", &c.Tunnel.RelaySecret)
	str("TUNNEL_RELAY_CA_FILE", &c.Tunnel.RelayCAFile)
	if v, ok := lookup(EnvPrefix + "TUNNEL_HEARTBEAT_INTERVAL"); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("%sTUNNEL_HEARTBEAT_INTERVAL=%q: use a duration such as 5s", EnvPrefix, v)
		}
		c.Tunnel.HeartbeatInterval = d
	}
	str("BILLING_SECRET_KEY", &c.Billing.SecretKey)
	str("BILLING_WEBHOOK_SECRET", &c.Billing.WebhookSecret)
	if v, ok := lookup(EnvPrefix + "BILLING_ENABLED"); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%sBILLING_ENABLED=%q: use true or false", EnvPrefix, v)
		}
		c.Billing.Enabled = &b
	}
	str("NOTIFICATIONS_SMTP_HOST", &c.Notifications.SMTP.Host)
	str("NOTIFICATIONS_SMTP_USERNAME", &c.Notifications.SMTP.Username)
	str("NOTIFICATIONS_SMTP_PASSWORD", &c.Notifications.SMTP.Password)
	str("NOTIFICATIONS_SMTP_FROM", &c.Notifications.SMTP.From)
	if v, ok := lookup(EnvPrefix + "NOTIFICATIONS_SMTP_PORT"); ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("%sNOTIFICATIONS_SMTP_PORT=%q: use a port number such as 587", EnvPrefix, v)
		}
		c.Notifications.SMTP.Port = n
	}
	str("OIDC_ISSUER", &c.OIDC.Issuer)
	str("OIDC_CLIENT_ID", &c.OIDC.ClientID)
	str("OIDC_CLIENT_SECRET", &c.OIDC.ClientSecret)
	if v, ok := lookup(EnvPrefix + "TRUSTED_PROXIES"); ok {
		c.TrustedProxies = nil
		for p := range strings.SplitSeq(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				c.TrustedProxies = append(c.TrustedProxies, p)
			}
		}
	}
	str("AUTH_COOKIE_SECRET", &c.Auth.CookieSecret)
	if v, ok := lookup(EnvPrefix + "AUTH_SESSION_TTL"); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("%sAUTH_SESSION_TTL=%q: use a duration such as 8h", EnvPrefix, v)
		}
		c.Auth.SessionTTL = d
	}
	if v, ok := lookup(EnvPrefix + "AUTH_SECURE_COOKIES"); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%sAUTH_SECURE_COOKIES=%q: use true or false", EnvPrefix, v)
		}
		c.Auth.SecureCookies = b
	}
	// The sign-in settings had a file and a secret variable of their own;
	// refuse them rather than silently ignore a deployment's settings.
	for old, now := range movedEnv {
		if _, ok := lookup(old); ok {
			return fmt.Errorf("%s is no longer read: %s", old, now)
		}
	}
	if v, ok := lookup(EnvPrefix + "SHUTDOWN_TIMEOUT"); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("%sSHUTDOWN_TIMEOUT=%q: use a duration such as 15s", EnvPrefix, v)
		}
		c.ShutdownTimeout = d
	}
	return nil
}

// Validate checks the configuration and names the field to fix.
func (c *Config) Validate() error {
	if _, port, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("listen %q: use host:port, such as %s", c.Listen, DefaultListen)
	} else if _, err := strconv.Atoi(port); err != nil {
		return fmt.Errorf("listen %q: the port must be a number", c.Listen)
	}
	if c.Database.MigrationURL != "" && c.Database.URL == "" {
		return errors.New("database.migrationURL is set without database.url: set url to the runtime role's connection (the embedded database sets up both roles itself)")
	}
	if c.Database.URL == "" {
		if c.DataDir == "" {
			return errors.New("dataDir is empty: the embedded database needs a directory (or set database.url)")
		}
		if !filepath.IsAbs(c.DataDir) {
			return fmt.Errorf("dataDir %q: use an absolute path", c.DataDir)
		}
		if c.Database.OSUser == "" {
			return errors.New("database.osUser is empty: name the OS user that runs the embedded PostgreSQL (default thinlab-platform, created when missing; not the shared postgres user)")
		}
	}
	if c.Tunnel.HeartbeatInterval < 0 || (c.Tunnel.HeartbeatInterval > 0 && c.Tunnel.HeartbeatInterval < 100*time.Millisecond) {
		return fmt.Errorf("tunnel.heartbeatInterval %s: use at least 100ms (or leave it unset for 5s)", c.Tunnel.HeartbeatInterval)
	}
	if len(c.Tunnel.ReplicaID) > 100 || strings.ContainsFunc(c.Tunnel.ReplicaID, func(r rune) bool { return r < 0x21 || r > 0x7e }) {
		return fmt.Errorf("tunnel.replicaID %q: use at most 100 printable ASCII characters without spaces", c.Tunnel.ReplicaID)
	}
	if c.ShutdownTimeout <= 0 {
		return fmt.Errorf("shutdownTimeout %s: must be positive", c.ShutdownTimeout)
	}
	for name, l := range map[string]ratelimit.Limit{"signIn": c.RateLimits.SignIn, "bearerFailures": c.RateLimits.BearerFailures, "invitationAccept": c.RateLimits.InvitationAccept, "enrollFailures": c.RateLimits.EnrollFailures} {
		if l.PerMinute < 0 || l.Burst < 0 || (l.PerMinute > 0 && l.Burst == 0) {
			return fmt.Errorf("rateLimits.%s: perMinute and burst must be positive (perMinute: 0 disables the limit)", name)
		}
	}
	if t := c.Tunnel; t.RelayURL != "" || t.RelaySecret != "" {
		if u, err := url.Parse(t.RelayURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("tunnel.relayURL %q: set this replica's base URL as the other replicas reach it, such as https://10.0.0.5:8443", t.RelayURL)
		}
		if len(t.RelayURL) > 100 {
			return fmt.Errorf("tunnel.relayURL %q: use at most 100 characters (it is also the replica's ID)", t.RelayURL)
		}
		if len(t.RelaySecret) < 32 {
			return fmt.Errorf("tunnel.relaySecret: set a secret of at least 32 characters, the same on every replica (env %sTUNNEL_RELAY_SECRET)", EnvPrefix)
		}
		if t.ReplicaID != "" && t.ReplicaID != t.RelayURL {
			return errors.New("tunnel.replicaID: leave it empty with tunnel.relayURL (the relay URL names the replica)")
		}
	}
	if b := c.Bootstrap; b.Organization != "" || b.EnrollmentTokenFile != "" {
		if store.ValidSlug(b.Organization) != nil {
			return fmt.Errorf("bootstrap.organization %q: use an organization slug (2-63 lowercase letters, digits or -)", b.Organization)
		}
		if b.EnrollmentTokenFile != "" && !filepath.IsAbs(b.EnrollmentTokenFile) {
			return fmt.Errorf("bootstrap.enrollmentTokenFile %q: use an absolute path", b.EnrollmentTokenFile)
		}
	}
	if c.Usage.CopyRateMiBPerSecond < 0 {
		return fmt.Errorf("usage.copyRateMiBPerSecond %g: use a positive rate in MiB/s (or leave it unset for 600)", c.Usage.CopyRateMiBPerSecond)
	}
	if err := c.Billing.Validate(); err != nil {
		return err
	}
	if err := c.Notifications.Validate(); err != nil {
		return err
	}
	for _, p := range c.TrustedProxies {
		if net.ParseIP(p) == nil {
			if _, _, err := net.ParseCIDR(p); err != nil {
				return fmt.Errorf("trustedProxies: %q is neither an IP nor a CIDR", p)
			}
		}
	}
	return nil
}
