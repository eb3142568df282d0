// Package storagetest gives tests real copy-on-write pools on loop files
// (btrfs, XFS reflink, zfs-fuse) that are removed at cleanup even when the
// test fails, and RunConformance, the behaviour every storage.Pool backend
// must show, checked against real PostgreSQL.
package storagetest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/backend"
	"github.com/thinlab/thinlab/agent/storage/loopdev"
	"github.com/thinlab/thinlab/agent/storage/zfs/zfstest"
	"github.com/thinlab/thinlab/internal/command"
	"github.com/thinlab/thinlab/internal/pgcluster"
	"github.com/thinlab/thinlab/internal/testenv"
)

// DefaultSize is the image size of NewLoopPool: room for a few PostgreSQL
// data directories, small enough to fill up quickly.
const DefaultSize = 512 << 20

// loopInfo is what a test pool was made of, to reopen it and to check that
// nothing of it is left after cleanup.
type loopInfo struct {
	cfg   backend.Config
	dir   string
	image string
	zpool string
}

// testLogger keeps the pools' info lines out of test output.
var testLogger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

var registry sync.Map // storage.Pool -> *loopInfo

// NewLoopPool makes a pool of mode (btrfs, reflink or zfs) of DefaultSize
// with clones owned by the postgres OS user; cleanup removes it.
func NewLoopPool(t testing.TB, mode string) storage.Pool {
	t.Helper()
	return NewLoopPoolSize(t, mode, DefaultSize)
}

// NewLoopPoolSize is NewLoopPool with an image of size bytes (sparse).
func NewLoopPoolSize(t testing.TB, mode string, size int64) storage.Pool {
	t.Helper()
	testenv.NeedsRoot(t, "root, for copy-on-write pools on loop files")
	pu, err := pgcluster.LookupUser("postgres")
	if err != nil {
		t.Fatal(err)
	}
	u := storage.Owner{UID: int(pu.UID), GID: int(pu.GID)}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if mode == storage.ModeZFS {
		// zfstest shares one zfs-fuse daemon per test binary.
		fp := zfstest.NewFilePool(t, size)
		p := fp.Open(t)
		registry.Store(storage.Pool(p), &loopInfo{
			cfg:   backend.Config{Name: fp.Name, Mode: mode, Path: fp.Name, ClonesDir: p.ClonesDir(), Owner: &u},
			dir:   fp.Dir,
			image: fp.Image,
			zpool: fp.Name,
		})
		return p
	}
	sweepCrashed(t)
	dir, err := os.MkdirTemp("", poolDirPattern())
	if err != nil {
		t.Fatal(err)
	}
	p, teardown, err := backend.CreateLoopPool(ctx, mode, backend.LoopOptions{Dir: dir, Size: size, Owner: &u, Logger: testLogger})
	if err != nil {
		_ = os.RemoveAll(dir) // best effort: the Fatal below is what matters
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := teardown(); err != nil {
			t.Errorf("cleanup of %s pool: %v", mode, err)
			return
		}
		if err := os.Remove(dir); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	registry.Store(p, &loopInfo{
		cfg:   backend.Config{Name: p.Name(), Mode: mode, Path: filepath.Dir(p.MainDir()), Owner: &u, Logger: testLogger},
		dir:   dir,
		image: filepath.Join(dir, "pool.img"),
	})
	return p
}

// Reopen opens a pool made by NewLoopPool again from scratch, as a
// restarted agent would; ok is false for pools made otherwise.
func Reopen(t testing.TB, p storage.Pool) (storage.Pool, bool) {
	t.Helper()
	v, ok := registry.Load(p)
	if !ok {
		return nil, false
	}
	info := v.(*loopInfo)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	q, err := backend.Open(ctx, info.cfg)
	if err != nil {
		t.Fatalf("reopen pool %s: %v", p.Name(), err)
	}
	return q, true
}

// checkNoLeftovers fails t if anything of the given pools survives their
// cleanup: a mount, a loop device, a zpool, a process using their files,
// or the files themselves.
func checkNoLeftovers(t *testing.T, infos []*loopInfo) {
	t.Helper()
	mounts, err := os.ReadFile("/proc/mounts")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var zpools []byte
	if _, err := exec.LookPath("zpool"); err == nil {
		zpools, _ = exec.Command("zpool", "list", "-H", "-o", "name").Output()
	}
	for _, info := range infos {
		sc := bufio.NewScanner(bytes.NewReader(mounts))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) >= 2 && (strings.HasPrefix(f[1], info.dir) || strings.HasPrefix(f[0], info.dir)) {
				t.Errorf("still mounted: %s", sc.Text())
			}
		}
		devs, err := loopdev.DevicesFor(ctx, command.Runner{}, info.image)
		if err != nil {
			t.Error(err)
		}
		if len(devs) > 0 {
			t.Errorf("loop devices still attached to %s: %v", info.image, devs)
		}
		if info.zpool != "" {
			for name := range strings.FieldsSeq(string(zpools)) {
				if name == info.zpool {
					t.Errorf("zpool %s still exists", name)
				}
			}
		}
		if _, err := os.Stat(info.dir); err == nil {
			t.Errorf("pool directory %s still exists", info.dir)
		}
		if pids := processesUsing(info.dir); len(pids) > 0 {
			t.Errorf("processes still use %s: %v", info.dir, pids)
		}
	}
}

// processesUsing finds processes whose command line or working directory
// mentions dir (a clone's postgres has its data directory in both).
func processesUsing(dir string) []string {
	entries, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range entries {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		cwd, _ := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		if bytes.Contains(cmdline, []byte(dir)) || strings.HasPrefix(cwd, dir) {
			out = append(out, fmt.Sprintf("%s (%s)", e.Name(), strings.ReplaceAll(string(cmdline), "\x00", " ")))
		}
	}
	return out
}
