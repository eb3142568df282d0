// Package lvm is the LVM thin-provisioning backend of storage.Pool, driving
// the `lvm` command-line tool (lvcreate, lvchange, lvremove, lvs) and
// mount/mkfs.
//
// Layout, inside an existing volume group VG with an existing thin pool TP
// (see names.go for the exact LV names):
//
//	VG/<pool>_main                  thin LV with an XFS (or ext4) filesystem,
//	                                mounted at <MountRoot>/main (MainDir)
//	VG/<pool>_snapshot_<YYYYMMDD…>   thin snapshots of main; not mounted,
//	                                activated only so lvs reports their size
//	VG/<pool>_c_<clone>             writable thin snapshots of a snapshot,
//	                                mounted at <MountRoot>/clones/<clone>
//
// Metadata lives in LV tags (tags.go), so a fresh process rebuilds the
// whole picture from one `lvs` of the VG. LVM itself lets a thin LV be
// removed while snapshots of it exist, so the dependents check is
// Thinlab's: a clone records its snapshot's ID in its own tags.
//
// Filesystems are mounted with discard, so space freed in main or a clone
// returns to the thin pool. Thin provisioning can still overcommit: main's
// virtual size defaults to the thin pool's size and every clone may grow
// to it, so watch Usage (or configure LVM's thin pool autoextend); a thin
// pool that runs full stalls writes and then fails them with I/O errors.
//
// A snapshot is taken while main is mounted: LVM suspends the device,
// which freezes the filesystem, so the snapshot is consistent. XFS refuses
// to mount two filesystems with one UUID, so clones are mounted with
// nouuid.
//
// Without udev (containers, the test VM), device-mapper must be told not
// to wait for it: set Config.NoUdev (DM_DISABLE_UDEV=1).
package lvm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/command"
)

// Filesystems the backend can put on main.
const (
	FSXFS  = "xfs"
	FSExt4 = "ext4"
)

// Config describes one LVM thin pool.
type Config struct {
	// Name is the pool's name in Thinlab: the prefix of snapshot IDs and
	// of its LV names.
	Name string
	// VG and ThinPool name an existing volume group and thin pool
	// (lvcreate -T VG/ThinPool -L SIZE).
	VG       string
	ThinPool string
	// MountRoot holds main's mountpoint (MountRoot/main) and the clones'
	// (MountRoot/clones/<name>). Default /var/lib/thinlab/lvm/<Name>.
	MountRoot string
	// MainSize is the virtual size of the main LV when Open creates it,
	// in lvcreate's syntax ("100G"). Default: the thin pool's size.
	MainSize string
	// FSType is the filesystem made on main: "xfs" (default) or "ext4".
	FSType string
	// Owner, when set, owns the root directories of main and of each
	// clone (the postgres OS user); PGDATA inside keeps the ownership it
	// had in the snapshot.
	Owner *storage.Owner
	// NoUdev sets DM_DISABLE_UDEV=1 for lvm, for hosts where udev does
	// not run: LVM then creates the /dev nodes itself.
	NoUdev bool
	// Runner runs lvm, mkfs, mount and umount; nil means a default Runner.
	Runner *command.Runner
	Logger *slog.Logger
}

// UdevRunning reports whether udev runs on this machine (its control socket
// exists); when it does not, set Config.NoUdev.
func UdevRunning() bool {
	_, err := os.Stat("/run/udev/control")
	return err == nil
}

// Pool is a storage.Pool on an LVM thin pool. Its only state besides the
// configuration is a lock serializing changes made by this process; every
// answer is read from LVM.
type Pool struct {
	cfg     Config
	run     *command.Runner
	log     *slog.Logger
	mainDir string
	// mu serializes Snapshot, Clone and the Destroy calls, so the
	// dependents check and the change it guards are not interleaved with
	// another change from this process.
	mu sync.Mutex
}

var (
	_ storage.Pool             = (*Pool)(nil)
	_ storage.CloneSnapshotter = (*Pool)(nil)
)

