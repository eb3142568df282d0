package physical

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/internal/testenv"
)

// TestCommandRsync: the first copy by a configured command (rsync of a
// base backup) run as provision.osUser, never root; the standby streams
// from the source.
func TestCommandRsync(t *testing.T) {
	testenv.NeedsSystem(t, "root, PostgreSQL and the backup tools (run make deps)")
	rsync := lookTool(t, "rsync")
	dir := toolDir(t)
	backup := filepath.Join(dir, "backup")
	who := filepath.Join(dir, "who")
	h := newHarness(t, config.ToolCommand, func(h *harness) {
		runAs(t, nil, "/usr/lib/postgresql/15/bin/pg_basebackup",
			"-D", backup, "-X", "stream", "-c", "fast", "-h", h.src.Cluster.DataDir, "-p", itoa(h.src.Port), "-U", "postgres")
		h.cfg.Retrieval.Physical.Command = "id -un > " + shQuote(who) + " && " + rsync + " -a " + shQuote(backup+"/") + ` "$PGDATA/"`
	})
	if err := h.r.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(who)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(raw)); got != "postgres" {
		t.Errorf("the command ran as %q, want the retrieval OS user postgres", got)
	}
	h.waitReplayed("initial")
	h.checkCycleShowsNewRows(false)
}

// TestCommandFailure: a failing command fails the refresh with its
// output in the error and the status.
func TestCommandFailure(t *testing.T) {
	h := newHarness(t, config.ToolCommand, func(h *harness) {
		h.cfg.Retrieval.Physical.Command = "echo the backup host is gone >&2; exit 3"
	})
	err := h.r.Refresh(context.Background())
	if err == nil || !strings.Contains(err.Error(), "the backup host is gone") {
		t.Fatalf("refresh error %v, want the command's stderr in it", err)
	}
	st := h.r.Status()
	if st.Status != StatusFailed || !strings.Contains(st.Alerts[AlertRefreshFailed].Message, "the backup host is gone") {
		t.Errorf("status %+v, want failed with the command's output in the refresh_failed alert", st)
	}
}
