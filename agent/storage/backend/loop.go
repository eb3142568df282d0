package backend

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/loopdev"
	"github.com/thinlab/thinlab/agent/storage/zfs"
	"github.com/thinlab/thinlab/internal/command"
)

// LoopOptions describe a throwaway pool on an image file.
type LoopOptions struct {
	// Dir holds everything of the pool: the image (pool.img), the
	// filesystem's mountpoint (mnt) and, for zfs, the clones (clones).
	// It is created when missing and must be empty otherwise.
	Dir string
	// Size of the sparse image in bytes; default 4 GiB.
	Size int64
	// Name is the pool's name (and zpool name for zfs: unique on the
	// host); default "loop" plus a random suffix.
	Name string
	// Owner, when set, owns each clone's root (the postgres OS user).
	Owner  *storage.Owner
	Runner *command.Runner
	Logger *slog.Logger
}

// DefaultLoopSize is the image size when LoopOptions.Size is zero.
const DefaultLoopSize = 4 << 30

// CreateLoopPool makes a real pool of mode on a sparse image file under
// opt.Dir: for btrfs and reflink a loop device with a fresh btrfs or XFS
// (reflink=1) filesystem mounted at Dir/mnt, for zfs a zpool on the file
// (starting zfs-fuse when no ZFS answers). The returned teardown unmounts,
// detaches, destroys the zpool, stops a zfs-fuse it started and removes
// the files; it is safe to call more than once. Clones' processes must be
// stopped before it runs. On error nothing is left behind.
func CreateLoopPool(ctx context.Context, mode string, opt LoopOptions) (storage.Pool, func() error, error) {
	if opt.Dir == "" || !filepath.IsAbs(opt.Dir) {
		return nil, nil, fmt.Errorf("loop pool: dir %q must be an absolute path", opt.Dir)
	}
	if opt.Size == 0 {
		opt.Size = DefaultLoopSize
	}
	if opt.Name == "" {
		b := make([]byte, 4)
		rand.Read(b)
		opt.Name = "loop" + hex.EncodeToString(b)
	}
	if err := storage.ValidateName("pool name", opt.Name); err != nil {
		return nil, nil, err
	}
	var r command.Runner
	if opt.Runner != nil {
		r = *opt.Runner
	}
	if r.Logger == nil {
		r.Logger = opt.Logger
	}
	createdDir := false
	if entries, err := os.ReadDir(opt.Dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(opt.Dir, 0o755); err != nil { //nolint:gosec // 0755: the postgres OS user traverses it to reach PGDATA
			return nil, nil, fmt.Errorf("loop pool: %w", err)
		}
		createdDir = true
	} else if err != nil {
		return nil, nil, fmt.Errorf("loop pool: %w", err)
	} else if len(entries) > 0 {
		return nil, nil, fmt.Errorf("loop pool: dir %s is not empty; give each loop pool its own directory", opt.Dir)
	}
	// The postgres user walks through Dir to reach PGDATA.
	if err := os.Chmod(opt.Dir, 0o755); err != nil { //nolint:gosec // 0755: the postgres OS user traverses it to reach PGDATA
		return nil, nil, fmt.Errorf("loop pool: %w", err)
	}
	lp := &loopPool{r: r, dir: opt.Dir, createdDir: createdDir, image: filepath.Join(opt.Dir, "pool.img"), mnt: filepath.Join(opt.Dir, "mnt")}
	p, err := lp.create(ctx, mode, opt)
	if err != nil {
		if terr := lp.teardown(); terr != nil {
			err = fmt.Errorf("%w (and cleaning up: %v)", err, terr)
		}
		return nil, nil, err
	}
	return p, lp.teardown, nil
}

// loopPool remembers what CreateLoopPool made, to undo it in order.
type loopPool struct {
	r          command.Runner
	dir        string
	createdDir bool
	image      string
	mnt        string
	dev        string // attached loop device
	mounted    bool
	zpool      string
	zfsd       bool // holds a reference on the zfs-fuse daemon

	once sync.Mutex
	done bool
	err  error
}