// Open checks cfg, creates and formats the main LV when missing, and
// activates and mounts main and every clone that is not (after a reboot
// or a daemon restart).
func Open(ctx context.Context, cfg Config) (*Pool, error) {
	if err := validatePoolName(cfg.Name); err != nil {
		return nil, err
	}
	if err := validateVGName(cfg.VG); err != nil {
		return nil, fmt.Errorf("lvm pool %s: %w", cfg.Name, err)
	}
	if err := validateLVName("thinPool", cfg.ThinPool); err != nil {
		return nil, fmt.Errorf("lvm pool %s: %w", cfg.Name, err)
	}
	switch cfg.FSType {
	case "":
		cfg.FSType = FSXFS
	case FSXFS, FSExt4:
	default:
		return nil, fmt.Errorf("lvm pool %s: fsType %q: use xfs or ext4", cfg.Name, cfg.FSType)
	}
	if cfg.MountRoot == "" {
		cfg.MountRoot = filepath.Join("/var/lib/thinlab/lvm", cfg.Name)
	}
	if !filepath.IsAbs(cfg.MountRoot) {
		return nil, fmt.Errorf("lvm pool %s: mountRoot %q must be an absolute path", cfg.Name, cfg.MountRoot)
	}
	cfg.MountRoot = filepath.Clean(cfg.MountRoot)
	p := &Pool{cfg: cfg, run: cfg.Runner, log: cfg.Logger}
	if p.log == nil {
		p.log = slog.Default()
	}
	if p.run == nil {
		p.run = &command.Runner{Logger: p.log}
	}
	p.log = p.log.With("pool", cfg.Name, "vg", cfg.VG)
	p.mainDir = filepath.Join(cfg.MountRoot, "main")

	st, err := p.load(ctx)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, fmt.Errorf("lvm pool %s: volume group %q does not exist: create it (vgcreate %s DEVICE): %w", cfg.Name, cfg.VG, cfg.VG, err)
	}
	if err != nil {
		return nil, err
	}
	if st.thinPool == nil {
		return nil, fmt.Errorf("lvm pool %s: thin pool %s/%s does not exist: create it (lvcreate -T %s/%s -L SIZE): %w", cfg.Name, cfg.VG, cfg.ThinPool, cfg.VG, cfg.ThinPool, storage.ErrNotFound)
	}
	for _, d := range []string{p.mainDir, p.clonesDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil { //nolint:gosec // 0755: the postgres OS user traverses it to reach PGDATA
			return nil, fmt.Errorf("lvm pool %s: mountRoot: %w", cfg.Name, err)
		}
	}
	if st.main == nil {
		if st.names[mainLV(cfg.Name)] {
			return nil, fmt.Errorf("lvm pool %s: LV %s/%s exists but is not tagged as this pool's main volume; rename it or choose another pool name", cfg.Name, cfg.VG, mainLV(cfg.Name))
		}
		if err := p.createMain(ctx, st); err != nil {
			return nil, err
		}
	} else if err := p.ensureMounted(ctx, *st.main, p.mainDir, false); err != nil {
		return nil, fmt.Errorf("lvm pool %s: main LV %s/%s: %w (if it has no filesystem because an earlier Open stopped half-way, remove it with lvremove and open again)", cfg.Name, cfg.VG, st.main.Name, err)
	}
	// Snapshots are activated for their size only; one that cannot be
	// does not block the pool.
	for _, s := range st.snaps {
		if !s.row.active() {
			if err := p.lvm(ctx, "lvchange", "-ay", "-K", p.lvPath(s.row.Name)); err != nil {
				p.log.Warn("snapshot not activated", "lv", s.row.Name, "err", err)
			}
		}
	}
	// One clone that cannot be mounted must not take the pool down; it
	// stays listed and its owner sees the failure when using it.
	for _, c := range st.clones {
		if err := p.ensureMounted(ctx, c.row, p.cloneDir(c.meta.Name), true); err != nil {
			p.log.Warn("clone not mounted", "clone", c.meta.Name, "err", err)
		}
	}
	for _, b := range st.broken {
		p.log.Warn("LV with unreadable Thinlab metadata ignored", "detail", b)
	}
	return p, nil
}

