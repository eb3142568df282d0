package physical

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/internal/testenv"
)

// TestBarman: the first copy by Barman recover from a local Barman
// server, a standby fed by barman get-wal.
func TestBarman(t *testing.T) {
	testenv.NeedsSystem(t, "root, PostgreSQL and the backup tools (run make deps)")
	tool := lookTool(t, "barman")
	dir := toolDir(t)
	conf := filepath.Join(dir, "barman.conf")
	home := filepath.Join(dir, "home")
	h := newHarness(t, config.ToolBarman, func(h *harness) {
		sock := h.src.Cluster.DataDir
		writeAs(t, conf, fmt.Sprintf(`[barman]
barman_home = %[1]s
barman_user = postgres
log_file = %[2]s/barman.log
log_level = WARNING

[pg]
description = thinlab test source
conninfo = host=%[3]s port=%[4]d user=postgres dbname=postgres
streaming_conninfo = host=%[3]s port=%[4]d user=postgres
backup_method = postgres
archiver = on
path_prefix = /usr/lib/postgresql/15/bin
`, home, dir, sock, h.src.Port))
		barman := func(args ...string) string { return runAs(t, nil, tool, append([]string{"-c", conf}, args...)...) }
		incoming := filepath.Join(home, "pg", "incoming")
		runAs(t, nil, "mkdir", "-p", incoming)
		h.restartSource(map[string]string{
			"archive_mode":    "on",
			"archive_command": fmt.Sprintf("test ! -f %[1]s/%%f && cp %%p %[1]s/%%f", incoming),
		})
		h.afterSwitch = func() {
			// archive-wal moves what reached incoming into the archive
			// get-wal reads; the archiver may need a moment.
			time.Sleep(time.Second)
			barman("archive-wal", "pg")
		}
		h.switchWAL()
		barman("backup", "--wait", "--wait-timeout", "120", "pg")
		h.cfg.Retrieval.Source = config.Source{}
		h.cfg.Retrieval.Physical.Barman = config.PhysicalBarman{Server: "pg", ConfigFile: conf}
		h.cfg.Retrieval.Physical.ToolPath = tool
	})
	if err := h.r.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	h.waitReplayed("initial")
	h.checkCycleShowsNewRows(true)
}
