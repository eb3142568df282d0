package fleete2e

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/thinlab/thinlab/cli"
	"github.com/thinlab/thinlab/internal/browsertest"
	"github.com/thinlab/thinlab/platform/web/webtest"
	"github.com/thinlab/thinlab/sdk/agentapi"
	"github.com/thinlab/thinlab/sdk/platformapi"
)

// thinlab runs the CLI in-process (the command cmd/thinlab runs) with
// args and returns its exit status (0 or not), stdout and stderr.
func thinlab(t *testing.T, args ...string) (ok bool, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := cli.NewRootCommand()
	root.SetArgs(args)
	root.SetIn(strings.NewReader(""))
	root.SetOut(&out)
	root.SetErr(&errOut)
	err := root.ExecuteContext(t.Context())
	if err != nil {
		errOut.WriteString("error: " + err.Error() + "\n")
	}
	return err == nil, out.String(), errOut.String()
}

// mustThinlab is thinlab that fails the test on a non-zero exit.
func mustThinlab(t *testing.T, args ...string) string {
	t.Helper()
	ok, out, errOut := thinlab(t, args...)
	if !ok {
		t.Fatalf("thinlab %s failed\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), out, errOut)
	}
	return out
}

// isolateCLI points the CLI at a config file of this test and clears the
// variables that would leak in from the machine running it.
func isolateCLI(t *testing.T) {
	t.Helper()
	t.Setenv("THINLAB_CONFIG", filepath.Join(t.TempDir(), "thinlab", "config.yaml"))
	for _, k := range []string{"THINLAB_URL", "THINLAB_TOKEN", "THINLAB_CA_FILE", "THINLAB_AGENT", "THINLAB_CLONE_PASSWORD", "THINLAB_PSQL", "PGPASSWORD"} {
		t.Setenv(k, "")
	}
}

// TestE2EEnrollBrowserConnectCLIDestroy is the issue's "end to end in one
// test", each part real: a person signs in through Dex in headless
// Chromium and creates a personal API token on the Tokens page; with it a
// script creates an enrollment token through /api/v1, and a real agent
// (btrfs pool, real PostgreSQL) enrolls with it. In the browser the
// person creates a clone and sees its progress, then its connection
// string. The CLI, with a platform context and that token, runs a query
// through `thinlab connect` with psql from PATH, then destroys the clone
// with `thinlab clone destroy ID --agent NAME`; the UI and the agent's
// host no longer have it.
func TestE2EEnrollBrowserConnectCLIDestroy(t *testing.T) {
	const (
		email     = "eve@e2e.example"
		agentName = "e2e-db"
		cloneID   = "e2e-clone"
	)
	isolateCLI(t)
	p, dex := webtest.StartDex(t, []string{email}, nil)
	user := webtest.DexUser(t, dex, email)
	ctx := browsertest.New(t)

	// 1. Sign in through Dex; the personal organization is the landing page.
	browsertest.Step(t, ctx, "sign in through Dex",
		chromedp.Navigate(p.URL+"/"),
		chromedp.WaitVisible(`a[href^="/auth/login/dex"]`),
		chromedp.Click(`a[href^="/auth/login/dex"]`),
		chromedp.WaitVisible("#login"),
		chromedp.SendKeys("#login", user.Email),
		chromedp.SendKeys("#password", user.Password),
		chromedp.Submit("#password"),
		chromedp.WaitVisible("#my-role"),
	)
	loc := browsertest.Get(t, ctx, "location", chromedp.Location())
	org, ok := strings.CutPrefix(loc, p.URL+"/o/")
	if !ok || org == "" || strings.Contains(org, "/") {
		t.Fatalf("after sign-in the browser is at %s, want the organization's dashboard", loc)
	}

	// 2. A personal API token, made on the Tokens page and shown once.
	browsertest.Step(t, ctx, "create a personal API token",
		chromedp.Click(`nav a[href$="/tokens"]`),
		chromedp.WaitVisible("#token-name"),
		chromedp.SendKeys("#token-name", "e2e-laptop"),
		chromedp.Submit("#token-name"),
		chromedp.WaitVisible("#token-secret"),
	)
	token := strings.TrimSpace(browsertest.Get(t, ctx, "the token", chromedp.Text("#token-secret")))
	if !strings.HasPrefix(token, "thl_") {
		t.Fatalf("token on the page: %q", token)
	}

	// 3. An enrollment token through /api/v1 with that API token, and a
	// real agent enrolled with it.
	pc := platformapi.NewClient(p.URL, token)
	enroll, err := pc.CreateEnrollmentToken(t.Context(), org, platformapi.CreateEnrollmentTokenRequest{Name: "e2e-hosts", SingleUse: true})
	if err != nil {
		t.Fatalf("create an enrollment token through the API: %v", err)
	}
	if enroll.Secret == "" || !strings.Contains(enroll.Command, enroll.Secret) {
		t.Fatalf("enrollment token answer %+v: want the secret and the command that uses it", enroll)
	}
	ra := startAgent(t, p.URL, enroll.Secret, agentName)
	var agentID string
	waitFor(t, "the agent to enroll and connect", func() bool {
		agents, err := pc.Agents(t.Context(), org)
		if err != nil || len(agents) != 1 || agents[0].Connection.State != platformapi.AgentConnected {
			return false
		}
		agentID = agents[0].ID
		return agents[0].Name == agentName
	})
	if toks, err := pc.EnrollmentTokens(t.Context(), org); err != nil || len(toks) != 1 || toks[0].Uses != 1 || toks[0].Usable {
		t.Errorf("the single-use enrollment token after the enrollment: %+v %v, want used once and used up", toks, err)
	}

	// 4. A clone made in the browser: progress first, the page reloads
	// itself until the connection string is there.
	browsertest.Step(t, ctx, "open Clones",
		chromedp.Click(`nav a[href$="/clones"]`),
		chromedp.WaitVisible("#clone-form"),
		chromedp.WaitVisible(`#snapshots tbody tr[data-snapshot]`),
	)
	browsertest.Step(t, ctx, "create a clone",
		chromedp.SendKeys("#clone-id", cloneID),
		chromedp.SendKeys("#clone-username", "dev"),
		chromedp.SendKeys("#clone-password", clonePassword),
		chromedp.Submit("#clone-username"),
		chromedp.WaitVisible("#clone-state"),
	)
	state := browsertest.Get(t, ctx, "the clone's state", chromedp.OuterHTML("#clone-state"))
	head := browsertest.Get(t, ctx, "the page head", chromedp.OuterHTML("head"))
	if !contains(state, `data-status="CREATING"`, "reloads") || !strings.Contains(head, `http-equiv="refresh"`) {
		t.Fatalf("the clone's page right after create: %s\n%s\nwant its progress (CREATING) on a page that reloads itself", state, head)
	}
	clonePage := browsertest.Get(t, ctx, "the clone page's address", chromedp.Location())
	browsertest.Step(t, ctx, "wait for the connection string", chromedp.WaitVisible("#clone-connstr"))
	connStr := browsertest.Get(t, ctx, "connection string", chromedp.Text("#clone-connstr"))
	command := browsertest.Get(t, ctx, "connect command", chromedp.Text("#clone-connect-command"))
	if !contains(connStr, "port=", "user=dev", "dbname=") {
		t.Errorf("connection string %q, want a port, user dev and the database", connStr)
	}
	if want := "thinlab connect " + cloneID + " --agent " + agentName; command != want {
		t.Errorf("the page's connect line %q, want %q", command, want)
	}

	// 5. The CLI through the platform, with the personal token: the line
	// the page shows, with psql from PATH and the password the person
	// chose (in THINLAB_CLONE_PASSWORD, as for a clone made elsewhere).
	mustThinlab(t, "context", "add", "e2e", "--platform", p.URL, "--token", token)
	t.Setenv("THINLAB_CLONE_PASSWORD", clonePassword)
	args := append(strings.Fields(strings.TrimPrefix(command, "thinlab ")), "--", "-XAtc", "select v || ' as ' || current_user from t")
	out := mustThinlab(t, args...)
	if got := strings.TrimSpace(out); got != "through the platform as dev" {
		t.Fatalf("psql through thinlab connect answered %q, want %q", got, "through the platform as dev")
	}
	t.Setenv("THINLAB_CLONE_PASSWORD", "")

	// 6. Destroy from the CLI via the platform; the clone is gone from
	// the CLI's list, the UI and the agent's host.
	port := portRE.FindStringSubmatch(connStr)
	if port == nil {
		t.Fatalf("connection string %q has no port", connStr)
	}
	if out := mustThinlab(t, "clone", "destroy", cloneID, "--agent", agentName); !strings.Contains(out, "Clone "+cloneID+" destroyed") {
		t.Errorf("thinlab clone destroy printed %q, want it to wait until the clone is destroyed", out)
	}
	var left []agentapi.Clone
	if err := json.Unmarshal([]byte(mustThinlab(t, "clone", "list", "--agent", agentName, "-o", "json")), &left); err != nil || len(left) != 0 {
		t.Fatalf("thinlab clone list after destroy: %+v %v, want none", left, err)
	}
	browsertest.Step(t, ctx, "open the destroyed clone's page",
		chromedp.Navigate(clonePage),
		chromedp.WaitVisible("#error-message"),
	)
	if msg := browsertest.Get(t, ctx, "the error", chromedp.Text("#error-message")); !strings.Contains(msg, "clone not found") {
		t.Errorf("the destroyed clone's page says %q, want clone not found", msg)
	}
	browsertest.Step(t, ctx, "open Clones again",
		chromedp.Navigate(p.URL+"/o/"+org+"/clones"),
		chromedp.WaitVisible(`#snapshots tbody tr[data-snapshot]`),
	)
	if rows := browsertest.Get(t, ctx, "the clones table", chromedp.OuterHTML("main")); strings.Contains(rows, `data-clone="`+cloneID+`"`) {
		t.Errorf("the Clones page still lists %s", cloneID)
	}
	if cl := ra.agent.Clones().List(); len(cl) != 0 {
		t.Errorf("the agent still has clones: %+v", cl)
	}
	portNum, err := strconv.Atoi(port[1])
	if err != nil {
		t.Fatal(err)
	}
	checkNoLeftovers(t, "after the destroy", ra.pool, nil, portNum)

	// Every step is in the audit log, by the person, with the agent's
	// answer: create from the page, connect and destroy with the token.
	got := p.QueryStrings(`SELECT action || ' ' || target || ' ' || result || ' ' || actor FROM audit_events WHERE action LIKE 'clone.%' ORDER BY id`)
	for _, want := range []string{
		"clone.create " + agentID + "/clone/" + cloneID + " (agent answered 201) success " + email,
		"clone.connect " + agentID + "/" + cloneID + " success " + email,
		"clone.destroy " + agentID + "/clone/" + cloneID + " (agent answered 200) success " + email,
	} {
		if !slicesContainsPrefix(got, want) {
			t.Errorf("no audit event %q in:\n%s", want, strings.Join(got, "\n"))
		}
	}
}

// slicesContainsPrefix reports whether one of ss starts with prefix.
func slicesContainsPrefix(ss []string, prefix string) bool {
	for _, s := range ss {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}
