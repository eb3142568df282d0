package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runCLI runs the command tree in-process the way Execute does and
// returns the exit code with what went to stdout and stderr (stderr ends
// with Execute's "error: ..." line on failure).
func runCLI(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	root := NewRootCommand()
	root.SetArgs(args)
	root.SetIn(strings.NewReader(stdin))
	root.SetOut(&stdout)
	root.SetErr(&stderr)
	err := root.ExecuteContext(t.Context())
	code := 0
	if err != nil {
		stderr.WriteString("error: " + err.Error() + "\n")
		code = 1
		if exit, ok := errors.AsType[exitCodeError](err); ok {
			code = exit.code
		}
	}
	return code, stdout.String(), stderr.String()
}

// isolate points the CLI at a fresh config file and clears the variables
// that would otherwise leak in from the machine running the tests.
func isolate(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "thinlab", "config.yaml")
	t.Setenv("THINLAB_CONFIG", path)
	for _, k := range []string{"THINLAB_URL", "THINLAB_TOKEN", "THINLAB_CA_FILE", "THINLAB_AGENT", envClonePassword, envPsql} {
		t.Setenv(k, "")
	}
	return path
}

func TestContextCommands(t *testing.T) {
	path := isolate(t)

	code, out, errOut := runCLI(t, "tok-dev\n", "context", "add", "dev", "--url", "http://dev:2345", "--token-stdin")
	if code != 0 {
		t.Fatalf("add dev: %d %s", code, errOut)
	}
	if !strings.Contains(out, "(current)") {
		t.Errorf("first context should become current: %q", out)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("config mode %v, want 0600", st.Mode().Perm())
	}
	if code, _, errOut := runCLI(t, "", "context", "add", "prod", "--url", "https://prod:2345", "--token", "tok-prod"); code != 0 {
		t.Fatalf("add prod: %s", errOut)
	}
	// Adding the same name again needs --overwrite.
	code, _, errOut = runCLI(t, "", "context", "add", "prod", "--url", "https://prod2:2345")
	if code != 2 || !strings.Contains(errOut, "--overwrite") {
		t.Errorf("re-add: code %d, %q", code, errOut)
	}
	if code, _, errOut := runCLI(t, "", "context", "use", "prod"); code != 0 {
		t.Fatalf("use: %s", errOut)
	}

	code, out, _ = runCLI(t, "", "context", "list")
	if code != 0 {
		t.Fatal(code)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "CURRENT") || !strings.HasPrefix(lines[2], "*") || !strings.Contains(lines[2], "prod") {
		t.Errorf("list table:\n%s", out)
	}
	if strings.Contains(out, "tok-") {
		t.Errorf("list shows a token:\n%s", out)
	}

	code, out, _ = runCLI(t, "", "context", "list", "-o", "json")
	if code != 0 {
		t.Fatal(code)
	}
	var views []contextView
	if err := json.Unmarshal([]byte(out), &views); err != nil {
		t.Fatalf("list json: %v\n%s", err, out)
	}
	if len(views) != 2 || views[0].Name != "dev" || views[0].Current || !views[1].Current || !views[1].HasToken {
		t.Errorf("list json: %+v", views)
	}
	if strings.Contains(out, "tok-") {
		t.Errorf("list json shows a token: %s", out)
	}

	if code, _, errOut := runCLI(t, "", "context", "remove", "prod"); code != 0 {
		t.Fatalf("remove: %s", errOut)
	}
	code, _, errOut = runCLI(t, "", "context", "use", "prod")
	if code != 1 || !strings.Contains(errOut, `context "prod" not found`) {
		t.Errorf("use removed: %d %q", code, errOut)
	}
	st, _ = os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("config mode after edits %v, want 0600", st.Mode().Perm())
	}
}

// TestEndpointPrecedence checks flag > env > context on real requests:
// the test server records which token each request carried.
func TestEndpointPrecedence(t *testing.T) {
	isolate(t)
	var gotToken string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotToken = r.Header.Get("Verification-Token")
		reply(t, w, http.StatusOK, `[]`)
	}))
	t.Cleanup(srv.Close)

	if code, _, errOut := runCLI(t, "", "context", "add", "dev", "--url", srv.URL, "--token", "ctx-token"); code != 0 {
		t.Fatal(errOut)
	}
	check := func(want string, args ...string) {
		t.Helper()
		gotToken = ""
		code, _, errOut := runCLI(t, "", append([]string{"clone", "list"}, args...)...)
		if code != 0 {
			t.Fatalf("clone list %v: %d %s", args, code, errOut)
		}
		if gotToken != want {
			t.Errorf("clone list %v sent token %q, want %q", args, gotToken, want)
		}
	}
	check("ctx-token")
	t.Setenv("THINLAB_TOKEN", "env-token")
	check("env-token")
	check("flag-token", "--token", "flag-token")

	// A URL that is not the context's never gets the context's token.
	t.Setenv("THINLAB_TOKEN", "")
	other := httptest.NewServer(srv.Config.Handler)
	t.Cleanup(other.Close)
	check("", "--url", other.URL)
}

