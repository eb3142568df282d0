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
			os.Unsetenv(k)
		}
	}
}
