package physical

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/config"
)

// cloneUID is a uid from provision.cloneUIDs' default range: what a
// clone's postgres (and its hostile superuser's programs) run as.
const cloneUID = 200001

// catAs reads path as uid/gid with cat; it returns cat's error.
func catAs(t *testing.T, uid, gid uint32, path string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "cat", path)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	return cmd.Run()
}

// TestSecretsOutOfClonesReach: the source's password and the tools'
// environment are readable by provision.osUser (the tools need them) and
// by no clone's uid; neither is in the pool's data.
func TestSecretsOutOfClonesReach(t *testing.T) {
	h := newHarness(t, config.ToolBasebackup, func(h *harness) {
		h.cfg.Retrieval.Physical.Env = map[string]string{"TOOL_TOKEN": "tool-Secret-987"}
	})
	if err := h.r.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	u := h.r.user
	for _, f := range []string{envScript, passFile} {
		p := filepath.Join(h.priv, f)
		if err := catAs(t, u.UID, u.GID, p); err != nil {
			t.Errorf("provision.osUser cannot read %s: %v", p, err)
		}
		if err := catAs(t, cloneUID, cloneUID, p); err == nil {
			t.Errorf("a clone's uid %d read %s", cloneUID, p)
		}
	}
	for _, f := range []string{"postgresql.auto.conf", "postgresql.conf", "thinlab-postgres.log"} {
		raw, _ := os.ReadFile(filepath.Join(h.r.dataDir(), f))
		if strings.Contains(string(raw), "tool-Secret-987") || containsSecret(raw) {
			t.Errorf("%s in the pool's data holds a secret", f)
		}
	}
}

// TestPrivateDirSymlinkRefused: a symlink planted where the private
// directory goes is refused; root writes nothing through it.
func TestPrivateDirSymlinkRefused(t *testing.T) {
	h := newHarness(t, config.ToolBasebackup, nil)
	target := t.TempDir()
	if err := os.Symlink(target, h.priv); err != nil {
		t.Fatal(err)
	}
	err := h.r.Refresh(t.Context())
	if err == nil || !strings.Contains(err.Error(), "must be a directory owned by root") {
		t.Fatalf("refresh with the private directory a symlink: %v, want it refused", err)
	}
	if entries, _ := os.ReadDir(target); len(entries) != 0 {
		t.Errorf("root wrote %d files through the symlink into %s", len(entries), target)
	}
}
