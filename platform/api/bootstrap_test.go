package api_test

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/thinlab/thinlab/platform/platformtest"
	"github.com/thinlab/thinlab/platform/server"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

// A scripted install (make demo) gets its organization and a first
// enrollment token at start, in a file only its owner reads; an agent
// enrolls with it into that organization. An existing file is kept as is.
func TestBootstrapOrganizationAndEnrollmentToken(t *testing.T) {
	file := filepath.Join(t.TempDir(), "enroll-token")
	env := platformtest.New(t, platformtest.WithConfig(func(c *server.Config) {
		c.Bootstrap = server.Bootstrap{Organization: "demo", EnrollmentTokenFile: file}
	}))
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode %v, want 0600", fi.Mode().Perm())
	}
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	org, err := env.Store.OrganizationByRef(t.Context(), "demo")
	if err != nil {
		t.Fatalf("bootstrap organization: %v", err)
	}
	for _, name := range []string{"host-1", "host-2"} { // multi-use
		status, enrolled, body := enrollAgent(t, env, strings.TrimSpace(string(raw)), tunnel.AgentFacts{Name: name})
		if status != http.StatusCreated || enrolled.OrganizationID != org.ID {
			t.Fatalf("enroll %s with the bootstrap token: %d %+v %+v", name, status, enrolled, body)
		}
	}
	if acts := env.QueryStrings("SELECT action FROM audit_events WHERE org_id = $1 AND action = 'enrollment_token.create'", org.ID); len(acts) != 1 {
		t.Fatalf("audit of the bootstrap token: %v", acts)
	}

	kept := filepath.Join(t.TempDir(), "kept")
	if err := os.WriteFile(kept, []byte("mine\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	env2 := platformtest.New(t, platformtest.WithConfig(func(c *server.Config) {
		c.Bootstrap = server.Bootstrap{Organization: "demo", EnrollmentTokenFile: kept}
	}))
	if got, _ := os.ReadFile(kept); string(got) != "mine\n" {
		t.Fatalf("an existing token file was overwritten: %q", got)
	}
	if n := env2.QueryStrings("SELECT id FROM enrollment_tokens"); len(n) != 0 {
		t.Fatalf("a token was made although the file existed: %v", n)
	}
}

func TestBootstrapConfigErrorsNameTheField(t *testing.T) {
	cfg := server.DefaultConfig()
	cfg.Database.URL = "postgres://x"
	for _, tc := range []struct {
		b    server.Bootstrap
		want string
	}{
		{server.Bootstrap{Organization: "Bad Slug"}, "bootstrap.organization"},
		{server.Bootstrap{EnrollmentTokenFile: "/tmp/x"}, "bootstrap.organization"},
		{server.Bootstrap{Organization: "demo", EnrollmentTokenFile: "relative"}, "bootstrap.enrollmentTokenFile"},
	} {
		cfg.Bootstrap = tc.b
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want an error naming %s", tc.b, err, tc.want)
		}
	}
}
