package clientconfig

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPathPrecedence(t *testing.T) {
	t.Setenv("HOME", "/home/someone")
	t.Setenv("XDG_CONFIG_HOME", "")
	t.Setenv(EnvPath, "")
	if p, _ := Path(); p != "/home/someone/.config/thinlab/config.yaml" {
		t.Errorf("default path = %q", p)
	}
	t.Setenv("XDG_CONFIG_HOME", "/xdg")
	if p, _ := Path(); p != "/xdg/thinlab/config.yaml" {
		t.Errorf("XDG path = %q", p)
	}
	t.Setenv(EnvPath, "/elsewhere/c.yaml")
	if p, _ := Path(); p != "/elsewhere/c.yaml" {
		t.Errorf("THINLAB_CONFIG path = %q", p)
	}
}

func TestSaveLoadRoundTripWithMode0600(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "config.yaml")

	f, err := Load(path)
	if err != nil {
		t.Fatalf("load missing file: %v", err)
	}
	if len(f.Contexts) != 0 {
		t.Fatalf("missing file gave contexts: %+v", f)
	}
	f.Set(Context{Name: "dev", URL: "http://localhost:2345", Token: "s3cret"})
	f.Set(Context{Name: "prod", URL: "https://db.example.com"})
	f.SetClonePassword("http://localhost:2345", "c1", "pw")
	if err := Save(path, f); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("config mode = %v, want 0600", st.Mode().Perm())
	}
	dst, _ := os.Stat(filepath.Dir(path))
	if dst.Mode().Perm() != 0o700 {
		t.Errorf("config dir mode = %v, want 0700", dst.Mode().Perm())
	}

	// A file that someone loosened is tightened again on the next save.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	g, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if g.CurrentContext != "dev" {
		t.Errorf("first context should be current, got %q", g.CurrentContext)
	}
	if c, ok := g.Context("dev"); !ok || c.Token != "s3cret" {
		t.Errorf("dev context = %+v, %v", c, ok)
	}
	if pw, ok := g.ClonePassword("http://localhost:2345", "c1"); !ok || pw != "pw" {
		t.Errorf("clone password = %q, %v", pw, ok)
	}
	if err := g.Use("prod"); err != nil {
		t.Fatal(err)
	}
	if err := Save(path, g); err != nil {
		t.Fatal(err)
	}
	st, _ = os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode after re-save = %v, want 0600", st.Mode().Perm())
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("temp files left behind: %v", entries)
	}
}

func TestUseRemoveErrors(t *testing.T) {
	f := &File{}
	err := f.Use("x")
	if err == nil || !strings.Contains(err.Error(), "thinlab context add") {
		t.Errorf("Use on empty file: %v", err)
	}
	f.Set(Context{Name: "a", URL: "http://a"})
	f.Set(Context{Name: "b", URL: "http://b"})
	if err := f.Use("nope"); err == nil || !strings.Contains(err.Error(), "thinlab context list") {
		t.Errorf("Use unknown: %v", err)
	}
	if err := f.Remove("a"); err != nil {
		t.Fatal(err)
	}
	if f.CurrentContext != "" {
		t.Errorf("removing the current context should clear it, got %q", f.CurrentContext)
	}
	if err := f.Remove("a"); err == nil {
		t.Error("removing twice should fail")
	}
	// Set on an existing name replaces it.
	f.Set(Context{Name: "b", URL: "http://b2"})
	if len(f.Contexts) != 1 || f.Contexts[0].URL != "http://b2" {
		t.Errorf("replace: %+v", f.Contexts)
	}
}

