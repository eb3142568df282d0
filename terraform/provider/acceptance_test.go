package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/thinlab/thinlab/platform/platformtest"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

func TestMain(m *testing.M) { platformtest.Main(m) }

// tofu runs OpenTofu (bin/tofu, built by make deps) in a working folder
// with the provider installed through dev_overrides.
type tofu struct {
	t   *testing.T
	bin string
	dir string
	env []string
}

// run runs tofu with args and returns its output; a failure ends the test
// with the output, unless wantCode names the expected exit code.
func (tf *tofu) run(wantCode int, args ...string) string {
	tf.t.Helper()
	cmd := exec.Command(tf.bin, args...)
	cmd.Dir = tf.dir
	cmd.Env = tf.env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code := 0
	if exitErr, ok := errors.AsType[*exec.ExitError](err); ok {
		code = exitErr.ExitCode()
	} else if err != nil {
		tf.t.Fatalf("tofu %s: %v", strings.Join(args, " "), err)
	}
	if code != wantCode {
		tf.t.Fatalf("tofu %s: exit code %d, want %d:\n%s", strings.Join(args, " "), code, wantCode, out.String())
	}
	return out.String()
}

func (tf *tofu) write(config string) {
	tf.t.Helper()
	if err := os.WriteFile(filepath.Join(tf.dir, "main.tf"), []byte(config), 0o600); err != nil {
		tf.t.Fatal(err)
	}
}

const baseConfig = `
terraform {
  required_providers {
    thinlab = { source = "thinlab/thinlab" }
  }
}

provider "thinlab" {}

data "thinlab_organization" "this" {}

resource "thinlab_enrollment_token" "db" {
  name = "db-hosts"
}

resource "thinlab_invitation" "alice" {
  email = "alice@example.com"
  role  = "member"
}

output "org_id" { value = data.thinlab_organization.this.id }

output "enroll_secret" {
  value     = thinlab_enrollment_token.db.secret
  sensitive = true
}
`

