package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAgentRunInputErrors: `thinlab agent run` refuses a missing or bad
// configuration with an error that names the problem.
func TestAgentRunInputErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yml")
	if err := os.WriteFile(bad, []byte("server:\n  prot: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	invalid := filepath.Join(dir, "invalid.yml")
	if err := os.WriteFile(invalid, []byte("server:\n  port: 2345\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A complete config but for the token: the agent does not start.
	noToken := filepath.Join(dir, "notoken.yml")
	if err := os.WriteFile(noToken, []byte("pools: [{name: p, mode: btrfs, path: /nonexistent}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Complete with a token: --platform is validated like platform.url.
	withToken := filepath.Join(dir, "token.yml")
	if err := os.WriteFile(withToken, []byte("server: {verificationToken: 0123456789abcdef0123456789abcdef}\npools: [{name: p, mode: btrfs, path: /nonexistent}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("THINLAB_AGENT_CONFIG", "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"agent", "run"}, "--config is required"},
		{[]string{"agent", "run", "--config", filepath.Join(dir, "missing.yml")}, "read config"},
		{[]string{"agent", "run", "--config", bad}, `unknown key "prot" in server`},
		{[]string{"agent", "run", "--config", invalid}, "pools is empty"},
		{[]string{"agent", "run", "extra-arg", "--config", invalid}, "unknown command"},
		{[]string{"agent", "run", "--config", noToken}, "server.verificationToken is empty"},
		{[]string{"agent", "run", "--config", withToken, "--platform", "http://platform.example.com", "--enroll-token", "t"}, "platform.insecure"},
		{[]string{"agent", "run", "--config", withToken, "--enroll-token", "t"}, "platform.url is empty"},
	} {
		root := NewRootCommand()
		root.SetArgs(tc.args)
		root.SetOut(&strings.Builder{})
		root.SetErr(&strings.Builder{})
		err := root.Execute()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("thinlab %s: got %v, want an error containing %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
	// The environment variable is the default of --config.
	t.Setenv("THINLAB_AGENT_CONFIG", bad)
	root := NewRootCommand()
	root.SetArgs([]string{"agent", "run"})
	if err := root.Execute(); err == nil || !strings.Contains(err.Error(), "prot") {
		t.Errorf("THINLAB_AGENT_CONFIG: got %v", err)
	}
}

// TestImportDLECommand: `thinlab agent config import-dle` writes the
// configuration (mode 0600) and names on stderr what to review and what
// was not carried over.
func TestImportDLECommand(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "server.yml")
	dle := "server: {verificationToken: 0123456789abcdef0123456789abcdef}\nretrieval:\n  jobs: [logicalDump, logicalRestore, logicalSnapshot]\n  spec:\n    logicalDump:\n      options:\n        source: {connection: {host: prod, port: 5432, username: r, dbname: app}}\n        dockerImage: x\n"
	if err := os.WriteFile(in, []byte(dle), 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "agent.yaml")
	root := NewRootCommand()
	var stderr strings.Builder
	root.SetErr(&stderr)
	root.SetArgs([]string{"agent", "config", "import-dle", in, "-o", out})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(out)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("output file %v (%v), want mode 0600", fi, err)
	}
	b, _ := os.ReadFile(out)
	if !strings.Contains(string(b), "host: prod") || !strings.Contains(string(b), "mode: logical") {
		t.Fatalf("imported config:\n%s", b)
	}
	if !strings.Contains(stderr.String(), "not carried over: retrieval.spec.logicalDump.options.dockerImage: no Thinlab counterpart") || !strings.Contains(stderr.String(), "review: pools[0]") {
		t.Fatalf("stderr:\n%s", stderr.String())
	}
}
