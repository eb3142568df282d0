// Package btrfs is the btrfs backend of storage.Pool: copy-on-write
// subvolumes on a mounted btrfs filesystem, driven by the `btrfs` CLI.
//
// Layout below the configured Path (any directory on a btrfs filesystem,
// normally its mountpoint):
//
//	Path/main                            subvolume; PGDATA in main/pgdata (MainDir)
//	Path/snapshots/                      mode 0700, root only
//	Path/snapshots/snapshot_<ts>         read-only snapshot of main (btrfs subvolume snapshot -r)
//	Path/snapshots/snapshot_<ts>.json    its metadata
//	ClonesDir/<clone>                    writable snapshot of a snapshot, owned by Owner
//	ClonesDir/<clone>.json               its metadata (snapshot ID, creation time)
//
// ClonesDir defaults to Path/clones and must lie inside Path: a btrfs
// snapshot can only be made within the same filesystem.
//
// btrfs has no user properties, so metadata lives in a JSON sidecar file
// next to each snapshot and clone. The subvolume is the source of truth
// (a sidecar without its subvolume is ignored, a subvolume without a
// sidecar gets metadata derived from its name); the sidecar is written
// first and removed last, so a crash never leaves a clone whose snapshot
// is unknown. A fresh process rebuilds everything from these files.
//
// btrfs does not tie a writable snapshot to its source the way ZFS ties a
// clone to its origin: the dependency of clones on snapshots exists only in
// the sidecars, and DestroySnapshot enforces it.
package btrfs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/sidecar"
	"github.com/thinlab/thinlab/agent/storage/spacecache"
	"github.com/thinlab/thinlab/internal/command"
)

// Config describes one btrfs pool.
type Config struct {
	// Name is the pool's name in Thinlab: the prefix of snapshot IDs.
	Name string
	// Path is a directory on a mounted btrfs filesystem that holds main
	// and snapshots.
	Path string
	// ClonesDir holds one subvolume per clone. Default Path/clones; it
	// must lie inside Path (same filesystem).
	ClonesDir string
	// Owner, when set, owns each clone's root directory (the postgres OS
	// user); PGDATA inside keeps the ownership it had in the snapshot.
	Owner *storage.Owner
	// Runner runs btrfs; Logger defaults to slog.Default().
	Runner command.Runner
	Logger *slog.Logger
}

// Pool is a storage.Pool on btrfs. Its state is the filesystem: several
// Pool values (or processes) on the same Path see the same thing; the
// mutex only orders this process's changes.
type Pool struct {
	cfg     Config
	mainDir string
	snapDir string
	layout  sidecar.Layout
	log     *slog.Logger
	mu      sync.Mutex
	sizes   spacecache.Cache
	// receiving holds the names of snapshots being received (ship.go).
	receiving map[string]bool
}

var (
	_ storage.Pool             = (*Pool)(nil)
	_ storage.CloneSnapshotter = (*Pool)(nil)
)

