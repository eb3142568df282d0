package auth

import (
	"strings"
	"testing"
	"time"
)

func validConfig() Config {
	return Config{
		BaseURL: "https://thinlab.example.com/", CookieSecret: strings.Repeat("s", 32),
		Providers: []ProviderConfig{{Name: "corp", Issuer: "https://idp.example.com", ClientID: "c", ClientSecret: "x"}},
	}
}

func TestConfigValidateFillsDefaults(t *testing.T) {
	c := validConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.BaseURL != "https://thinlab.example.com" || c.SessionTTL != DefaultSessionTTL ||
		c.Providers[0].DisplayName != "corp" || len(c.Providers[0].Scopes) != 2 {
		t.Fatalf("defaults not applied: %+v", c)
	}
}

func TestConfigValidateNamesTheField(t *testing.T) {
	t.Setenv("THINLAB_TEST_EMPTY_SECRET", "")
	cases := map[string]func(*Config){
		"publicURL":                  func(c *Config) { c.BaseURL = "thinlab.example.com" },
		"auth.cookieSecret":          func(c *Config) { c.CookieSecret = "short" },
		"auth.providers[0].name":     func(c *Config) { c.Providers[0].Name = "Bad Name" },
		"auth.providers[0].issuer":   func(c *Config) { c.Providers[0].Issuer = "" },
		"auth.providers[0].clientID": func(c *Config) { c.Providers[0].ClientID = "" },
		"auth.providers[0].clientSecretEnv": func(c *Config) {
			c.Providers[0].ClientSecret, c.Providers[0].ClientSecretEnv = "", "THINLAB_TEST_EMPTY_SECRET"
		},
		"auth.providers[0].groupsClaim": func(c *Config) {
			c.Providers[0].GroupRoles = []GroupRole{{Group: "g", Org: "acme", Role: "admin"}}
		},
		"auth.providers[0].groupRoles[0].role": func(c *Config) {
			c.Providers[0].GroupsClaim = "groups"
			c.Providers[0].GroupRoles = []GroupRole{{Group: "g", Org: "acme", Role: "god"}}
		},
	}
	for field, mutate := range cases {
		c := validConfig()
		mutate(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: error %v does not name the field", field, err)
		}
	}
}

func TestClientSecretFromEnv(t *testing.T) {
	t.Setenv("THINLAB_TEST_SECRET", "from-env")
	c := validConfig()
	c.Providers[0].ClientSecret, c.Providers[0].ClientSecretEnv = "", "THINLAB_TEST_SECRET"
	if err := c.Validate(); err != nil || c.Providers[0].ClientSecret != "from-env" {
		t.Fatalf("secret %q, err %v", c.Providers[0].ClientSecret, err)
	}
}

func TestMapGroupsPicksStrongestRolePerOrg(t *testing.T) {
	p := ProviderConfig{GroupRoles: []GroupRole{
		{Group: "dev", Org: "acme", Role: "member"},
		{Group: "ops", Org: "acme", Role: "admin"},
		{Group: "audit", Org: "bank", Role: "viewer"},
		{Group: "nobody", Org: "zzz", Role: "owner"},
	}}
	got := p.MapGroups([]string{"audit", "dev", "ops"})
	want := []OrgRole{{"acme", "admin"}, {"bank", "viewer"}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("MapGroups = %v, want %v", got, want)
	}
}

func TestSignerRefusesTamperingAndExpiry(t *testing.T) {
	s := newSigner("secret", "login")
	now := time.Unix(1_700_000_000, 0)
	v, err := s.seal(loginState{State: "abc"}, time.Minute, now)
	if err != nil {
		t.Fatal(err)
	}
	var st loginState
	if err := s.open(v, &st, now); err != nil || st.State != "abc" {
		t.Fatalf("open: %v %+v", err, st)
	}
	if err := s.open(v, &st, now.Add(2*time.Minute)); err != errExpired {
		t.Fatalf("expired value: %v", err)
	}
	tampered := "x" + v[1:]
	if err := s.open(tampered, &st, now); err != errBadSignature {
		t.Fatalf("tampered value: %v", err)
	}
	other := newSigner("secret", "flash")
	if err := other.open(v, &st, now); err != errBadSignature {
		t.Fatalf("value of another purpose: %v", err)
	}
}

func TestSafeReturnTo(t *testing.T) {
	for in, want := range map[string]string{
		"/o/acme/tokens?x=1": "/o/acme/tokens?x=1",
		"":                   "/",
		"https://evil.test/": "/",
		"//evil.test/":       "/",
		"/\\evil.test":       "/",
		"o/acme":             "/",
	} {
		if got := safeReturnTo(in); got != want {
			t.Errorf("safeReturnTo(%q) = %q, want %q", in, got, want)
		}
	}
}