// createMain makes, formats and mounts the main LV; on any failure it
// removes what it created.
func (p *Pool) createMain(ctx context.Context, st state) error {
	size := p.cfg.MainSize
	if size == "" {
		size = fmt.Sprintf("%db", st.thinPool.sizeBytes())
	}
	meta, err := encodeMetaTags(mainMeta{Pool: p.cfg.Name, FSType: p.cfg.FSType, CreatedAt: time.Now().UTC()})
	if err != nil {
		return err
	}
	lv := mainLV(p.cfg.Name)
	args := []string{"lvcreate", "-y", "-V", size, "-T", p.cfg.VG + "/" + p.cfg.ThinPool, "-n", lv}
	args = append(args, tagArgs(kindMain, p.cfg.Name, meta)...)
	if err := p.lvm(ctx, args...); err != nil {
		return fmt.Errorf("lvm pool %s: create main LV: %w", p.cfg.Name, err)
	}
	if err := p.formatAndMount(ctx, lv); err != nil {
		p.removeLV(lv, p.mainDir)
		return fmt.Errorf("lvm pool %s: main LV: %w", p.cfg.Name, err)
	}
	p.log.Info("main LV created", "lv", lv, "fs", p.cfg.FSType, "mount", p.mainDir)
	return nil
}

func (p *Pool) formatAndMount(ctx context.Context, lv string) error {
	dev := p.devPath(lv)
	var err error
	if p.cfg.FSType == FSExt4 {
		_, err = p.run.Run(ctx, "mkfs.ext4", "-q", "-F", dev)
	} else {
		_, err = p.run.Run(ctx, "mkfs.xfs", "-q", "-f", dev)
	}
	if err != nil {
		return fmt.Errorf("mkfs: %w", err)
	}
	if err := p.mount(ctx, dev, p.mainDir, false); err != nil {
		return err
	}
	if o := p.cfg.Owner; o != nil {
		if err := os.Chown(p.mainDir, o.UID, o.GID); err != nil {
			return fmt.Errorf("chown main root: %w", err)
		}
	}
	return nil
}

// Name implements storage.Pool.
func (p *Pool) Name() string { return p.cfg.Name }

// Mode implements storage.Pool.
func (p *Pool) Mode() string { return storage.ModeLVM }

// AtomicSnapshots implements storage.AtomicSnapshotter: a thin snapshot
// is taken with the origin suspended (and its filesystem frozen).
func (p *Pool) AtomicSnapshots() bool { return true }

// MainDir implements storage.Pool.
func (p *Pool) MainDir() string { return p.mainDir }

// MountRoot is where main and the clones are mounted.
func (p *Pool) MountRoot() string { return p.cfg.MountRoot }

func (p *Pool) clonesDir() string { return filepath.Join(p.cfg.MountRoot, "clones") }

func (p *Pool) cloneDir(name string) string { return filepath.Join(p.clonesDir(), name) }

// Snapshot implements storage.Pool: one lvcreate with every tag, so a
// snapshot never exists without its metadata.
func (p *Pool) Snapshot(ctx context.Context, opt storage.SnapshotOptions) (storage.Snapshot, error) {
	opt = opt.WithSourceLabel()
	return p.snapshot(ctx, opt.Source, opt)
}

// SnapshotClone implements storage.CloneSnapshotter (physical retrieval's
// snapshot cycle): a thin snapshot of the clone's LV, like a branch
// commit, that joins the pool's line of data (no LabelSource). Thin
// snapshots share blocks but depend on no LV: the clone and the snapshot
// it was made from can be removed right after.
func (p *Pool) SnapshotClone(ctx context.Context, clone string, opt storage.SnapshotOptions) (storage.Snapshot, error) {
	if err := storage.ValidateName("clone name", clone); err != nil {
		return storage.Snapshot{}, err
	}
	opt.Source = ""
	return p.snapshot(ctx, clone, opt)
}