// Open checks cfg, creates main, snapshots and clones directories when
// missing and removes sidecar temp files a crash left behind.
func Open(ctx context.Context, cfg Config) (*Pool, error) {
	var err error
	cfg.Path, cfg.ClonesDir, err = sidecar.CleanPaths("btrfs", cfg.Name, cfg.Path, cfg.ClonesDir, "the mountpoint of a btrfs filesystem")
	if err != nil {
		return nil, err
	}
	if !within(cfg.ClonesDir, cfg.Path) || cfg.ClonesDir == cfg.Path {
		return nil, fmt.Errorf("btrfs pool %s: clonesDir %s must lie inside path %s: btrfs snapshots cannot cross filesystems (leave clonesDir empty for %s/clones)", cfg.Name, cfg.ClonesDir, cfg.Path, cfg.Path)
	}
	if err := checkBtrfs(cfg.Path); err != nil {
		return nil, fmt.Errorf("btrfs pool %s: %w", cfg.Name, err)
	}
	for _, reserved := range []string{"main", "snapshots"} {
		if within(cfg.ClonesDir, filepath.Join(cfg.Path, reserved)) {
			return nil, fmt.Errorf("btrfs pool %s: clonesDir %s must not lie inside %s, which the pool uses itself", cfg.Name, cfg.ClonesDir, filepath.Join(cfg.Path, reserved))
		}
	}
	p := &Pool{
		cfg:     cfg,
		mainDir: filepath.Join(cfg.Path, "main"),
		snapDir: filepath.Join(cfg.Path, "snapshots"),
		log:     cfg.Logger,
	}
	if p.log == nil {
		p.log = slog.Default()
	}
	p.log = p.log.With("pool", cfg.Name, "path", cfg.Path)
	p.layout = sidecar.Layout{Mode: "btrfs", Pool: cfg.Name, SnapshotsDir: p.snapDir, ClonesDir: cfg.ClonesDir, IsDataset: isSubvolume, Log: p.log}

	switch _, err := os.Lstat(p.mainDir); {
	case errors.Is(err, fs.ErrNotExist):
		if err := p.btrfs(ctx, "subvolume", "create", p.mainDir); err != nil {
			return nil, fmt.Errorf("btrfs pool %s: create main subvolume: %w", cfg.Name, err)
		}
	case err != nil:
		return nil, fmt.Errorf("btrfs pool %s: %w", cfg.Name, err)
	case !isSubvolume(p.mainDir):
		return nil, fmt.Errorf("btrfs pool %s: %s exists but is not a btrfs subvolume; move it away (the pool creates main itself)", cfg.Name, p.mainDir)
	}
	if err := os.MkdirAll(p.snapDir, 0o700); err != nil {
		return nil, fmt.Errorf("btrfs pool %s: snapshots directory: %w", cfg.Name, err)
	}
	if err := os.MkdirAll(cfg.ClonesDir, 0o755); err != nil { //nolint:gosec // 0755: the postgres OS user traverses it to reach PGDATA of a clone
		return nil, fmt.Errorf("btrfs pool %s: clonesDir: %w", cfg.Name, err)
	}
	if err := checkBtrfs(cfg.ClonesDir); err != nil {
		return nil, fmt.Errorf("btrfs pool %s: clonesDir: %w", cfg.Name, err)
	}
	sidecar.RemoveTemps(p.snapDir)
	sidecar.RemoveTemps(cfg.ClonesDir)
	p.removeReceiveLeftovers()
	return p, nil
}

// Name implements storage.Pool.
func (p *Pool) Name() string { return p.cfg.Name }

// AtomicSnapshots implements storage.AtomicSnapshotter: a btrfs snapshot
// is taken at one instant.
func (p *Pool) AtomicSnapshots() bool { return true }

// Mode implements storage.Pool.
func (p *Pool) Mode() string { return storage.ModeBtrfs }

// MainDir implements storage.Pool.
func (p *Pool) MainDir() string { return p.mainDir }

// Path is the directory the pool lives in.
func (p *Pool) Path() string { return p.cfg.Path }

// ClonesDir is where clones live.
func (p *Pool) ClonesDir() string { return p.cfg.ClonesDir }

// Snapshot implements storage.Pool.
func (p *Pool) Snapshot(ctx context.Context, opt storage.SnapshotOptions) (storage.Snapshot, error) {
	if opt.Source == "" {
		return p.snapshotOf(ctx, p.mainDir, "", opt)
	}
	if err := storage.ValidateName("clone name", opt.Source); err != nil {
		return storage.Snapshot{}, err
	}
	return p.snapshotOf(ctx, filepath.Join(p.cfg.ClonesDir, opt.Source), opt.Source, opt.WithSourceLabel())
}

// SnapshotClone implements storage.CloneSnapshotter (physical retrieval's
// snapshot cycle): a read-only snapshot of the clone's subvolume that
// joins the pool's line of data (no LabelSource, unlike a branch commit).
func (p *Pool) SnapshotClone(ctx context.Context, clone string, opt storage.SnapshotOptions) (storage.Snapshot, error) {
	if err := storage.ValidateName("clone name", clone); err != nil {
		return storage.Snapshot{}, err
	}
	opt.Source = ""
	return p.snapshotOf(ctx, filepath.Join(p.cfg.ClonesDir, clone), clone, opt)
}

