package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "platform.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadConfigEmptyFileGivesDefaults(t *testing.T) {
	cfg, err := LoadConfig(writeConfig(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != DefaultListen || cfg.DataDir != DefaultDataDir || cfg.Database.URL != "" || cfg.Database.OSUser != DefaultEmbeddedOSUser || cfg.ShutdownTimeout != DefaultShutdownTimeout {
		t.Fatalf("defaults wrong: %+v", cfg)
	}
}

func TestLoadConfigFileThenEnv(t *testing.T) {
	p := writeConfig(t, `
listen: 0.0.0.0:9000
publicURL: https://thinlab.example.com
dataDir: /srv/thinlab
database:
  url: postgres://u:p@db/thinlab
trustedProxies: [10.0.0.0/8]
shutdownTimeout: 30s
oidc:
  issuer: https://idp.example.com
  clientID: thinlab
`)
	t.Setenv("THINLAB_PLATFORM_LISTEN", "127.0.0.1:9100")
	t.Setenv("THINLAB_PLATFORM_OIDC_CLIENT_SECRET", "s3cret")
	t.Setenv("THINLAB_PLATFORM_TRUSTED_PROXIES", "10.1.0.0/16, 192.168.0.1")
	t.Setenv("THINLAB_PLATFORM_TUNNEL_REPLICA_ID", "replica-1")
	t.Setenv("THINLAB_PLATFORM_TUNNEL_HEARTBEAT_INTERVAL", "2s")
	cfg, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:9100" {
		t.Errorf("env did not override listen: %s", cfg.Listen)
	}
	if cfg.PublicURL != "https://thinlab.example.com" || cfg.DataDir != "/srv/thinlab" || cfg.Database.URL != "postgres://u:p@db/thinlab" {
		t.Errorf("file values lost: %+v", cfg)
	}
	if cfg.ShutdownTimeout != 30*time.Second || cfg.OIDC.Issuer != "https://idp.example.com" || cfg.OIDC.ClientID != "thinlab" || cfg.OIDC.ClientSecret != "s3cret" {
		t.Errorf("values wrong: %+v", cfg)
	}
	if cfg.Tunnel.ReplicaID != "replica-1" || cfg.Tunnel.HeartbeatInterval != 2*time.Second {
		t.Errorf("tunnel from the environment: %+v", cfg.Tunnel)
	}
	if strings.Join(cfg.TrustedProxies, ",") != "10.1.0.0/16,192.168.0.1" {
		t.Errorf("trustedProxies = %v", cfg.TrustedProxies)
	}
}

func TestLoadConfigErrorsNameTheField(t *testing.T) {
	cases := []struct{ body, env, want string }{
		{"lisen: x\n", "", "field lisen not found"},
		{"listen: nonsense\n", "", "listen"},
		{"dataDir: relative/dir\n", "", "dataDir"},
		{"trustedProxies: [bogus]\n", "", "trustedProxies"},
		{"", "THINLAB_PLATFORM_SHUTDOWN_TIMEOUT=soon", "THINLAB_PLATFORM_SHUTDOWN_TIMEOUT"},
		{"shutdownTimeout: -1s\n", "", "shutdownTimeout"},
		{"tunnel: {heartbeatInterval: 10ms}\n", "", "tunnel.heartbeatInterval"},
		{"tunnel: {replicaID: \"two words\"}\n", "", "tunnel.replicaID"},
		{"", "THINLAB_PLATFORM_TUNNEL_HEARTBEAT_INTERVAL=often", "THINLAB_PLATFORM_TUNNEL_HEARTBEAT_INTERVAL"},
	}
	for _, tc := range cases {
		if tc.env != "" {
			k, v, _ := strings.Cut(tc.env, "=")
			t.Setenv(k, v)
		}
		_, err := LoadConfig(writeConfig(t, tc.body))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("config %q env %q: error %v, want it to mention %q", tc.body, tc.env, err, tc.want)
		}
		if tc.env != "" {
			k, _, _ := strings.Cut(tc.env, "=")
			_ = os.Unsetenv(k) // cannot fail for a valid name; t.Setenv restores it
		}
	}
}