func TestNoEndpointIsUsageErrorNamingWhatToSet(t *testing.T) {
	isolate(t)
	code, _, errOut := runCLI(t, "", "clone", "list")
	if code != 2 {
		t.Errorf("exit %d, want 2", code)
	}
	for _, want := range []string{"--url", "THINLAB_URL", "thinlab context add"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("error does not name %s: %q", want, errOut)
		}
	}
	t.Setenv("THINLAB_URL", "localhost:2345")
	code, _, errOut = runCLI(t, "", "status")
	if code != 2 || !strings.Contains(errOut, "THINLAB_URL") {
		t.Errorf("bad THINLAB_URL: %d %q", code, errOut)
	}
}

func TestUsageErrorsExit2NamingTheFlag(t *testing.T) {
	isolate(t)
	t.Setenv("THINLAB_URL", "http://127.0.0.1:1") // never reached: usage is checked first
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"clone", "create"}, "--username"},
		{[]string{"clone", "create", "--username", "u", "--extra-conf", "work_mem"}, "--extra-conf"},
		{[]string{"clone", "create", "--username", "u", "--extra-conf", "=1"}, "--extra-conf"},
		{[]string{"clone", "create", "--username", "u", "--extra-conf", "a=1", "--extra-conf", "a=2"}, "--extra-conf"},
		{[]string{"clone", "create", "--username", "u", "--extra-conf", "bad key=1"}, "--extra-conf"},
		{[]string{"clone", "create", "--username", "u", "--id", "no/slash"}, "--id"},
		{[]string{"clone", "create", "--username", "u", "--snapshot", "nosnap"}, "--snapshot"},
		{[]string{"clone", "create", "--username", "u", "--snapshot", "p@snapshot_1", "--pool", "p"}, "--pool"},
		{[]string{"clone", "create", "--username", "u", "--protection-minutes", "5"}, "--protected"},
		{[]string{"clone", "create", "--username", "u", "--bogus"}, "--bogus"},
		{[]string{"clone", "create", "--username", "u", "-o", "yaml"}, "--output"},
		{[]string{"clone", "create", "extra-arg", "--username", "u"}, "extra-arg"},
		{[]string{"clone", "status"}, "CLONE_ID"},
		{[]string{"clone", "status", "a", "b"}, `"b"`},
		{[]string{"clone", "reset", "c1", "--latest", "--snapshot", "p@snapshot_1"}, "--latest"},
		{[]string{"clone", "protect", "c1", "--off", "--minutes", "3"}, "--minutes"},
		{[]string{"clone", "create", "--username", "u", "--point-in-time", "yesterday"}, "--point-in-time"},
		{[]string{"clone", "create", "--username", "u", "--lsn", "0-1"}, "--lsn"},
		{[]string{"clone", "create", "--username", "u", "--point-in-time", "2026-12-03T16:50:00Z", "--snapshot", "p@snapshot_1"}, "--point-in-time"},
		{[]string{"clone", "reset", "c1", "--point-in-time", "2026-12-03T16:50:00Z", "--lsn", "0/1"}, "--lsn"},
		{[]string{"clone", "reset", "c1", "--lsn", "0/1", "--latest"}, "--latest"},
		{[]string{"clone", "replicas", "c1", "--count", "0"}, "--count"},
		{[]string{"clone", "destroy"}, "CLONE_ID"},
		{[]string{"clone", "frobnicate"}, "frobnicate"},
		{[]string{"snapshot", "delete", "not-a-snapshot"}, "SNAPSHOT_ID"},
		{[]string{"connect"}, "CLONE_ID"},
		{[]string{"connect", "c1", "c2"}, `"c2"`},
		{[]string{"context", "add", "x"}, "--url"},
		{[]string{"context", "add", "x", "--url", "nohttp"}, "--url"},
		{[]string{"context", "add", "bad name", "--url", "http://x"}, "context name"},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			code, _, errOut := runCLI(t, "", c.args...)
			if code != 2 {
				t.Errorf("exit %d, want 2 (stderr %q)", code, errOut)
			}
			if !strings.Contains(errOut, c.want) {
				t.Errorf("stderr does not name %s: %q", c.want, errOut)
			}
		})
	}
}