// snapshot takes a thin snapshot of main (clone "") or of the clone named
// clone.
func (p *Pool) snapshot(ctx context.Context, clone string, opt storage.SnapshotOptions) (storage.Snapshot, error) {
	id, snapName, at, err := storage.NewSnapshotID(p.cfg.Name, opt.DataStateAt)
	if err != nil {
		return storage.Snapshot{}, err
	}
	if err := validateSnapshotOptions(opt); err != nil {
		return storage.Snapshot{}, err
	}
	meta, err := encodeMetaTags(snapshotMeta{ID: id, DataStateAt: at, CreatedAt: time.Now().UTC(), Message: opt.Message, Labels: opt.Labels})
	if err != nil {
		return storage.Snapshot{}, fmt.Errorf("snapshot %s: %w", id, err)
	}
	lv := snapshotLV(p.cfg.Name, snapName)

	p.mu.Lock()
	defer p.mu.Unlock()
	st, err := p.load(ctx)
	if err != nil {
		return storage.Snapshot{}, err
	}
	if st.snapshotByID(id) != nil || st.names[lv] {
		return storage.Snapshot{}, fmt.Errorf("%w: snapshot %s (LV %s/%s)", storage.ErrExists, id, p.cfg.VG, lv)
	}
	if err := st.checkSpace(); err != nil {
		return storage.Snapshot{}, fmt.Errorf("snapshot %s: %w", id, err)
	}
	// --setactivationskip n: the snapshot is activated at once, so lvs
	// reports its data_percent (its size); it is never mounted.
	origin := mainLV(p.cfg.Name)
	if clone != "" {
		c := st.cloneByName(clone)
		if c == nil {
			return storage.Snapshot{}, fmt.Errorf("%w: clone %s (snapshot source)", storage.ErrNotFound, clone)
		}
		// A thin snapshot of a mounted LV: device-mapper suspends the
		// device, which freezes the filesystem, so it is one instant.
		origin = c.row.Name
	}
	args := []string{"lvcreate", "-y", "-s", "--setactivationskip", "n", "-n", lv, p.lvPath(origin)}
	args = append(args, tagArgs(kindSnap, p.cfg.Name, meta)...)
	if err := p.lvm(ctx, args...); err != nil {
		return storage.Snapshot{}, fmt.Errorf("snapshot %s: %w", id, err)
	}
	p.log.Info("snapshot created", "id", id, "lv", lv)
	return p.getSnapshot(ctx, id)
}

// Snapshots implements storage.Pool.
func (p *Pool) Snapshots(ctx context.Context) ([]storage.Snapshot, error) {
	st, err := p.load(ctx)
	if err != nil {
		return nil, err
	}
	return st.snapshots(p.cfg.Name), nil
}

// GetSnapshot implements storage.Pool.
func (p *Pool) GetSnapshot(ctx context.Context, id string) (storage.Snapshot, error) {
	if err := p.checkSnapshotID(id); err != nil {
		return storage.Snapshot{}, err
	}
	return p.getSnapshot(ctx, id)
}

func (p *Pool) getSnapshot(ctx context.Context, id string) (storage.Snapshot, error) {
	st, err := p.load(ctx)
	if err != nil {
		return storage.Snapshot{}, err
	}
	for _, s := range st.snapshots(p.cfg.Name) {
		if s.ID == id {
			return s, nil
		}
	}
	return storage.Snapshot{}, fmt.Errorf("%w: snapshot %s", storage.ErrNotFound, id)
}

// DestroySnapshot implements storage.Pool.
func (p *Pool) DestroySnapshot(ctx context.Context, id string, force bool) error {
	if err := p.checkSnapshotID(id); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	st, err := p.load(ctx)
	if err != nil {
		return err
	}
	s := st.snapshotByID(id)
	if s == nil {
		return fmt.Errorf("%w: snapshot %s", storage.ErrNotFound, id)
	}
	if clones := st.clonesOf(id); len(clones) > 0 {
		if !force {
			return fmt.Errorf("%w: snapshot %s is used by clones %s; destroy them first or force", storage.ErrHasDependents, id, strings.Join(clones, ", "))
		}
		for _, name := range clones {
			if err := p.destroyClone(ctx, st, name); err != nil && !errors.Is(err, storage.ErrNotFound) {
				return fmt.Errorf("destroy snapshot %s: %w", id, err)
			}
		}
	}
	if err := p.lvm(ctx, "lvremove", "-y", p.lvPath(s.row.Name)); err != nil {
		return fmt.Errorf("destroy snapshot %s: %w", id, err)
	}
	p.log.Info("snapshot destroyed", "id", id)
	return nil
}

