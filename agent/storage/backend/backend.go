// Package backend opens the storage.Pool a configuration asks for (zfs,
// btrfs, reflink or lvm) and makes throwaway pools on loop files for the
// demo, tests and benchmarks.
package backend

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/btrfs"
	"github.com/thinlab/thinlab/agent/storage/reflink"
	"github.com/thinlab/thinlab/agent/storage/zfs"
	"github.com/thinlab/thinlab/internal/command"
)

// Config is one pool as the agent's configuration describes it.
type Config struct {
	// Name is the pool's name, the prefix of its snapshot IDs.
	Name string
	// Mode is the backend: zfs, btrfs, reflink or lvm.
	Mode string
	// Path locates the pool: a ZFS dataset (tank/thinlab), the directory
	// of a btrfs or reflink filesystem, or an LVM VG/thin pool.
	Path string
	// ClonesDir is where clones are mounted; empty picks the backend's
	// default.
	ClonesDir string
	// Owner, when set, owns each clone's root (the postgres OS user).
	Owner *storage.Owner
	// Runner runs the backend's tools; nil means a default Runner.
	Runner *command.Runner
	Logger *slog.Logger
}

// Open opens the pool cfg describes. Errors say which field is wrong and
// how to fix it; the caller adds where the pool is in its configuration.
func Open(ctx context.Context, cfg Config) (storage.Pool, error) {
	var r command.Runner
	if cfg.Runner != nil {
		r = *cfg.Runner
	}
	if r.Logger == nil {
		r.Logger = cfg.Logger
	}
	if cfg.Path == "" {
		return nil, fmt.Errorf("pool %s: path is empty: set it to %s", cfg.Name, pathHint(cfg.Mode))
	}
	switch cfg.Mode {
	case storage.ModeZFS:
		return zfs.Open(ctx, zfs.Config{Name: cfg.Name, Dataset: cfg.Path, ClonesDir: cfg.ClonesDir, Owner: cfg.Owner, Runner: r, Logger: cfg.Logger})
	case storage.ModeBtrfs:
		return btrfs.Open(ctx, btrfs.Config{Name: cfg.Name, Path: cfg.Path, ClonesDir: cfg.ClonesDir, Owner: cfg.Owner, Runner: r, Logger: cfg.Logger})
	case storage.ModeReflink:
		return reflink.Open(ctx, reflink.Config{Name: cfg.Name, Path: cfg.Path, ClonesDir: cfg.ClonesDir, Owner: cfg.Owner, Runner: r, Logger: cfg.Logger})
	case storage.ModeLVM:
		return openLVM(ctx, cfg, r)
	case "":
		return nil, fmt.Errorf("pool %s: mode is empty: set it to one of %s", cfg.Name, modeList)
	default:
		return nil, fmt.Errorf("pool %s: unknown mode %q: use one of %s", cfg.Name, cfg.Mode, modeList)
	}
}

const modeList = "zfs, btrfs, reflink, lvm"

func pathHint(mode string) string {
	switch mode {
	case storage.ModeZFS:
		return "the pool's ZFS dataset, such as tank/thinlab"
	case storage.ModeBtrfs:
		return "the mountpoint of a btrfs filesystem"
	case storage.ModeReflink:
		return "a directory on an XFS (mkfs.xfs -m reflink=1) or btrfs filesystem"
	case storage.ModeLVM:
		return "the LVM volume group and thin pool, VG/THINPOOL"
	}
	return "the pool's location (its meaning depends on mode: " + modeList + ")"
}
