package cli

import (
	"strings"
	"testing"

	"github.com/thinlab/thinlab/sdk/agentapi"
)

// TestBranchCommandsAgainstRealAgent drives branch list/create/log/delete,
// clone create --branch and commit against a real agent and pool: a
// commit made through the CLI is what the next clone on the branch sees.
func TestBranchCommandsAgainstRealAgent(t *testing.T) {
	isolate(t)
	url, _, snaps := startAgent(t, []string{"CREATE TABLE t (v text)", "INSERT INTO t VALUES ('one')"})
	t.Setenv("THINLAB_PSQL", realPsql(t))
	mustRun(t, "context", "add", "it", "--url", url, "--token", itToken)

	out, _ := mustRun(t, "branch", "list")
	if !strings.Contains(out, "main") || !strings.Contains(out, snaps[0].ID) {
		t.Fatalf("branch list:\n%s", out)
	}
	out, _ = mustRun(t, "branch", "create", "feature")
	if !strings.Contains(out, "Branch feature created") {
		t.Fatalf("branch create:\n%s", out)
	}
	// Bad names are refused before any request (exit 2).
	for _, name := range []string{"../x", "a/b", "a b", "x.y"} {
		if code, _, errOut := runCLI(t, "", "branch", "create", name); code != 2 || !strings.Contains(errOut, "no spaces, slashes or dots") {
			t.Fatalf("branch create %q: exit %d %s", name, code, errOut)
		}
	}
	if code, _, errOut := runCLI(t, "", "commit", "nope"); code != 2 || !strings.Contains(errOut, "-m/--message is required") {
		t.Fatalf("commit without -m: exit %d %s", code, errOut)
	}
	if code, _, errOut := runCLI(t, "", "clone", "create", "--username", "a", "--branch", "feature", "--snapshot", snaps[0].ID); code != 2 || !strings.Contains(errOut, "either --branch or --snapshot") {
		t.Fatalf("clone create --branch --snapshot: exit %d %s", code, errOut)
	}
	// The agent's refusal reaches the user (exit 1).
	if code, _, errOut := runCLI(t, "", "branch", "create", "feature"); code != 1 || !strings.Contains(errOut, "already exists") {
		t.Fatalf("branch create of an existing branch: exit %d %s", code, errOut)
	}

	out, _ = mustRun(t, "clone", "create", "--id", "b1", "--username", "alice", "--password", itPassword, "--branch", "feature", "-o", "json")
	if c := decode[agentapi.Clone](t, out); c.Branch != "feature" || c.Status.Code != agentapi.StatusOK {
		t.Fatalf("clone on feature: %+v", c)
	}
	mustRun(t, "connect", "b1", "--", "-XAtc", "INSERT INTO t VALUES ('on feature')")
	out, _ = mustRun(t, "commit", "b1", "-m", "a row on feature", "-o", "json")
	commit := decode[agentapi.CommitResponse](t, out).SnapshotID
	if commit == "" {
		t.Fatalf("commit printed %s", out)
	}
	out, _ = mustRun(t, "branch", "log", "feature")
	if !strings.Contains(out, "snapshot "+commit+" (feature)") || !strings.Contains(out, "a row on feature") || !strings.Contains(out, "Author:   alice") || !strings.Contains(out, snaps[0].ID) {
		t.Fatalf("branch log:\n%s", out)
	}
	mustRun(t, "clone", "create", "--id", "b2", "--username", "bob", "--password", itPassword, "--branch", "feature")
	out, _ = mustRun(t, "connect", "b2", "--", "-XAtc", "SELECT string_agg(v, ',' ORDER BY v) FROM t")
	if strings.TrimSpace(out) != "on feature,one" {
		t.Fatalf("clone of the commit sees %q", out)
	}
	if code, _, errOut := runCLI(t, "", "branch", "delete", "feature"); code != 1 || !strings.Contains(errOut, "clone") {
		t.Fatalf("branch delete while clones use it: exit %d %s", code, errOut)
	}
	if code, _, errOut := runCLI(t, "", "branch", "delete", "main"); code != 1 || !strings.Contains(errOut, "cannot delete default branch") {
		t.Fatalf("branch delete main: exit %d %s", code, errOut)
	}
	// What b1 changed since the snapshot it was made from, and the
	// commit against that snapshot: the row on feature; b2 (made from
	// the commit) changed nothing.
	out, _ = mustRun(t, "clone", "diff", "b1")
	if !strings.Contains(out, "public.t") || !strings.Contains(out, "1 -> 2") {
		t.Fatalf("clone diff of b1:\n%s", out)
	}
	out, _ = mustRun(t, "clone", "diff", "b2")
	if !strings.Contains(out, "No table differs.") {
		t.Fatalf("clone diff after commit:\n%s", out)
	}
	out, _ = mustRun(t, "snapshot", "diff", snaps[0].ID, commit)
	if !strings.Contains(out, "public.t") || !strings.Contains(out, "1 -> 2") {
		t.Fatalf("snapshot diff:\n%s", out)
	}
	out, _ = mustRun(t, "branch", "protect", "feature", "--minutes", "60")
	if !strings.Contains(out, "Branch feature is protected until") {
		t.Fatalf("branch protect:\n%s", out)
	}
	mustRun(t, "branch", "protect", "feature", "--off")
	mustRun(t, "clone", "destroy", "b1")
	mustRun(t, "clone", "destroy", "b2")
	out, _ = mustRun(t, "branch", "delete", "feature")
	if !strings.Contains(out, "Deleted branch feature") {
		t.Fatalf("branch delete:\n%s", out)
	}
	out, _ = mustRun(t, "branch", "list", "-o", "json")
	if list := decode[[]agentapi.BranchView](t, out); len(list) != 1 || list[0].Name != "main" {
		t.Fatalf("branches after delete: %+v", list)
	}
}