// Clone implements storage.Pool.
func (p *Pool) Clone(ctx context.Context, snapshotID, name string) (storage.Clone, error) {
	lv, err := validateCloneName(p.cfg.Name, name)
	if err != nil {
		return storage.Clone{}, err
	}
	if err := p.checkSnapshotID(snapshotID); err != nil {
		return storage.Clone{}, err
	}
	cm := cloneMeta{Name: name, SnapshotID: snapshotID, CreatedAt: time.Now().UTC()}
	meta, err := encodeMetaTags(cm)
	if err != nil {
		return storage.Clone{}, err
	}
	mount := p.cloneDir(name)

	p.mu.Lock()
	defer p.mu.Unlock()
	st, err := p.load(ctx)
	if err != nil {
		return storage.Clone{}, err
	}
	s := st.snapshotByID(snapshotID)
	if s == nil {
		return storage.Clone{}, fmt.Errorf("%w: snapshot %s (clone %s)", storage.ErrNotFound, snapshotID, name)
	}
	if st.cloneByName(name) != nil || st.names[lv] {
		return storage.Clone{}, fmt.Errorf("%w: clone %s (LV %s/%s)", storage.ErrExists, name, p.cfg.VG, lv)
	}
	if entries, err := os.ReadDir(mount); err == nil && len(entries) > 0 {
		// A non-empty directory belongs to something else (or is a
		// clone still mounted); never mount over it.
		return storage.Clone{}, fmt.Errorf("%w: clone %s: mountpoint %s is in use (not empty)", storage.ErrExists, name, mount)
	}
	if err := st.checkSpace(); err != nil {
		return storage.Clone{}, fmt.Errorf("clone %s: %w", name, err)
	}
	args := []string{"lvcreate", "-y", "-s", "--setactivationskip", "n", "-n", lv, p.lvPath(s.row.Name)}
	args = append(args, tagArgs(kindClone, p.cfg.Name, meta)...)
	if err := p.lvm(ctx, args...); err != nil {
		return storage.Clone{}, fmt.Errorf("clone %s from %s: %w", name, snapshotID, err)
	}
	if err := p.finishClone(ctx, lv, mount); err != nil {
		p.removeLV(lv, mount)
		return storage.Clone{}, fmt.Errorf("clone %s from %s: %w", name, snapshotID, err)
	}
	p.log.Info("clone created", "clone", name, "snapshot", snapshotID, "lv", lv)
	// A new clone has written nothing yet; no need for another lvs.
	return storage.Clone{Name: name, SnapshotID: snapshotID, Mountpoint: mount, CreatedAt: cm.CreatedAt}, nil
}

