package btrfs

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/loopdev"
	"github.com/thinlab/thinlab/agent/storage/spacecache"
	"github.com/thinlab/thinlab/internal/command"
	"github.com/thinlab/thinlab/internal/testenv"
)

func TestParseDu(t *testing.T) {
	out := []byte("     Total   Exclusive  Set shared  Filename\n" +
		"  20971520           0    20971520  /mnt/a\n" +
		"  20971520     5242880    15728640  /mnt/with space\n")
	want := map[string]spacecache.Use{
		"/mnt/a":          {Referenced: 20971520},
		"/mnt/with space": {Referenced: 20971520, Exclusive: 5242880},
	}
	if got := parseDu(out); !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v", got)
	}
}

func TestParseQgroups(t *testing.T) {
	out := []byte("Qgroupid    Referenced    Exclusive   Path \n" +
		"--------    ----------    ---------   ---- \n" +
		"0/5              16384        16384   <toplevel>\n" +
		"0/256         21004288        32768   main\n" +
		"1/100         21004288        32768   <under>\n")
	want := map[uint64]spacecache.Use{5: {Referenced: 16384, Exclusive: 16384}, 256: {Referenced: 21004288, Exclusive: 32768}}
	if got := parseQgroups(out); !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v", got)
	}
}

// With quotas enabled, sizes come from qgroups: after a sync a clone's
// own writes show up as its exclusive bytes.
func TestQgroupSizes(t *testing.T) {
	testenv.NeedsRoot(t, "root, for a btrfs loop pool")
	ctx := t.Context()
	r := command.Runner{}
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "q.img"), filepath.Join(dir, "mnt")
	if err := loopdev.CreateImage(img, 512<<20); err != nil {
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
	if _, err := r.Run(ctx, "mkfs.btrfs", "-q", "-f", dev); err != nil {
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
	if _, err := r.Run(ctx, "btrfs", "quota", "enable", mnt); err != nil {
		t.Fatal(err)
	}
	p, err := Open(ctx, Config{Name: "q", Path: mnt})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p.MainDir(), "data"), make([]byte, 8<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := p.Snapshot(ctx, storage.SnapshotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := p.Clone(ctx, s.ID, "c")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.Mountpoint, "own"), make([]byte, 4<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Run(ctx, "btrfs", "filesystem", "sync", mnt); err != nil {
		t.Fatal(err)
	}
	if _, ok := p.qgroups(ctx); !ok {
		t.Fatal("qgroups not read although quotas are enabled")
	}
	s, err = p.GetSnapshot(ctx, s.ID)
	if err != nil {
		t.Fatal(err)
	}
	if s.LogicalSize < 8<<20 {
		t.Errorf("snapshot referenced %d bytes, want at least 8 MiB", s.LogicalSize)
	}
	list, err := p.Clones(ctx)
	if err != nil || len(list) != 1 {
		t.Fatalf("clones %v %v", list, err)
	}
	if list[0].UsedBytes < 4<<20 || list[0].UsedBytes > 6<<20 {
		t.Errorf("clone exclusive %d bytes, want about the 4 MiB it wrote", list[0].UsedBytes)
	}
	t.Logf("snapshot %+v clone %+v", s, list[0])
}