func TestClonePasswordWithoutTerminalIsUsageError(t *testing.T) {
	isolate(t)
	t.Setenv("THINLAB_URL", "http://127.0.0.1:1") // the prompt comes before any request
	code, _, errOut := runCLI(t, "", "clone", "create", "--username", "u")
	if code != 2 || !strings.Contains(errOut, "--password") || !strings.Contains(errOut, envClonePassword) {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
}

// TestAPIErrorsShowServerMessageAndField runs commands against a server
// that answers DLE-shaped errors (recorded bodies, not a real agent).
func TestAPIErrorsShowServerMessageAndField(t *testing.T) {
	isolate(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			t.Errorf("read the request: %v", err)
		}
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		switch {
		case r.Header.Get("Verification-Token") != "good":
			reply(t, w, http.StatusUnauthorized, `{"code":"UNAUTHORIZED","message":"Check your verification token."}`)
		case r.Method == http.MethodPost && r.URL.Path == "/clone":
			reply(t, w, http.StatusBadRequest, `{"code":"BAD_REQUEST","message":"password is too weak: add more characters","detail":"db.password"}`)
		case r.URL.Path == "/clone/nope":
			reply(t, w, http.StatusNotFound, `{"code":"NOT_FOUND","message":"Requested object does not exist. Specify your request."}`)
		default:
			reply(t, w, http.StatusInternalServerError, `{"code":"INTERNAL_ERROR","message":"boom"}`)
		}
	}))
	t.Cleanup(srv.Close)
	t.Setenv("THINLAB_URL", srv.URL)

	code, _, errOut := runCLI(t, "", "clone", "list")
	if code != 1 || !strings.Contains(errOut, "Check your verification token.") || !strings.Contains(errOut, "THINLAB_TOKEN") {
		t.Errorf("401: %d %q", code, errOut)
	}
	t.Setenv("THINLAB_TOKEN", "good")
	code, _, errOut = runCLI(t, "", "clone", "create", "--username", "u", "--password", "x")
	if code != 1 || !strings.Contains(errOut, "error: password is too weak: add more characters (field db.password)") {
		t.Errorf("400: %d %q", code, errOut)
	}
	code, _, errOut = runCLI(t, "", "clone", "status", "nope")
	if code != 1 || !strings.Contains(errOut, "Requested object does not exist") {
		t.Errorf("404: %d %q", code, errOut)
	}
	// A server that is not there: the error says which URL and where it came from.
	t.Setenv("THINLAB_URL", "http://127.0.0.1:1")
	code, _, errOut = runCLI(t, "", "status")
	if code != 1 || !strings.Contains(errOut, "is the agent running at http://127.0.0.1:1 (from THINLAB_URL)") {
		t.Errorf("unreachable: %d %q", code, errOut)
	}
}

// reply writes a canned answer. A failed write fails the test: the CLI
// hung up before reading it.
func reply(t *testing.T, w http.ResponseWriter, status int, body string) {
	t.Helper()
	w.WriteHeader(status)
	if _, err := io.WriteString(w, body); err != nil {
		t.Errorf("write the %d answer: %v", status, err)
	}
}

// replyJSON writes v as a JSON answer, like reply.
func replyJSON(t *testing.T, w http.ResponseWriter, status int, v any) {
	t.Helper()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if err := json.NewEncoder(w).Encode(v); err != nil {
		t.Errorf("write the %d answer: %v", status, err)
	}
}

// closeAtCleanup closes c when the test ends and fails it when that
// fails (a thing some other path closed already does not count).
func closeAtCleanup(t *testing.T, c io.Closer, what string) {
	t.Helper()
	t.Cleanup(func() {
		if err := c.Close(); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, os.ErrClosed) {
			t.Errorf("close %s: %v", what, err)
		}
	})
}

func TestPlatformContextAddUsageErrors(t *testing.T) {
	isolate(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"context", "add", "x", "--url", "http://a:2345", "--platform", "https://p"}, "either --url"},
		{[]string{"context", "add", "x", "--platform", "https://p", "--org", "acme"}, "personal API token"},
		{[]string{"context", "add", "x", "--url", "http://a:2345", "--agent", "db1"}, "go with --platform"},
		{[]string{"context", "add", "x", "--platform", "ftp://p", "--token", "t", "--org", "acme"}, "--platform:"},
	} {
		code, _, errOut := runCLI(t, "", c.args...)
		if code != exitUsage || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d %q, want 2 naming %q", c.args, code, errOut, c.want)
		}
	}
	// With --org given the platform is not asked: the context is saved
	// as it was given.
	mustRun(t, "context", "add", "cloud", "--platform", "https://thinlab.example.com", "--token", "thl_x", "--org", "acme", "--agent", "db1")
	out, _ := mustRun(t, "context", "list", "-o", "json")
	if !strings.Contains(out, `"platform": true`) || !strings.Contains(out, `"org": "acme"`) || !strings.Contains(out, `"agent": "db1"`) {
		t.Errorf("context list -o json:\n%s", out)
	}
}