// snapshotOf makes a read-only snapshot of the subvolume src (the main
// dataset, or the clone named clone).
func (p *Pool) snapshotOf(ctx context.Context, src, clone string, opt storage.SnapshotOptions) (storage.Snapshot, error) {
	id, snapName, at, err := storage.NewSnapshotID(p.cfg.Name, opt.DataStateAt)
	if err != nil {
		return storage.Snapshot{}, err
	}
	meta := sidecar.SnapshotMeta{ID: id, CreatedAt: time.Now().UTC(), DataStateAt: at, Message: opt.Message, Labels: opt.Labels}
	if err := meta.Validate(); err != nil {
		return storage.Snapshot{}, err
	}
	dst := filepath.Join(p.snapDir, snapName)

	p.mu.Lock()
	defer p.mu.Unlock()
	if clone != "" && !isSubvolume(src) {
		return storage.Snapshot{}, fmt.Errorf("%w: clone %s (snapshot source)", storage.ErrNotFound, clone)
	}
	if _, err := os.Lstat(dst); err == nil {
		return storage.Snapshot{}, fmt.Errorf("%w: snapshot %s", storage.ErrExists, id)
	}
	if err := sidecar.Write(dst+".json", meta); err != nil {
		return storage.Snapshot{}, fmt.Errorf("snapshot %s: %w", id, err)
	}
	if err := p.btrfs(ctx, "subvolume", "snapshot", "-r", src, dst); err != nil {
		p.undo(dst)
		return storage.Snapshot{}, fmt.Errorf("snapshot %s: %w", id, err)
	}
	p.log.Info("snapshot created", "id", id)
	return p.GetSnapshot(ctx, id)
}

// Snapshots implements storage.Pool.
func (p *Pool) Snapshots(ctx context.Context) ([]storage.Snapshot, error) {
	snaps, clones, err := p.layout.Scan()
	if err != nil {
		return nil, err
	}
	return p.snapshots(ctx, snaps, clones)
}

// GetSnapshot implements storage.Pool.
func (p *Pool) GetSnapshot(ctx context.Context, id string) (storage.Snapshot, error) {
	name, err := p.layout.SnapshotName(id)
	if err != nil {
		return storage.Snapshot{}, err
	}
	snaps, clones, err := p.layout.Scan()
	if err != nil {
		return storage.Snapshot{}, err
	}
	for _, s := range snaps {
		if s.Name == name {
			out, err := p.snapshots(ctx, []sidecar.SnapshotEntry{s}, clones)
			if err != nil {
				return storage.Snapshot{}, err
			}
			return out[0], nil
		}
	}
	return storage.Snapshot{}, fmt.Errorf("%w: snapshot %s", storage.ErrNotFound, id)
}

// DestroySnapshot implements storage.Pool.
func (p *Pool) DestroySnapshot(ctx context.Context, id string, force bool) error {
	name, err := p.layout.SnapshotName(id)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	dir := filepath.Join(p.snapDir, name)
	if !isSubvolume(dir) {
		return fmt.Errorf("%w: snapshot %s", storage.ErrNotFound, id)
	}
	_, clones, err := p.layout.Scan()
	if err != nil {
		return err
	}
	deps := sidecar.Dependents(clones, id)
	if len(deps) > 0 {
		if !force {
			return fmt.Errorf("%w: snapshot %s is used by clones %s; destroy them first or force", storage.ErrHasDependents, id, strings.Join(deps, ", "))
		}
		for _, c := range deps {
			if err := p.destroyCloneLocked(ctx, c); err != nil && !errors.Is(err, storage.ErrNotFound) {
				return fmt.Errorf("destroy snapshot %s: %w", id, err)
			}
		}
	}
	if err := p.btrfs(ctx, "subvolume", "delete", dir); err != nil {
		return fmt.Errorf("destroy snapshot %s: %w", id, err)
	}
	p.sizes.Forget(dir)
	p.removeAnchor(name)
	if err := os.Remove(dir + ".json"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		p.log.Warn("snapshot sidecar left behind", "path", dir+".json", "err", err)
	}
	p.log.Info("snapshot destroyed", "id", id)
	return nil
}