func (lp *loopPool) create(ctx context.Context, mode string, opt LoopOptions) (storage.Pool, error) {
	cfg := Config{Name: opt.Name, Mode: mode, Path: lp.mnt, Owner: opt.Owner, Runner: &lp.r, Logger: opt.Logger}
	switch mode {
	case storage.ModeBtrfs, storage.ModeReflink:
		if err := loopdev.CreateImage(lp.image, opt.Size); err != nil {
			return nil, err
		}
		dev, err := loopdev.Attach(ctx, lp.r, lp.image)
		if err != nil {
			return nil, err
		}
		lp.dev = dev
		mkfs := []string{"mkfs.btrfs", "-q", "-f", dev}
		if mode == storage.ModeReflink {
			mkfs = []string{"mkfs.xfs", "-q", "-f", "-m", "reflink=1", dev}
		}
		if _, err := lp.r.Run(ctx, mkfs[0], mkfs[1:]...); err != nil {
			return nil, fmt.Errorf("loop pool: make filesystem: %w", err)
		}
		if err := os.MkdirAll(lp.mnt, 0o755); err != nil { //nolint:gosec // 0755: the postgres OS user traverses it to reach PGDATA
			return nil, err
		}
		if _, err := lp.r.Run(ctx, "mount", dev, lp.mnt); err != nil {
			return nil, fmt.Errorf("loop pool: mount: %w", err)
		}
		lp.mounted = true
		if err := os.Chmod(lp.mnt, 0o755); err != nil { //nolint:gosec // 0755: the postgres OS user traverses it to reach PGDATA
			return nil, err
		}
	case storage.ModeZFS:
		if err := zfs.AcquireDaemon(ctx); err != nil {
			return nil, err
		}
		lp.zfsd = true
		if err := zfs.CreateFilePool(ctx, lp.r, opt.Name, lp.image, opt.Size, lp.mnt); err != nil {
			return nil, err
		}
		lp.zpool = opt.Name
		cfg.Path = opt.Name
		cfg.ClonesDir = filepath.Join(lp.dir, "clones")
	case storage.ModeLVM:
		return nil, fmt.Errorf("loop pool: mode lvm needs device-mapper, which this host's kernel lacks; use zfs, btrfs or reflink")
	default:
		return nil, fmt.Errorf("loop pool: unknown mode %q: use one of zfs, btrfs, reflink", mode)
	}
	return Open(ctx, cfg)
}

// teardown undoes create; a second call returns the first one's result.
func (lp *loopPool) teardown() error {
	lp.once.Lock()
	defer lp.once.Unlock()
	if lp.done {
		return lp.err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var errs []error
	if lp.zpool != "" {
		if err := zfs.DestroyPool(ctx, lp.r, lp.zpool); err != nil {
			// Removing the image under a live pool wedges zfs-fuse: keep
			// the files and report.
			lp.done, lp.err = true, fmt.Errorf("loop pool teardown: %w (files kept in %s)", err, lp.dir)
			return lp.err
		}
		lp.zpool = ""
	}
	if lp.zfsd {
		zfs.ReleaseDaemon()
		lp.zfsd = false
	}
	if lp.mounted {
		if err := unmount(ctx, lp.r, lp.mnt); err != nil {
			lp.done, lp.err = true, fmt.Errorf("loop pool teardown: %w (loop device %s and files in %s kept)", err, lp.dev, lp.dir)
			return lp.err
		}
		lp.mounted = false
	}
	if lp.dev != "" {
		if err := loopdev.Detach(ctx, lp.r, lp.dev); err != nil {
			errs = append(errs, err)
		}
		lp.dev = ""
	}
	// Remove only what this package put there, unless it made the dir.
	if lp.createdDir {
		if err := os.RemoveAll(lp.dir); err != nil {
			errs = append(errs, err)
		}
	} else {
		for _, n := range []string{"pool.img", "mnt", "clones"} {
			if err := os.RemoveAll(filepath.Join(lp.dir, n)); err != nil {
				errs = append(errs, err)
			}
		}
	}
	lp.done, lp.err = true, errors.Join(errs...)
	return lp.err
}

// unmount retries while the filesystem is busy (a process that is just
// exiting still holds it for a moment).
func unmount(ctx context.Context, r command.Runner, dir string) error {
	var err error
	for i := range 20 {
		if i > 0 {
			select {
			case <-ctx.Done():
				return fmt.Errorf("unmount %s: %w (last error: %v)", dir, ctx.Err(), err)
			case <-time.After(250 * time.Millisecond):
			}
		}
		_, err = r.Run(ctx, "umount", dir)
		var ce *command.Error
		if err == nil || (errors.As(err, &ce) && strings.Contains(ce.Stderr, "not mounted")) {
			return nil
		}
	}
	return fmt.Errorf("unmount %s (still busy: stop the processes using it): %w", dir, err)
}