func TestLoadRejectsBadYAML(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte("contexts: [unclosed"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("bad YAML error should name the file: %v", err)
	}
}

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"dev", "prod-1", "a.b_c"} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-x", "a b", "a/b"} {
		if err := ValidateName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestResolvePrecedence(t *testing.T) {
	file := &File{}
	file.Set(Context{Name: "dev", URL: "http://ctx:2345", Token: "ctx-token"})
	file.Set(Context{Name: "prod", URL: "https://prod:2345", Token: "prod-token"})

	cases := []struct {
		name      string
		in        Inputs
		url, tok  string
		from, ctx string
	}{
		{"context only", Inputs{File: file}, "http://ctx:2345", "ctx-token", `context "dev"`, "dev"},
		{"env beats context", Inputs{File: file, EnvURL: "http://env", EnvToken: "env-token"}, "http://env", "env-token", "THINLAB_URL", ""},
		{"flag beats env", Inputs{File: file, EnvURL: "http://env", EnvToken: "env-token", FlagURL: "http://flag", FlagToken: "flag-token"}, "http://flag", "flag-token", "--url", ""},
		{"flag token with context url", Inputs{File: file, FlagToken: "flag-token"}, "http://ctx:2345", "flag-token", `context "dev"`, "dev"},
		{"env token with context url", Inputs{File: file, EnvToken: "env-token"}, "http://ctx:2345", "env-token", `context "dev"`, "dev"},
		// The context's token must not leak to a different server.
		{"other url drops context token", Inputs{File: file, FlagURL: "http://elsewhere"}, "http://elsewhere", "", "--url", ""},
		{"same url keeps context token", Inputs{File: file, FlagURL: "http://ctx:2345/"}, "http://ctx:2345/", "ctx-token", "--url", "dev"},
		{"--context picks another", Inputs{File: file, Context: "prod"}, "https://prod:2345", "prod-token", `context "prod"`, "prod"},
		{"no file", Inputs{EnvURL: "http://env"}, "http://env", "", "THINLAB_URL", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ep, err := Resolve(c.in)
			if err != nil {
				t.Fatal(err)
			}
			if ep.URL != c.url || ep.Token != c.tok || ep.URLFrom != c.from || ep.Context != c.ctx {
				t.Errorf("got %+v, want url=%s token=%s from=%s ctx=%s", ep, c.url, c.tok, c.from, c.ctx)
			}
		})
	}
}

func TestResolveErrorsNameWhatToSet(t *testing.T) {
	_, err := Resolve(Inputs{File: &File{}})
	if err == nil {
		t.Fatal("no URL anywhere should fail")
	}
	for _, want := range []string{"--url", "THINLAB_URL", "thinlab context add"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	_, err = Resolve(Inputs{File: &File{}, Context: "gone"})
	if err == nil || !strings.Contains(err.Error(), "--context") {
		t.Errorf("unknown --context: %v", err)
	}
	_, err = Resolve(Inputs{EnvURL: "localhost:2345"})
	if err == nil || !strings.Contains(err.Error(), "THINLAB_URL") || !strings.Contains(err.Error(), "http://") {
		t.Errorf("bad env URL: %v", err)
	}
	_, err = Resolve(Inputs{FlagURL: "ftp://x"})
	if err == nil || !strings.Contains(err.Error(), "--url") {
		t.Errorf("bad flag URL: %v", err)
	}
}

// A platform context carries its organization and default agent; --agent
// beats THINLAB_AGENT beats the context's; an agent endpoint refuses
// --agent (it names one agent already) but ignores THINLAB_AGENT, which
// may be exported for another context.
func TestResolveAgentThroughPlatform(t *testing.T) {
	file := &File{}
	file.Set(Context{Name: "cloud", URL: "https://thinlab.example.com", Token: "thl_x", Platform: true, Org: "acme", Agent: "db1"})
	file.Set(Context{Name: "dev", URL: "http://dev:2345", Token: "agent-token"})

	cases := []struct {
		name           string
		in             Inputs
		agent, from    string
		platform, fail bool
	}{
		{"context default", Inputs{File: file}, "db1", `context "cloud"`, true, false},
		{"env beats context", Inputs{File: file, EnvAgent: "db2"}, "db2", EnvAgent, true, false},
		{"flag beats env", Inputs{File: file, EnvAgent: "db2", FlagAgent: "db3"}, "db3", "--agent", true, false},
		{"agent context ignores env", Inputs{File: file, Context: "dev", EnvAgent: "db2"}, "", "", false, false},
		{"agent context refuses flag", Inputs{File: file, Context: "dev", FlagAgent: "db2"}, "", "", false, true},
		{"--url leaves the platform context", Inputs{File: file, FlagURL: "http://agent:2345", FlagAgent: "db2"}, "", "", false, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ep, err := Resolve(c.in)
			if c.fail {
				if err == nil || !strings.Contains(err.Error(), "--agent") || !strings.Contains(err.Error(), "--platform") {
					t.Fatalf("want an error naming --agent and --platform, got %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ep.Agent != c.agent || ep.AgentFrom != c.from || ep.Platform != c.platform {
				t.Errorf("got %+v, want agent=%s from=%s platform=%v", ep, c.agent, c.from, c.platform)
			}
			if c.platform && ep.Org != "acme" {
				t.Errorf("org %q, want acme", ep.Org)
			}
		})
	}
}
