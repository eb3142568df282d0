package cli

import (
	"strings"
	"testing"

	"github.com/thinlab/thinlab/sdk/agentapi"
)

// TestLabelCommandsAgainstRealAgent: clone create --label, clone/snapshot/
// branch label (set, remove, show) and list --label filters against a
// real agent; bad labels and filters are usage errors (exit 2) before
// any request.
func TestLabelCommandsAgainstRealAgent(t *testing.T) {
	isolate(t)
	url, _, snaps := startAgent(t, []string{"CREATE TABLE t (v text)"})
	mustRun(t, "context", "add", "it", "--url", url, "--token", itToken)

	out, _ := mustRun(t, "clone", "create", "--id", "l1", "--username", "alice", "--password", itPassword, "--label", "team=data", "--label", "ticket=DB-42", "-o", "json")
	if c := decode[agentapi.Clone](t, out); c.Labels["team"] != "data" || c.Labels["ticket"] != "DB-42" {
		t.Fatalf("clone create --label: %+v", c.Labels)
	}
	mustRun(t, "clone", "create", "--id", "l2", "--username", "alice", "--password", itPassword)

	out, _ = mustRun(t, "clone", "list", "--label", "team=data")
	if !strings.Contains(out, "l1") || strings.Contains(out, "l2") || !strings.Contains(out, "LABELS") || !strings.Contains(out, "team=data, ticket=DB-42") {
		t.Fatalf("clone list --label team=data:\n%s", out)
	}
	out, _ = mustRun(t, "clone", "list")
	if !strings.Contains(out, "l1") || !strings.Contains(out, "l2") {
		t.Fatalf("clone list:\n%s", out)
	}

	out, _ = mustRun(t, "clone", "label", "l1", "ticket-", "owner=ada")
	if !strings.Contains(out, "owner") || !strings.Contains(out, "team") || strings.Contains(out, "ticket") {
		t.Fatalf("clone label l1 ticket- owner=ada:\n%s", out)
	}
	out, _ = mustRun(t, "clone", "status", "l1")
	if !strings.Contains(out, "Labels:") || !strings.Contains(out, "owner=ada, team=data") {
		t.Fatalf("clone status shows no labels:\n%s", out)
	}

	out, _ = mustRun(t, "snapshot", "label", snaps[0].ID, "source=prod")
	if !strings.Contains(out, "source") {
		t.Fatalf("snapshot label:\n%s", out)
	}
	out, _ = mustRun(t, "snapshot", "list", "--label", "source=staging")
	if strings.Contains(out, snaps[0].ID) {
		t.Fatalf("snapshot list --label source=staging shows the prod snapshot:\n%s", out)
	}
	out, _ = mustRun(t, "snapshot", "list", "--label", "source")
	if !strings.Contains(out, snaps[0].ID) {
		t.Fatalf("snapshot list --label source:\n%s", out)
	}

	mustRun(t, "branch", "create", "exp")
	mustRun(t, "branch", "label", "exp", "owner=ada")
	out, _ = mustRun(t, "branch", "list", "--label", "owner=ada")
	if !strings.Contains(out, "\nexp ") || strings.Contains(out, "\nmain ") {
		t.Fatalf("branch list --label owner=ada:\n%s", out)
	}

	// Usage errors, exit 2, naming what is wrong.
	for _, args := range [][]string{
		{"clone", "label", "l1", "bad key=x"},
		{"clone", "label", "l1", "novalue"},
		{"clone", "list", "--label", "bad key"},
		{"clone", "create", "--username", "a", "--password", itPassword, "--label", "x-"},
	} {
		if code, _, errOut := runCLI(t, "", args...); code != 2 || !strings.Contains(errOut, "label") {
			t.Errorf("%v: exit %d %s, want 2 naming the label", args, code, errOut)
		}
	}
	// The agent's refusal of an unknown clone (exit 1).
	if code, _, _ := runCLI(t, "", "clone", "label", "nope", "a=b"); code != 1 {
		t.Errorf("label of an unknown clone: exit %d, want 1", code)
	}
}