// Clone implements storage.Pool.
func (p *Pool) Clone(ctx context.Context, snapshotID, name string) (storage.Clone, error) {
	if err := storage.ValidateName("clone name", name); err != nil {
		return storage.Clone{}, err
	}
	snapName, err := p.layout.SnapshotName(snapshotID)
	if err != nil {
		return storage.Clone{}, err
	}
	src := filepath.Join(p.snapDir, snapName)
	dst := filepath.Join(p.cfg.ClonesDir, name)

	p.mu.Lock()
	defer p.mu.Unlock()
	if !isSubvolume(src) {
		return storage.Clone{}, fmt.Errorf("%w: snapshot %s (clone %s)", storage.ErrNotFound, snapshotID, name)
	}
	if _, err := os.Lstat(dst); err == nil {
		return storage.Clone{}, fmt.Errorf("%w: clone %s (%s exists)", storage.ErrExists, name, dst)
	}
	meta := sidecar.CloneMeta{Name: name, SnapshotID: snapshotID, CreatedAt: time.Now().UTC()}
	if err := sidecar.Write(dst+".json", meta); err != nil {
		return storage.Clone{}, fmt.Errorf("clone %s: %w", name, err)
	}
	if err := p.btrfs(ctx, "subvolume", "snapshot", src, dst); err != nil {
		p.undo(dst)
		return storage.Clone{}, fmt.Errorf("clone %s from %s: %w", name, snapshotID, err)
	}
	if o := p.cfg.Owner; o != nil {
		if err := os.Chown(dst, o.UID, o.GID); err != nil {
			p.undo(dst)
			return storage.Clone{}, fmt.Errorf("clone %s: chown clone root: %w", name, err)
		}
	}
	p.log.Info("clone created", "clone", name, "snapshot", snapshotID)
	// A new clone has written nothing yet: UsedBytes is 0 without
	// walking its files.
	return storage.Clone{Name: name, SnapshotID: snapshotID, Mountpoint: dst, CreatedAt: meta.CreatedAt}, nil
}

// undo removes a half-made snapshot or clone and its sidecar. It runs on
// a fresh context: the caller's may be what failed.
func (p *Pool) undo(dir string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if isSubvolume(dir) {
		if err := p.btrfs(ctx, "subvolume", "delete", dir); err != nil {
			p.log.Error("cleanup of failed subvolume", "path", dir, "err", err)
		}
	}
	// Best effort: a sidecar without its subvolume is ignored by Clones
	// and removed by the next DestroyClone of that name.
	_ = os.Remove(dir + ".json")
}

// Clones implements storage.Pool.
func (p *Pool) Clones(ctx context.Context) ([]storage.Clone, error) {
	_, clones, err := p.layout.Scan()
	if err != nil {
		return nil, err
	}
	paths := make([]string, len(clones))
	for i, c := range clones {
		paths[i] = c.Dir
	}
	use, err := p.spaceUse(ctx, paths)
	if err != nil {
		return nil, err
	}
	return sidecar.Clones(clones, func(dir string) uint64 { return use[dir].Exclusive }), nil
}

// DestroyClone implements storage.Pool. Processes using the clone (its
// postgres) must have stopped first.
func (p *Pool) DestroyClone(ctx context.Context, name string) error {
	if err := storage.ValidateName("clone name", name); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.destroyCloneLocked(ctx, name)
}

func (p *Pool) destroyCloneLocked(ctx context.Context, name string) error {
	dir := filepath.Join(p.cfg.ClonesDir, name)
	if !isSubvolume(dir) {
		_ = os.Remove(dir + ".json") // best effort: a sidecar whose clone is gone; not found either way
		return fmt.Errorf("%w: clone %s", storage.ErrNotFound, name)
	}
	if err := p.btrfs(ctx, "subvolume", "delete", dir); err != nil {
		return fmt.Errorf("destroy clone %s: %w", name, err)
	}
	p.sizes.Forget(dir)
	if err := os.Remove(dir + ".json"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		p.log.Warn("clone sidecar left behind", "path", dir+".json", "err", err)
	}
	p.log.Info("clone destroyed", "clone", name)
	return nil
}

