package physical

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/internal/testenv"
)

// TestPgBackRest: the first copy by pgBackRest restore from a local
// repository, a standby fed by archive-get from the same repository.
func TestPgBackRest(t *testing.T) {
	h := pgBackRestHarness(t)
	if err := h.r.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	h.waitReplayed("initial")
	h.checkCycleShowsNewRows(true)
}

// pgBackRestHarness is a source archiving into a pgBackRest repository
// with a full backup, and a physical retrieval restoring from it.
func pgBackRestHarness(t *testing.T) *harness {
	testenv.NeedsSystem(t, "pgBackRest (run make deps)")
	tool := lookTool(t, "pgbackrest")
	dir := toolDir(t)
	conf := filepath.Join(dir, "pgbackrest.conf")
	h := newHarness(t, config.ToolPgBackRest, func(h *harness) {
		writeAs(t, conf, fmt.Sprintf(`[global]
repo1-path=%[1]s/repo
log-path=%[1]s/log
lock-path=%[1]s/lock
log-level-file=off
log-level-console=warn
start-fast=y
compress-type=none

[demo]
pg1-path=%[2]s
pg1-socket-path=%[2]s
pg1-port=%[3]d
`, dir, h.src.Cluster.DataDir, h.src.Port))
		h.cfg.Retrieval.Source = config.Source{} // the standby needs only the repository
		h.cfg.Retrieval.Physical.PgBackRest = config.PhysicalPgBackRest{Stanza: "demo", ConfigFile: conf}
		h.cfg.Retrieval.Physical.ToolPath = tool
		h.restartSource(map[string]string{
			"archive_mode":    "on",
			"archive_command": fmt.Sprintf("%s --config=%s --stanza=demo archive-push %%p", tool, conf),
		})
		runAs(t, nil, tool, "--config="+conf, "--stanza=demo", "stanza-create")
		runAs(t, nil, tool, "--config="+conf, "--stanza=demo", "--type=full", "backup")
	})
	return h
}
