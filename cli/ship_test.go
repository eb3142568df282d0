package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/thinlab/thinlab/sdk/agentapi"
)

// TestSnapshotShipCommands: snapshot export to a file on one real agent,
// snapshot import of that file on another, and snapshot ship from the
// first to the second (the token from an environment variable).
func TestSnapshotShipCommands(t *testing.T) {
	isolate(t)
	src, _, snaps := startAgent(t, []string{"CREATE TABLE t (v text)"}, []string{"INSERT INTO t VALUES ('x')"})
	dst, dstPool, _ := startAgent(t)

	file := filepath.Join(t.TempDir(), "s1.stream")
	mustRun(t, "snapshot", "export", snaps[0].ID, "-f", file, "--url", src, "--token", itToken)
	if fi, err := os.Stat(file); err != nil || fi.Size() == 0 {
		t.Fatalf("export wrote no stream: %v", err)
	}
	out, _ := mustRun(t, "snapshot", "import", "-f", file, "-o", "json", "--url", dst, "--token", itToken)
	if s := decode[agentapi.Snapshot](t, out); !strings.HasPrefix(s.ID, dstPool.Name()+"@") {
		t.Fatalf("snapshot import: %+v, want a snapshot of %s", s, dstPool.Name())
	}

	t.Setenv("RECEIVER_TOKEN", itToken)
	out, _ = mustRun(t, "snapshot", "ship", snaps[1].ID, "--base", snaps[0].ID, "--to", dst, "--to-token-env", "RECEIVER_TOKEN", "--url", src, "--token", itToken)
	if !strings.Contains(out, "incremental since") {
		t.Fatalf("snapshot ship --base: %s", out)
	}

	code, _, errOut := runCLI(t, "", "snapshot", "ship", snaps[1].ID, "--to", dst, "--url", src, "--token", itToken)
	if code != 2 || !strings.Contains(errOut, "--to-token-env") {
		t.Fatalf("ship without a token variable: exit %d, %s; want a usage error naming --to-token-env", code, errOut)
	}
}