// finishClone activates the clone if lvcreate did not, mounts it and hands
// its root to the owner.
func (p *Pool) finishClone(ctx context.Context, lv, mount string) error {
	if _, err := os.Stat(p.devPath(lv)); err != nil {
		if err := p.lvm(ctx, "lvchange", "-ay", "-K", p.lvPath(lv)); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(mount, 0o755); err != nil { //nolint:gosec // 0755: the postgres OS user traverses it to reach PGDATA of a clone
		return err
	}
	if err := p.mount(ctx, p.devPath(lv), mount, true); err != nil {
		return err
	}
	if o := p.cfg.Owner; o != nil {
		if err := os.Chown(mount, o.UID, o.GID); err != nil {
			return fmt.Errorf("chown clone root: %w", err)
		}
	}
	return nil
}

// removeLV undoes a half-made LV: unmount, remove, drop the mountpoint. It
// runs on a fresh context, since the caller's may be what failed.
func (p *Pool) removeLV(lv, mount string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if isMountpoint(mount) {
		if _, err := p.run.Run(ctx, "umount", mount); err != nil {
			p.log.Error("cleanup: unmount", "path", mount, "err", err)
		}
	}
	if err := p.lvm(ctx, "lvremove", "-y", p.lvPath(lv)); err != nil && !errors.Is(err, storage.ErrNotFound) {
		p.log.Error("cleanup: remove LV", "lv", lv, "err", err)
	}
	// Only an empty directory goes: a file in the way (which may be why
	// the mount failed) is not ours to delete.
	if fi, err := os.Lstat(mount); err == nil && fi.IsDir() && mount != p.mainDir {
		if err := os.Remove(mount); err != nil {
			p.log.Error("cleanup: remove mount directory", "path", mount, "err", err)
		}
	}
}

// Clones implements storage.Pool.
func (p *Pool) Clones(ctx context.Context) ([]storage.Clone, error) {
	st, err := p.load(ctx)
	if err != nil {
		return nil, err
	}
	return st.clonesList(p.cloneDir), nil
}

// DestroyClone implements storage.Pool. Processes using the clone (its
// postgres) must have stopped: a busy mount is an error, not a kill.
func (p *Pool) DestroyClone(ctx context.Context, name string) error {
	if _, err := validateCloneName(p.cfg.Name, name); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	st, err := p.load(ctx)
	if err != nil {
		return err
	}
	return p.destroyClone(ctx, st, name)
}

func (p *Pool) destroyClone(ctx context.Context, st state, name string) error {
	c := st.cloneByName(name)
	if c == nil {
		return fmt.Errorf("%w: clone %s", storage.ErrNotFound, name)
	}
	mount := p.cloneDir(name)
	if isMountpoint(mount) {
		if _, err := p.run.Run(ctx, "umount", mount); err != nil {
			return fmt.Errorf("destroy clone %s: unmount %s (is its postgres still running?): %w", name, mount, err)
		}
	}
	if err := p.lvm(ctx, "lvremove", "-y", p.lvPath(c.row.Name)); err != nil {
		return fmt.Errorf("destroy clone %s: %w", name, err)
	}
	// Remove (not RemoveAll) keeps anything that is not an empty
	// directory.
	if err := os.Remove(mount); err != nil && !errors.Is(err, os.ErrNotExist) {
		p.log.Warn("clone mountpoint left behind", "path", mount, "err", err)
	}
	p.log.Info("clone destroyed", "clone", name)
	return nil
}

// Usage implements storage.Pool.
func (p *Pool) Usage(ctx context.Context) (storage.Usage, error) {
	st, err := p.load(ctx)
	if err != nil {
		return storage.Usage{}, err
	}
	if st.thinPool == nil {
		return storage.Usage{}, fmt.Errorf("%w: lvm pool %s: thin pool %s/%s is gone", storage.ErrNotFound, p.cfg.Name, p.cfg.VG, p.cfg.ThinPool)
	}
	return st.usage(), nil
}

// maxMetaField bounds a snapshot's message and its labels (each as JSON),
// like the other backends, so that every backend accepts the same input.
const maxMetaField = 4096

func validateSnapshotOptions(opt storage.SnapshotOptions) error {
	for k := range opt.Labels {
		if k == "" {
			return fmt.Errorf("%w: snapshot labels: a label key is empty; give every label a name", storage.ErrInvalidName)
		}
	}
	if raw, _ := json.Marshal(opt.Message); len(raw) > maxMetaField {
		return fmt.Errorf("%w: snapshot message is %d bytes encoded; keep it under %d", storage.ErrInvalidName, len(raw), maxMetaField)
	}
	if raw, _ := json.Marshal(opt.Labels); len(raw) > maxMetaField {
		return fmt.Errorf("%w: snapshot labels are %d bytes as JSON; keep them under %d", storage.ErrInvalidName, len(raw), maxMetaField)
	}
	return nil
}

// checkSpace refuses new thin LVs in a full thin pool: LVM would create
// them, and every write to them would then block or fail.
func (st state) checkSpace() error {
	if st.thinPool == nil {
		return fmt.Errorf("%w: thin pool is gone", storage.ErrNotFound)
	}
	if percent(st.thinPool.DataPercent) >= 100 || percent(st.thinPool.MetaPercent) >= 100 {
		return fmt.Errorf("%w: thin pool %s is full (data %s%%, metadata %s%%): extend it (lvextend) or destroy clones and snapshots", storage.ErrNoSpace, st.thinPool.Name, st.thinPool.DataPercent, st.thinPool.MetaPercent)
	}
	return nil
}

func (p *Pool) checkSnapshotID(id string) error {
	pool, _, err := storage.ParseSnapshotID(id)
	if err != nil {
		return err
	}
	if pool != p.cfg.Name {
		return fmt.Errorf("%w: snapshot %s belongs to pool %q, not %q", storage.ErrNotFound, id, pool, p.cfg.Name)
	}
	return nil
}

// load reads the whole VG with one lvs.
func (p *Pool) load(ctx context.Context) (state, error) {
	out, err := p.lvmOut(ctx, "lvs", "--reportformat", "json", "--units", "b", "--nosuffix",
		"-o", strings.Join(lvsFields, ","), p.cfg.VG)
	if err != nil {
		return state{}, fmt.Errorf("lvm pool %s: list LVs: %w", p.cfg.Name, err)
	}
	rows, err := parseLVs(out)
	if err != nil {
		return state{}, fmt.Errorf("lvm pool %s: %w", p.cfg.Name, err)
	}
	return buildState(rows, p.cfg.Name, p.cfg.ThinPool), nil
}

// ensureMounted activates lv and mounts it at dir unless something already
// is mounted there.
func (p *Pool) ensureMounted(ctx context.Context, row lvRow, dir string, clone bool) error {
	if !row.active() {
		if err := p.lvm(ctx, "lvchange", "-ay", "-K", p.lvPath(row.Name)); err != nil {
			return err
		}
	}
	if isMountpoint(dir) {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil { //nolint:gosec // 0755: the postgres OS user traverses it to reach PGDATA
		return err
	}
	return p.mount(ctx, p.devPath(row.Name), dir, clone)
}

func (p *Pool) mount(ctx context.Context, dev, dir string, clone bool) error {
	// discard: blocks the filesystem frees go back to the thin pool, so
	// the pool fills with data, not with the history of deleted WAL
	// segments and dropped tables.
	opts := "discard"
	if clone {
		// A clone's data is written by an untrusted clone user: no
		// setuid binaries, no device nodes from it.
		opts += ",nosuid,nodev"
	}
	if clone && p.cfg.FSType == FSXFS {
		// A clone's XFS has its origin's UUID, which XFS refuses
		// twice.
		opts += ",nouuid"
	}
	args := []string{"-t", p.cfg.FSType, "-o", opts, dev, dir}
	if _, err := p.run.Run(ctx, "mount", args...); err != nil {
		return fmt.Errorf("mount %s: %w", dir, err)
	}
	return nil
}

func (p *Pool) lvPath(lv string) string { return p.cfg.VG + "/" + lv }

// devPath is the device-mapper node; it exists with or without udev.
func (p *Pool) devPath(lv string) string {
	return "/dev/mapper/" + dmEscape(p.cfg.VG) + "-" + dmEscape(lv)
}

// dmEscape doubles '-', as device-mapper names do (vg-lv separator).
func dmEscape(s string) string { return strings.ReplaceAll(s, "-", "--") }

func tagArgs(kind, pool string, meta []string) []string {
	args := []string{"--addtag", poolTag(pool), "--addtag", kindTag(kind)}
	for _, t := range meta {
		args = append(args, "--addtag", t)
	}
	return args
}

// lvm runs one lvm subcommand and maps its well-known failures to
// storage's sentinels.
func (p *Pool) lvm(ctx context.Context, args ...string) error {
	_, err := p.lvmOut(ctx, args...)
	return err
}

func (p *Pool) lvmOut(ctx context.Context, args ...string) ([]byte, error) {
	c := command.Cmd{Name: "lvm", Args: args}
	if p.cfg.NoUdev {
		c.Env = []string{"DM_DISABLE_UDEV=1"}
	}
	out, err := p.run.RunCmd(ctx, c)
	return out, classify(err)
}

func classify(err error) error {
	if err == nil {
		return nil
	}
	var ce *command.Error
	if !errors.As(err, &ce) {
		return err
	}
	msg := ce.Stderr
	switch {
	case strings.Contains(msg, "Insufficient free space"), strings.Contains(msg, "free space in thin pool"),
		strings.Contains(msg, "No space left"), strings.Contains(msg, "out of data space"):
		return fmt.Errorf("%w: %v", storage.ErrNoSpace, err)
	case strings.Contains(msg, "already exists"):
		return fmt.Errorf("%w: %v", storage.ErrExists, err)
	case strings.Contains(msg, "Failed to find logical volume"), strings.Contains(msg, "not found"):
		return fmt.Errorf("%w: %v", storage.ErrNotFound, err)
	}
	return err
}

// isMountpoint reports whether something is mounted exactly at dir.
func isMountpoint(dir string) bool {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	defer func() { _ = f.Close() }() // opened read-only: Close cannot lose data
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		// Field 5 is the mount point, with spaces etc. octal-escaped.
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && unescapeMount(fields[4]) == dir {
			return true
		}
	}
	return false
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range s[i+1 : i+4] {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + byte(c-'0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