// TestProviderLifecycle drives the provider through OpenTofu against a
// real platform: apply, an agent enrolled with the created token and then
// renamed, a plan without changes, import, destroy. It checks the
// platform's state after each step and that secrets stay out of output.
func TestProviderLifecycle(t *testing.T) {
	tofuBin, err := filepath.Abs("../../bin/tofu")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tofuBin); err != nil {
		t.Fatalf("OpenTofu is missing (%v): run make deps, which builds bin/tofu", err)
	}

	env := platformtest.New(t)
	ctx := context.Background()
	owner := env.User("owner@example.com")
	org := env.Org("acme", owner)
	token := env.Token(org, owner)
	api := env.Client(token)

	// The provider binary, found by tofu through dev_overrides.
	pluginDir := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(pluginDir, "terraform-provider-thinlab"), ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the provider: %v\n%s", err, out)
	}
	home := t.TempDir()
	cliConfig := filepath.Join(home, "tofurc")
	rc := `provider_installation {
  dev_overrides {
    "thinlab/thinlab" = "` + pluginDir + `"
  }
  direct {}
}
`
	if err := os.WriteFile(cliConfig, []byte(rc), 0o600); err != nil {
		t.Fatal(err)
	}
	tf := &tofu{t: t, bin: tofuBin, dir: t.TempDir(), env: []string{
		"HOME=" + home, "PATH=" + os.Getenv("PATH"),
		"TF_CLI_CONFIG_FILE=" + cliConfig, "TF_IN_AUTOMATION=1", "CHECKPOINT_DISABLE=1",
		"THINLAB_PLATFORM_URL=" + env.URL, "THINLAB_TOKEN=" + token, "THINLAB_ORG=" + org.Slug,
	}}

	// 1. apply: an enrollment token and an invitation.
	tf.write(baseConfig)

	// Without a token the provider names the setting and its variable.
	noToken := *tf
	noToken.env = nil
	for _, kv := range tf.env {
		if !strings.HasPrefix(kv, "THINLAB_TOKEN=") {
			noToken.env = append(noToken.env, kv)
		}
	}
	if out := noToken.run(1, "plan", "-input=false", "-no-color"); !strings.Contains(out, "Missing token") || !strings.Contains(out, "THINLAB_TOKEN") {
		t.Errorf("plan without a token does not name the setting and THINLAB_TOKEN:\n%s", out)
	}
	// No tofu init: with dev_overrides it still asks the registry for a
	// published version (unreachable here, and not needed), and tofu
	// itself advises to skip it.
	applyOut := tf.run(0, "apply", "-auto-approve", "-input=false", "-no-color")
	tokens, err := api.EnrollmentTokens(ctx, org.Slug)
	if err != nil || len(tokens) != 1 || tokens[0].Name != "db-hosts" || !tokens[0].Usable {
		t.Fatalf("enrollment tokens after apply: %+v, %v; want one usable db-hosts", tokens, err)
	}
	invs, err := api.Invitations(ctx, org.Slug)
	if err != nil || len(invs) != 1 || invs[0].Email != "alice@example.com" || invs[0].Role != "member" {
		t.Fatalf("invitations after apply: %+v, %v", invs, err)
	}
	if got := strings.TrimSpace(tf.run(0, "output", "-raw", "org_id")); got != org.ID {
		t.Errorf("data.thinlab_organization id = %q, want %q", got, org.ID)
	}
	secret := strings.TrimSpace(tf.run(0, "output", "-raw", "enroll_secret"))
	if secret == "" || !strings.HasPrefix(secret, tokens[0].Prefix) {
		t.Fatalf("enrollment secret from the state %q does not match the prefix %q", secret, tokens[0].Prefix)
	}
	if strings.Contains(applyOut, secret) {
		t.Error("apply printed the enrollment token's secret")
	}

	// An agent enrolls with the secret Terraform created.
	r := env.Do(http.MethodPost, tunnel.EnrollPath, "", tunnel.EnrollRequest{Token: secret, Facts: tunnel.AgentFacts{Name: "host-1"}})
	var enrolled tunnel.EnrollResponse
	if r.Status != http.StatusCreated && r.Status != http.StatusOK {
		t.Fatalf("enroll with the Terraform-created token: %d %s", r.Status, r.Body)
	}
	if err := json.Unmarshal(r.Body, &enrolled); err != nil || enrolled.AgentID == "" {
		t.Fatalf("enroll answer %s: %v", r.Body, err)
	}

	// 2. apply: the agent taken under management and renamed.
	tf.write(baseConfig + `
resource "thinlab_agent" "host1" {
  agent_id = "` + enrolled.AgentID + `"
  name     = "db-primary"
}

data "thinlab_agents" "all" {}

output "agent_count" { value = length(data.thinlab_agents.all.agents) }
`)
	applyOut = tf.run(0, "apply", "-auto-approve", "-input=false", "-no-color")
	if a, err := api.Agent(ctx, org.Slug, enrolled.AgentID); err != nil || a.Name != "db-primary" || a.RevokedAt != nil {
		t.Fatalf("agent after apply: %+v, %v; want renamed db-primary", a, err)
	}
	if got := strings.TrimSpace(tf.run(0, "output", "-raw", "agent_count")); got != "1" {
		t.Errorf("data.thinlab_agents: %s agents, want 1", got)
	}

	// 3. plan: no changes, and no secret in the output.
	planOut := tf.run(0, "plan", "-detailed-exitcode", "-input=false", "-no-color")
	for name, out := range map[string]string{"apply": applyOut, "plan": planOut} {
		if strings.Contains(out, secret) || strings.Contains(out, token) {
			t.Errorf("%s printed a secret:\n%s", name, out)
		}
	}

	// 4. import: forget the agent and the token, import them by ID, and
	// the plan is still empty.
	tf.run(0, "state", "rm", "thinlab_agent.host1", "thinlab_enrollment_token.db", "thinlab_invitation.alice")
	tf.run(0, "import", "-input=false", "-no-color", "thinlab_agent.host1", enrolled.AgentID)
	tf.run(0, "import", "-input=false", "-no-color", "thinlab_enrollment_token.db", tokens[0].ID)
	tf.run(0, "import", "-input=false", "-no-color", "thinlab_invitation.alice", invs[0].ID)
	tf.run(0, "plan", "-detailed-exitcode", "-input=false", "-no-color")

	// A rename outside Terraform shows as a change.
	if _, err := api.RenameAgent(ctx, org.Slug, enrolled.AgentID, "renamed-by-hand"); err != nil {
		t.Fatal(err)
	}
	tf.run(2, "plan", "-detailed-exitcode", "-input=false", "-no-color")

	// 5. destroy: the agent and the token revoked, the invitation withdrawn.
	tf.run(0, "destroy", "-auto-approve", "-input=false", "-no-color")
	agents, err := api.Agents(ctx, org.Slug)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range agents {
		if a.ID == enrolled.AgentID && a.RevokedAt == nil {
			t.Errorf("agent %s not revoked by destroy", a.ID)
		}
	}
	if tokens, err := api.EnrollmentTokens(ctx, org.Slug); err != nil || len(tokens) != 1 || tokens[0].RevokedAt == nil {
		t.Errorf("enrollment tokens after destroy: %+v, %v; want the one revoked", tokens, err)
	}
	if invs, err := api.Invitations(ctx, org.Slug); err != nil || len(invs) != 0 {
		t.Errorf("invitations after destroy: %+v, %v; want none", invs, err)
	}
}
