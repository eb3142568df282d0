//go:build lvmvm

// The conformance suite lives in an external test package: storagetest
// imports the backend selector, which may import this package.
package lvm_test

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/lvm"
	"github.com/thinlab/thinlab/agent/storage/storagetest"
	"github.com/thinlab/thinlab/internal/command"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

// TestInVMConformance runs storagetest's conformance suite (real
// PostgreSQL) against LVM thin pools. Like the other TestInVM* tests it
// runs only inside the VM started by TestLVMInQEMU. Each subtest gets a
// fresh Thinlab pool in one shared VG/thin pool; main is smaller than the
// thin pool, so the FullPool subtest fills main's filesystem, not the
// thin pool (a full thin pool stalls writes for a minute and then fails
// them, which no filesystem survives cleanly).
func TestInVMConformance(t *testing.T) {
	disk := os.Getenv("VMTEST_DISK")
	if disk == "" {
		t.Fatal("VMTEST_DISK is not set")
	}
	// Not t.Context(): ctx is used by the cleanups below (lvmCmd, umount),
	// which run after t.Context() is cancelled.
	ctx := context.Background()
	run := &command.Runner{}
	lvmCmd := func(args ...string) (string, error) {
		out, err := run.RunCmd(ctx, command.Cmd{Name: "lvm", Args: args, Env: []string{"DM_DISABLE_UDEV=1"}})
		return string(out), err
	}
	vg := fmt.Sprintf("tlconf%d", rand.IntN(1e6))
	for _, args := range [][]string{{"pvcreate", "-y", disk}, {"vgcreate", vg, disk}} {
		if _, err := lvmCmd(args...); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, args := range [][]string{{"vgremove", "-y", "-ff", vg}, {"pvremove", "-y", disk}} {
			if _, err := lvmCmd(args...); err != nil {
				t.Errorf("cleanup: lvm %v: %v", args, err)
			}
		}
	})
	if _, err := lvmCmd("lvcreate", "-y", "-L", "1536M", "-T", vg+"/tpool"); err != nil {
		t.Fatal(err)
	}
	root, err := os.MkdirTemp("", "thinlab-lvmconf-")
	if err != nil {
		t.Fatal(err)
	}
	// The postgres user traverses root on the way to each clone's PGDATA.
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(root); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	u, err := pgcluster.LookupUser("postgres")
	if err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	var n atomic.Int32
	storagetest.RunConformance(t, storage.ModeLVM, func(t *testing.T) storage.Pool {
		name := fmt.Sprintf("cf%d", n.Add(1))
		cfg := lvm.Config{Name: name, VG: vg, ThinPool: "tpool", MountRoot: filepath.Join(root, name), MainSize: "320M",
			Owner: &storage.Owner{UID: int(u.UID), GID: int(u.GID)}, NoUdev: true, Logger: quiet}
		p, err := lvm.Open(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			// Whatever the subtest left: its mounts, then its LVs.
			for _, m := range mountsBelow(cfg.MountRoot) {
				if _, err := run.Run(ctx, "umount", m); err != nil {
					t.Errorf("cleanup: %v", err)
				}
			}
			out, err := lvmCmd("lvs", "--noheadings", "-o", "lv_name", vg)
			if err != nil {
				t.Errorf("cleanup: list LVs: %v", err)
			}
			for lv := range strings.FieldsSeq(out) {
				if strings.HasPrefix(lv, name+"_") {
					if _, err := lvmCmd("lvremove", "-y", vg+"/"+lv); err != nil {
						t.Errorf("cleanup: %v", err)
					}
				}
			}
			if err := os.RemoveAll(cfg.MountRoot); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		})
		return p
	})
}

// mountsBelow lists mountpoints at or below root, deepest first.
func mountsBelow(root string) []string {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return nil
	}
	var out []string
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && (f[1] == root || strings.HasPrefix(f[1], root+"/")) {
			out = append([]string{f[1]}, out...)
		}
	}
	return out
}