// TestLoadConfigAuthSection reads sign-in from the auth: section of the one
// config file, with the environment over it.
func TestLoadConfigAuthSection(t *testing.T) {
	p := writeConfig(t, `
publicURL: https://thinlab.example.com
auth:
  cookieSecret: 0123456789abcdef0123456789abcdef
  sessionTTL: 8h
  providers:
    - name: corp
      displayName: Corp SSO
      issuer: https://idp.example.com
      clientID: thinlab
      clientSecretEnv: CORP_SECRET
      scopes: [email, profile, groups]
      groupsClaim: groups
      groupRoles:
        - {group: dba, org: acme, role: admin}
`)
	t.Setenv("CORP_SECRET", "s3cret")
	t.Setenv("THINLAB_PLATFORM_AUTH_SESSION_TTL", "2h")
	t.Setenv("THINLAB_PLATFORM_AUTH_SECURE_COOKIES", "true")
	cfg, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	a := cfg.Auth
	a.BaseURL = cfg.PublicURL
	if err := a.Validate(); err != nil {
		t.Fatalf("the auth section does not validate: %v", err)
	}
	if a.SessionTTL != 2*time.Hour || !a.SecureCookies {
		t.Errorf("env did not override auth: sessionTTL %s (want 2h), secureCookies %v (want true)", a.SessionTTL, a.SecureCookies)
	}
	if len(a.Providers) != 1 || a.Providers[0].ClientSecret != "s3cret" || a.Providers[0].GroupRoles[0].Role != "admin" {
		t.Errorf("providers = %+v, want corp with the secret from CORP_SECRET and the dba->admin mapping", a.Providers)
	}

	t.Run("unknown key", func(t *testing.T) {
		_, err := LoadConfig(writeConfig(t, "auth:\n  typo: 1\n"))
		if err == nil || !strings.Contains(err.Error(), "typo") {
			t.Fatalf("error = %v, want one naming the unknown key typo", err)
		}
	})
	t.Run("baseURL is publicURL", func(t *testing.T) {
		_, err := LoadConfig(writeConfig(t, "auth:\n  baseURL: https://x.example.com\n"))
		if err == nil || !strings.Contains(err.Error(), "baseURL") {
			t.Fatalf("error = %v, want auth.baseURL refused (it is publicURL)", err)
		}
	})
}

// TestLoadConfigRefusesMovedVariables: the old second file and cookie
// secret variable fail with where their settings went, instead of being
// ignored.
func TestLoadConfigRefusesMovedVariables(t *testing.T) {
	for name, want := range map[string]string{
		"THINLAB_PLATFORM_AUTH_CONFIG":   "under auth:",
		"THINLAB_PLATFORM_COOKIE_SECRET": "THINLAB_PLATFORM_AUTH_COOKIE_SECRET",
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv(name, "/etc/thinlab/auth.yaml")
			_, err := LoadConfig("")
			if err == nil || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), want) {
				t.Fatalf("error = %v, want one naming %s and %q", err, name, want)
			}
		})
	}
}

func TestRelayConfigErrorsNameTheKey(t *testing.T) {
	for _, tc := range []struct {
		tun  TunnelConfig
		want string
	}{
		{TunnelConfig{RelayURL: "10.0.0.5:8443", RelaySecret: strings.Repeat("s", 32)}, "tunnel.relayURL"},
		{TunnelConfig{RelayURL: "https://10.0.0.5:8443", RelaySecret: "short"}, "tunnel.relaySecret"},
		{TunnelConfig{RelaySecret: strings.Repeat("s", 32)}, "tunnel.relayURL"},
		{TunnelConfig{RelayURL: "https://10.0.0.5:8443", RelaySecret: strings.Repeat("s", 32), ReplicaID: "other"}, "tunnel.replicaID"},
	} {
		cfg := DefaultConfig()
		cfg.Database.URL = "postgres://x"
		cfg.Tunnel = tc.tun
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want an error naming %s", tc.tun, err, tc.want)
		}
	}
	cfg := DefaultConfig()
	cfg.Database.URL = "postgres://x"
	cfg.Tunnel = TunnelConfig{RelayURL: "https://10.0.0.5:8443", RelaySecret: strings.Repeat("s", 32)}
	if err := cfg.Validate(); err != nil {
		t.Errorf("a valid relay configuration: %v", err)
	}
}

// TestLoadNotificationsConfig: the notifications: section from the file,
// the SMTP password from the environment, and a refused setting named.
func TestLoadNotificationsConfig(t *testing.T) {
	p := writeConfig(t, `
notifications:
  smtp:
    host: smtp.example.com
    username: thinlab
    from: thinlab@example.com
  webhooks:
    allowAddresses: [127.0.0.1/32]
  foldWindow: 5m
  disconnectGrace: 30s
`)
	t.Setenv("THINLAB_PLATFORM_NOTIFICATIONS_SMTP_PASSWORD", "s3cret")
	t.Setenv("THINLAB_PLATFORM_NOTIFICATIONS_SMTP_PORT", "2525")
	cfg, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	n := cfg.Notifications
	if n.SMTP.Host != "smtp.example.com" || n.SMTP.Password != "s3cret" || n.SMTP.Port != 2525 || n.FoldWindow != 5*time.Minute ||
		n.DisconnectGrace != 30*time.Second || len(n.Webhooks.AllowAddresses) != 1 {
		t.Fatalf("notifications config %+v", n)
	}
	t.Setenv("THINLAB_PLATFORM_NOTIFICATIONS_SMTP_PASSWORD", "")
	if _, err := LoadConfig(p); err == nil || !strings.Contains(err.Error(), "notifications.smtp.username and password") {
		t.Fatalf("username without password: %v, want an error naming both keys", err)
	}
	if _, err := LoadConfig(writeConfig(t, "notifications:\n  smtp:\n    hots: x\n")); err == nil || !strings.Contains(err.Error(), "hots") {
		t.Fatalf("a typo under notifications: %v, want it named", err)
	}
}
