package fleete2e

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/thinlab/thinlab/internal/browsertest"
	"github.com/thinlab/thinlab/platform/web/webtest"
)

var (
	portRE = regexp.MustCompile(`port=(\d+)`)
	userRE = regexp.MustCompile(`user=(\S+)`)
)

// TestE2ECloneInBrowser: sign in through the real Dex in headless
// Chromium; a real agent enrolls into the personal organization; on the
// Clones page create a clone with a user and password; the clone's page
// shows its progress and reloads itself (no script) until the connection
// string and the thinlab connect line appear; the database answers on
// that port with that user; destroy it from the page. Both actions are in
// the audit log with the agent's answer.
func TestE2ECloneInBrowser(t *testing.T) {
	const email = "ann@a.example"
	p, dex := webtest.StartDex(t, []string{email}, nil)
	user := webtest.DexUser(t, dex, email)
	ctx := browsertest.New(t)
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
	slug := strings.TrimPrefix(loc, p.URL+"/o/")
	org, err := p.Store.OrganizationByRef(t.Context(), slug)
	if err != nil {
		t.Fatalf("the personal organization at %s: %v", loc, err)
	}
	members, err := p.Store.ListMembers(t.Context(), org.ID)
	if err != nil || len(members) != 1 {
		t.Fatalf("members of %s: %+v %v", slug, members, err)
	}
	_, secret, err := p.Store.CreateEnrollmentToken(t.Context(), org.ID, members[0].UserID, "hosts", time.Now().Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	startAgent(t, p.URL, secret, "e2e-db")
	waitFor(t, "the agent to connect", func() bool {
		agents, err := p.Store.ListAgents(t.Context(), org.ID)
		return err == nil && len(agents) == 1 && agents[0].Connected()
	})

	browsertest.Step(t, ctx, "open Clones",
		chromedp.Click(`nav a[href$="/clones"]`),
		chromedp.WaitVisible("#clone-form"),
		chromedp.WaitVisible(`#snapshots tbody tr[data-snapshot]`),
	)
	browsertest.Step(t, ctx, "create a clone",
		chromedp.SendKeys("#clone-id", "browser-clone"),
		chromedp.SendKeys("#clone-username", "dev"),
		chromedp.SendKeys("#clone-password", clonePassword),
		chromedp.Submit("#clone-username"),
		chromedp.WaitVisible("#clone-state"),
	)
	// The first view of the clone is its progress: the agent answered the
	// create at once and starts PostgreSQL in the background.
	state := browsertest.Get(t, ctx, "the clone's state", chromedp.OuterHTML("#clone-state"))
	head := browsertest.Get(t, ctx, "the page head", chromedp.OuterHTML("head"))
	if !contains(state, `data-status="CREATING"`, "creating", "reloads") || !strings.Contains(head, `http-equiv="refresh"`) {
		t.Fatalf("the clone's page right after create: %s\n%s\nwant CREATING with a reloading page", state, head)
	}
	// No reload by the test: the page reloads itself until the clone is ready.
	browsertest.Step(t, ctx, "wait for the connection string", chromedp.WaitVisible("#clone-connstr"))
	connStr := browsertest.Get(t, ctx, "connection string", chromedp.Text("#clone-connstr"))
	command := browsertest.Get(t, ctx, "connect command", chromedp.Text("#clone-connect-command"))
	note := browsertest.Get(t, ctx, "host note", chromedp.Text("#clone-host-note"))
	if want := "thinlab connect browser-clone --agent e2e-db"; command != want {
		t.Errorf("connect line %q, want %q", command, want)
	}
	if !contains(connStr, "host=AGENT_HOST", "user=dev") || !strings.Contains(note, "AGENT_HOST") {
		t.Errorf("connection string %q (note %q): want the placeholder host explained and user dev", connStr, note)
	}
	if head := browsertest.Get(t, ctx, "head when ready", chromedp.OuterHTML("head")); strings.Contains(head, `http-equiv="refresh"`) {
		t.Error("the ready clone's page still reloads itself")
	}
	// The agent host is this host: the string, with its address, works.
	port, u := portRE.FindStringSubmatch(connStr), userRE.FindStringSubmatch(connStr)
	if port == nil || u == nil {
		t.Fatalf("connection string %q has no port or user", connStr)
	}
	if v := queryClone(t, "host=127.0.0.1 port="+port[1]+" user="+u[1]+" dbname=postgres", "SELECT v FROM t"); v != "through the platform" {
		t.Fatalf("the clone answers %q", v)
	}

	// Protected, it cannot be destroyed: the agent's refusal is shown.
	browsertest.Step(t, ctx, "protect it", chromedp.Submit("#clone-protect"))
	waitText(t, ctx, ".flash", "browser-clone protected")
	browsertest.Step(t, ctx, "try to destroy it", chromedp.WaitVisible("#clone-protected"), chromedp.Submit("#clone-destroy"))
	waitText(t, ctx, ".flash-error", "refused")
	browsertest.Step(t, ctx, "unprotect it", chromedp.Submit("#clone-unprotect"))
	waitText(t, ctx, ".flash", "browser-clone unprotected")
	// Reset: progress again, then ready again, without a manual reload.
	browsertest.Step(t, ctx, "reset it", chromedp.Submit("#clone-reset"))
	waitText(t, ctx, ".flash", "browser-clone is being reset")
	browsertest.Step(t, ctx, "ready after the reset", chromedp.WaitVisible("#clone-connstr"))
	browsertest.Step(t, ctx, "destroy it", chromedp.Submit("#clone-destroy"))
	waitText(t, ctx, ".flash", "browser-clone destroyed")

	// Snapshots from the same page: take one, then delete it.
	browsertest.Step(t, ctx, "take a snapshot", chromedp.Submit(`button.snapshot-create`))
	flash := waitText(t, ctx, ".flash", "Snapshot ")
	m := regexp.MustCompile(`Snapshot (\S+) created on e2e-db`).FindStringSubmatch(flash)
	if m == nil {
		t.Fatalf("after taking a snapshot: flash %q", flash)
	}
	row := `#snapshots tr[data-snapshot="` + m[1] + `"]`
	browsertest.Step(t, ctx, "delete it",
		chromedp.WaitVisible(row),
		chromedp.Submit(row+` button.snapshot-delete`),
	)
	waitText(t, ctx, ".flash", m[1]+" deleted")
	if snaps := browsertest.Get(t, ctx, "snapshots", chromedp.Text("#snapshots tbody")); strings.Contains(snaps, m[1]) {
		t.Errorf("deleted snapshot still listed: %q", snaps)
	}

	got := p.QueryStrings(`SELECT action || ' ' || target || ' ' || result FROM audit_events WHERE action LIKE 'clone.%' OR action LIKE 'snapshot.%' ORDER BY id`)
	agents, err := p.Store.ListAgents(t.Context(), org.ID)
	if err != nil || len(agents) != 1 {
		t.Fatal(err)
	}
	want := []string{
		"clone.create " + agents[0].ID + "/clone/browser-clone (agent answered 201) success",
		"clone.update " + agents[0].ID + "/clone/browser-clone (agent answered 200) success",
		"clone.destroy " + agents[0].ID + "/clone/browser-clone (agent answered 4",
		"clone.update " + agents[0].ID + "/clone/browser-clone (agent answered 200) success",
		"clone.reset " + agents[0].ID + "/clone/browser-clone (agent answered 200) success",
		"clone.destroy " + agents[0].ID + "/clone/browser-clone (agent answered 200) success",
		"snapshot.create " + agents[0].ID + "/snapshot/" + m[1] + " (agent answered 200) success",
		"snapshot.delete " + agents[0].ID + "/snapshot/" + m[1] + " (agent answered 200) success",
	}
	match := len(got) == len(want)
	for i := 0; match && i < len(want); i++ {
		match = strings.HasPrefix(got[i], want[i])
	}
	if !match {
		t.Errorf("clone audit events:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// waitText waits until the text of sel holds want (the page the last
// form submission leads to has loaded) and returns it.
func waitText(t *testing.T, ctx context.Context, sel, want string) string {
	t.Helper()
	var text string
	waitFor(t, sel+" saying "+want, func() bool {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		text, _ = chromedp.Run(sctx, chromedp.Text(sel)) // not there yet: try again
		return strings.Contains(text, want)
	})
	return text
}