// Usage implements storage.Pool. Size, Free and Used come from statfs of
// the whole filesystem (btrfs' free space is an estimate that depends on
// its RAID profile and unallocated chunks). The per-dataset numbers are
// those of spaceUse; btrfs compression is not measured, so CompressRatio
// is 1.
func (p *Pool) Usage(ctx context.Context) (storage.Usage, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(p.cfg.Path, &st); err != nil {
		return storage.Usage{}, fmt.Errorf("btrfs pool %s: statfs: %w", p.cfg.Name, err)
	}
	bs := uint64(st.Bsize) //nolint:gosec // G115: statfs f_bsize is a positive block size
	u := storage.Usage{
		Size:          st.Blocks * bs,
		Free:          st.Bavail * bs,
		Used:          (st.Blocks - st.Bfree) * bs,
		CompressRatio: 1,
	}
	snaps, clones, err := p.layout.Scan()
	if err != nil {
		return storage.Usage{}, err
	}
	paths := []string{p.mainDir}
	for _, s := range snaps {
		paths = append(paths, s.Dir)
	}
	for _, c := range clones {
		paths = append(paths, c.Dir)
	}
	use, err := p.spaceUse(ctx, paths)
	if err != nil {
		return storage.Usage{}, err
	}
	u.DataSize = use[p.mainDir].Referenced
	for _, s := range snaps {
		u.UsedBySnapshots += use[s.Dir].Exclusive
	}
	for _, c := range clones {
		u.UsedByClones += use[c.Dir].Exclusive
	}
	return u, nil
}

// snapshots turns scanned entries into storage.Snapshots, newest first,
// with sizes and dependent clones.
func (p *Pool) snapshots(ctx context.Context, snaps []sidecar.SnapshotEntry, clones []sidecar.CloneEntry) ([]storage.Snapshot, error) {
	paths := make([]string, len(snaps))
	for i, s := range snaps {
		paths[i] = s.Dir
	}
	use, err := p.spaceUse(ctx, paths)
	if err != nil {
		return nil, err
	}
	return p.layout.Snapshots(snaps, clones, func(dir string) (uint64, uint64) {
		return use[dir].Exclusive, use[dir].Referenced
	}), nil
}

// btrfs runs the btrfs CLI and maps a full filesystem to ErrNoSpace.
func (p *Pool) btrfs(ctx context.Context, args ...string) error {
	_, err := p.cfg.Runner.Run(ctx, "btrfs", args...)
	return classify(err)
}

func classify(err error) error {
	if err == nil {
		return nil
	}
	var ce *command.Error
	if errors.As(err, &ce) && (strings.Contains(ce.Stderr, "No space left") || strings.Contains(ce.Stderr, "Disk quota exceeded")) {
		return fmt.Errorf("%w: %v", storage.ErrNoSpace, err)
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: %v", storage.ErrNoSpace, err)
	}
	return err
}

// checkBtrfs makes sure dir exists and is on btrfs.
func checkBtrfs(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("path %s does not exist: mount a btrfs filesystem there first (mkfs.btrfs DEVICE; mount DEVICE %s)", dir, dir)
		}
		return fmt.Errorf("statfs %s: %w", dir, err)
	}
	if st.Type != unix.BTRFS_SUPER_MAGIC {
		return fmt.Errorf("path %s is on a %s filesystem, not btrfs: mount a btrfs filesystem there or choose another mode", dir, fsName(st.Type))
	}
	return nil
}

// btrfsFirstFreeObjectID is the inode number of every subvolume's root
// directory, which tells a subvolume from a plain directory.
const btrfsFirstFreeObjectID = 256

func isSubvolume(path string) bool {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return false
	}
	return st.Mode&unix.S_IFMT == unix.S_IFDIR && st.Ino == btrfsFirstFreeObjectID
}

func fsName(magic int64) string {
	switch magic {
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlay"
	case unix.FUSE_SUPER_MAGIC:
		return "fuse"
	}
	return fmt.Sprintf("0x%x", magic)
}

// within reports whether path is dir or below it.
func within(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}
