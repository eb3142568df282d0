package fleete2e

import (
	"context"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/agentapi"
)

// TestBranchesThroughPlatform: labels filter the clones page, and the DLE
// 4 branch routes of a real agent
// work through the platform's engine proxy (as the thinlab CLI and DLE
// clients call them with --agent): a clone on a new branch is committed
// with the platform user as its author, a second clone from the commit
// sees the write; the agent's branch tree page and the clone's diff page
// show the branches, the commit's message, author and clones, and the
// changed table. A caller cannot name another author.
func TestBranchesThroughPlatform(t *testing.T) {
	env, org, owner, _, ag := enrolled(t)
	ctx := t.Context()
	tok := env.Token(org, owner)
	c := engineClient(env, "acme", ag.ID, tok)

	snaps, err := c.Snapshots(ctx)
	if err != nil || len(snaps) != 1 {
		t.Fatalf("snapshots: %+v %v", snaps, err)
	}
	if _, err := c.CreateBranch(ctx, agentapi.CreateBranchRequest{BranchName: "feature", SnapshotID: snaps[0].ID}); err != nil {
		t.Fatalf("create branch through the platform: %v", err)
	}
	if _, err := c.CreateClone(ctx, agentapi.CreateCloneRequest{ID: "on-feature", Branch: "feature", Labels: map[string]string{"team": "data"}, DB: &agentapi.DatabaseRequest{Username: "dev", Password: clonePassword}}); err != nil {
		t.Fatalf("create a clone on the branch: %v", err)
	}
	k, err := c.WaitClone(ctx, "on-feature")
	if err != nil {
		t.Fatalf("clone on the branch: %v", err)
	}
	queryClone(t, k.DB.ConnStr, "INSERT INTO t VALUES ('committed work') RETURNING v")

	// A forged author header is dropped: the commit names the caller.
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, env.URL+"/api/v1/orgs/acme/agents/"+ag.ID+"/engine/branch/snapshot",
		strings.NewReader(`{"cloneID":"on-feature","message":"add committed work"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Forwarded-User-Email", "boss@example.com")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("commit through the platform: %d", resp.StatusCode)
	}
	log, err := c.BranchLog(ctx, "feature")
	if err != nil || len(log) != 2 || log[0].Message != "add committed work" || log[1].ID != snaps[0].ID {
		t.Fatalf("branch log through the platform: %+v %v, want the commit on the snapshot", log, err)
	}
	if log[0].Author != owner.Email {
		t.Errorf("commit author %q, want the platform caller %q (a forged header must not win)", log[0].Author, owner.Email)
	}
	commit := log[0].ID

	// A second clone from the commit sees the write.
	if _, err := c.CreateClone(ctx, agentapi.CreateCloneRequest{ID: "from-commit", Snapshot: &agentapi.SnapshotCloneField{ID: commit}, DB: &agentapi.DatabaseRequest{Username: "dev", Password: clonePassword}}); err != nil {
		t.Fatalf("clone from the commit: %v", err)
	}
	k2, err := c.WaitClone(ctx, "from-commit")
	if err != nil {
		t.Fatalf("clone from the commit: %v", err)
	}
	if v := queryClone(t, k2.DB.ConnStr, "SELECT string_agg(v, ',' ORDER BY v) FROM t"); v != "committed work,through the platform" {
		t.Fatalf("clone from the commit has %q", v)
	}

	// Labels through the platform: the clones page filters by them.
	if _, err := c.SetBranchLabels(ctx, "feature", map[string]string{"owner": "ada"}); err != nil {
		t.Fatalf("branch labels through the platform: %v", err)
	}
	pg := env.Do(http.MethodGet, "/o/acme/clones?label=team%3Ddata", tok, nil)
	if body := string(pg.Body); pg.Status != http.StatusOK || !strings.Contains(body, `data-clone="on-feature"`) || strings.Contains(body, `data-clone="from-commit"`) || !strings.Contains(body, "team=data") {
		t.Fatalf("clones page filtered by team=data: %d %s", pg.Status, tail(body, 3000))
	}
	if pg := env.Do(http.MethodGet, "/o/acme/clones?label=bad%20key", tok, nil); pg.Status != http.StatusBadRequest {
		t.Errorf("a bad label filter: HTTP %d, want 400", pg.Status)
	}

	// The tree page: main and feature, the commit's message, author and
	// its clone, linked.
	pg = env.Do(http.MethodGet, "/o/acme/agents/"+ag.ID+"/branches", tok, nil)
	body := string(pg.Body)
	if pg.Status != http.StatusOK {
		t.Fatalf("branch page: %d %s", pg.Status, tail(body, 2000))
	}
	for _, want := range []string{`data-branch="main"`, `data-branch="feature"`, `data-snapshot="` + commit + `"`, "add committed work", owner.Email,
		`/o/acme/agents/` + ag.ID + `/clones/from-commit`, "owner=ada"} {
		if !strings.Contains(body, want) {
			t.Errorf("branch page lacks %q", want)
		}
	}
	// feature was made from main's snapshot: drawn inside main's node.
	if i, j := strings.Index(body, `data-branch="main"`), strings.Index(body, `data-branch="feature"`); i < 0 || j < i {
		t.Errorf("feature is not nested after main on the page")
	}

	// The compare form and the snapshot diff page: t gained a row.
	if !strings.Contains(body, `id="compare-form"`) {
		t.Error("the branch page has no compare form")
	}
	pg = env.Do(http.MethodGet, "/o/acme/agents/"+ag.ID+"/snapshots/diff?from="+url.QueryEscape(snaps[0].ID)+"&to="+url.QueryEscape(commit), tok, nil)
	if body := string(pg.Body); pg.Status != http.StatusOK || !strings.Contains(body, `data-table="public.t"`) || !strings.Contains(body, "Changes between two snapshots") {
		t.Fatalf("snapshot diff page: %d %s", pg.Status, tail(body, 3000))
	}

	// The diff page of the first clone: table t changed, one more row.
	execClone(t, k.DB.ConnStr, "CREATE TABLE added (id int)")
	pg = env.Do(http.MethodGet, "/o/acme/agents/"+ag.ID+"/clones/on-feature/diff", tok, nil)
	body = string(pg.Body)
	if pg.Status != http.StatusOK || !strings.Contains(body, `data-table="public.t"`) || !strings.Contains(body, `data-table="public.added"`) || !strings.Contains(body, "CREATE TABLE") {
		t.Fatalf("diff page: %d %s", pg.Status, tail(body, 3000))
	}

	// Deleting a branch with clones is refused by the agent, and the
	// refusal is audited; after the clones go, it is deleted.
	if err := c.DeleteBranch(ctx, "feature"); err == nil {
		t.Fatal("deleting a branch with a clone on it was accepted")
	}
	for _, id := range []string{"on-feature", "from-commit"} {
		if err := c.DestroyClone(ctx, id); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitCloneDestroyed(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.DeleteBranch(ctx, "feature"); err != nil {
		t.Fatalf("delete the branch: %v", err)
	}
	var actions []string
	for _, e := range env.AuditEvents() {
		if strings.HasPrefix(e.Action, "branch.") {
			actions = append(actions, e.Action+" "+e.Result)
		}
	}
	want := []string{"branch.create " + store.ResultSuccess, "branch.commit " + store.ResultSuccess, "branch.delete " + store.ResultError, "branch.delete " + store.ResultSuccess}
	for _, w := range want {
		if !slices.Contains(actions, w) {
			t.Errorf("audit lacks %q (has %v)", w, actions)
		}
	}
}

// execClone runs one statement that returns no rows on a clone.
func execClone(t *testing.T, connStr, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cc, err := pgx.ParseConfig(connStr + " sslmode=disable connect_timeout=10")
	if err != nil {
		t.Fatal(err)
	}
	cc.Password = clonePassword
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		t.Fatalf("connect to the clone (%s): %v", connStr, err)
	}
	defer func() { _ = conn.Close(ctx) }()
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatal(err)
	}
}
