package reflink_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/loopdev"
	"github.com/thinlab/thinlab/agent/storage/reflink"
	"github.com/thinlab/thinlab/agent/storage/storagetest"
	"github.com/thinlab/thinlab/internal/command"
	"github.com/thinlab/thinlab/internal/testenv"
)

func TestConformance(t *testing.T) {
	storagetest.RunConformance(t, storage.ModeReflink, func(t *testing.T) storage.Pool {
		return storagetest.NewLoopPool(t, storage.ModeReflink)
	})
}

// An ext4 filesystem cannot share extents: Open must say so before
// creating anything.
func TestRefusesExt4(t *testing.T) {
	testenv.NeedsRoot(t, "root, for a loop device")
	ctx := t.Context()
	r := command.Runner{}
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "ext4.img"), filepath.Join(dir, "mnt")
	if err := loopdev.CreateImage(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	dev, err := loopdev.Attach(ctx, r, img)
	if err != nil {
		t.Fatal(err)
	}
	// Background inside: t.Context() is already cancelled when cleanups run.
	t.Cleanup(func() {
		if err := loopdev.Detach(context.Background(), r, dev); err != nil {
			t.Errorf("cleanup: detach %s: %v", dev, err)
		}
	})
	if _, err := r.Run(ctx, "mkfs.ext4", "-q", dev); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Run(ctx, "mount", dev, mnt); err != nil {
		t.Fatal(err)
	}
	// Background inside: t.Context() is already cancelled when cleanups run.
	t.Cleanup(func() {
		if _, err := r.Run(context.Background(), "umount", mnt); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})

	_, err = reflink.Open(ctx, reflink.Config{Name: "ext", Path: mnt})
	if err == nil || !strings.Contains(err.Error(), "ext4") || !strings.Contains(err.Error(), "reflink=1") {
		t.Fatalf("Open on ext4: %v, want an error naming ext4 and the fix", err)
	}
	t.Log(err)
	entries, _ := os.ReadDir(mnt)
	for _, e := range entries {
		if e.Name() != "lost+found" {
			t.Errorf("Open left %s behind on ext4", e.Name())
		}
	}
}

// A snapshot needs new inodes for every file it copies. With the
// filesystem full (data and inodes: storagetest.FillUp keeps filling until
// even an empty file cannot be created after a sync), cp fails part-way:
// the error must be ErrNoSpace and the half-made copy must be gone.
func TestFullFilesystemLeavesNothing(t *testing.T) {
	p := storagetest.NewLoopPoolSize(t, storage.ModeReflink, 320<<20).(*reflink.Pool)
	ctx := t.Context()
	for i := range 100 { // files for the snapshot to copy
		if err := os.WriteFile(filepath.Join(p.MainDir(), fmt.Sprintf("f%04d", i)), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	storagetest.FillUp(t, filepath.Join(p.MainDir(), "filler"))
	_, err := p.Snapshot(ctx, storage.SnapshotOptions{})
	if err == nil {
		t.Fatal("snapshot of a full filesystem succeeded, want ErrNoSpace (FillUp left no room for a single file)")
	}
	if !errors.Is(err, storage.ErrNoSpace) {
		t.Fatalf("snapshot in a full filesystem: %v, want ErrNoSpace", err)
	}
	t.Log(err)
	entries, _ := os.ReadDir(filepath.Join(p.Path(), "snapshots"))
	if len(entries) != 0 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Fatalf("snapshots directory holds %v after a failed snapshot", names)
	}
	if snaps, _ := p.Snapshots(ctx); len(snaps) != 0 {
		t.Fatalf("snapshots listed after a failed snapshot: %v", snaps)
	}
}
