package runtime

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/thinlab/thinlab/internal/pgcluster"
)

// A clone's files stay owned by the pool's postgres user on disk (no
// chown of a large data directory per clone); the clone's postgres, which
// runs as the clone's own uid, sees them through an idmapped bind mount
// stacked on the clone's mountpoint that shows the postgres uid as the
// clone's uid (and stores files the clone creates as postgres). Other
// clones' uids see 0700 directories of someone else; the pool's main data
// and snapshots, reached without the mount, stay postgres-only.

// ErrIdmapUnsupported means the clone's filesystem refuses idmapped mounts
// (FUSE, old kernels).
var ErrIdmapUnsupported = errors.New("the filesystem does not support idmapped mounts")

// idmapAttrs are set on every clone's mount: a clone never gets setuid
// binaries or device nodes from its data.
const idmapAttrs = unix.MOUNT_ATTR_IDMAP | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV

// userNS returns an open user namespace (O_RDONLY fd of /proc/PID/ns/user)
// that maps owner to clone for both uid and gid. It is made by a
// short-lived child started in a new user namespace and reaped at once;
// the fd keeps the namespace alive for as long as it is open.
func userNS(owner, clone pgcluster.OSUser) (*os.File, error) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		return nil, fmt.Errorf("idmapped mount: %w", err)
	}
	cmd := exec.Command(sleep, "60") //nolint:gosec // sleep is found by exec.LookPath, with a fixed argument
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: int(owner.UID), HostID: int(clone.UID), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: int(owner.GID), HostID: int(clone.GID), Size: 1}},
		Pdeathsig:   syscall.SIGKILL,
	}
	// From a lasting thread: Pdeathsig would kill the child as soon as the
	// forking thread ends (AsUser ends threads), before its namespace is
	// opened.
	if err := pgcluster.StartOnLastingThread(cmd); err != nil {
		return nil, fmt.Errorf("idmapped mount: start a process in a new user namespace: %w", err)
	}
	defer func() {
		_ = cmd.Process.Kill() // the helper only held the namespace open; it may be gone
		_ = cmd.Wait()         // reaps it: killed, it exits with an error by design
	}()
	// Start returns after the maps are written (before the child execs).
	f, err := os.Open(fmt.Sprintf("/proc/%d/ns/user", cmd.Process.Pid))
	if err != nil {
		return nil, fmt.Errorf("idmapped mount: open the user namespace: %w", err)
	}
	return f, nil
}

// mountIdmapped stacks on path an idmapped, nosuid, nodev bind mount of
// path itself that shows owner's files as clone's.
func mountIdmapped(path string, owner, clone pgcluster.OSUser) error {
	ns, err := userNS(owner, clone)
	if err != nil {
		return err
	}
	defer func() { _ = ns.Close() }() // read only
	return mountIdmappedNS(path, ns)
}

// userNamespaces caches open user namespaces by mapping. A namespace that
// maps owner to clone is immutable, so it is safe to reuse for every mount
// with the same mapping; the cache is bounded (it is emptied when full).
type userNamespaces struct {
	mu sync.Mutex
	ns map[[4]uint32]*os.File
}

const maxCachedNamespaces = 1024

// mount is mountIdmapped with a cached namespace.
func (c *userNamespaces) mount(path string, owner, clone pgcluster.OSUser) error {
	c.mu.Lock()
	// Held during the mount: a concurrent eviction must not close ns
	// under it (mounts take milliseconds).
	defer c.mu.Unlock()
	ns, err := c.getLocked(owner, clone)
	if err != nil {
		return err
	}
	return mountIdmappedNS(path, ns)
}

// prepare makes the namespace for owner -> clone ahead of its mount, so
// that a clone's start finds it made (creating one forks a process).
func (c *userNamespaces) prepare(owner, clone pgcluster.OSUser) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, err := c.getLocked(owner, clone)
	return err
}

func (c *userNamespaces) getLocked(owner, clone pgcluster.OSUser) (*os.File, error) {
	key := [4]uint32{owner.UID, owner.GID, clone.UID, clone.GID}
	if ns, ok := c.ns[key]; ok {
		return ns, nil
	}
	ns, err := userNS(owner, clone)
	if err != nil {
		return nil, err
	}
	if c.ns == nil || len(c.ns) >= maxCachedNamespaces {
		for _, f := range c.ns {
			_ = f.Close() // read only
		}
		c.ns = map[[4]uint32]*os.File{}
	}
	c.ns[key] = ns
	return ns, nil
}

// mountIdmappedNS stacks the idmapped bind mount of path on path, mapped
// through the user namespace ns.
func mountIdmappedNS(path string, ns *os.File) error {
	tree, err := unix.OpenTree(unix.AT_FDCWD, path, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_SYMLINK_NOFOLLOW)
	if err != nil {
		return fmt.Errorf("idmapped mount of %s: open_tree: %w", path, err)
	}
	defer func() { _ = unix.Close(tree) }() // a detached mount tree fd: nothing to flush
	attr := unix.MountAttr{Attr_set: idmapAttrs, Userns_fd: uint64(ns.Fd())}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH, &attr); err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
			return fmt.Errorf("%w: %s: mount_setattr: %v", ErrIdmapUnsupported, path, err)
		}
		return fmt.Errorf("idmapped mount of %s: mount_setattr: %w", path, err)
	}
	if err := unix.MoveMount(tree, "", unix.AT_FDCWD, path, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("idmapped mount of %s: move_mount: %w", path, err)
	}
	return nil
}

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	point string
	opts  string // per-mount options
}

func mountsAt(path string) ([]mountEntry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }() // read only
	path = filepath.Clean(path)
	var out []mountEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 {
			continue
		}
		if p := unescapeMount(fields[4]); p == path {
			out = append(out, mountEntry{point: p, opts: fields[5]})
		}
	}
	return out, sc.Err()
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// idmapped reports whether the topmost mount at path is an idmapped one.
func idmapped(path string) (bool, error) {
	ms, err := mountsAt(path)
	if err != nil || len(ms) == 0 {
		return false, err
	}
	return hasOpt(ms[len(ms)-1].opts, "idmapped"), nil
}

func hasOpt(opts, o string) bool {
	return slices.Contains(strings.Split(opts, ","), o)
}

// Unmount removes the idmapped mounts stacked on a clone's mountpoint (all
// of them, topmost first), leaving the backend's own mount there alone. The
// storage backend can then destroy the dataset.
func Unmount(path string) error {
	for range 8 {
		ok, err := idmapped(path)
		if err != nil {
			return fmt.Errorf("read mounts: %w", err)
		}
		if !ok {
			return nil
		}
		if err := unix.Unmount(path, unix.UMOUNT_NOFOLLOW); err != nil {
			if err := unix.Unmount(path, unix.UMOUNT_NOFOLLOW|unix.MNT_DETACH); err != nil {
				return fmt.Errorf("unmount the idmapped mount at %s: %w", path, err)
			}
		}
	}
	return fmt.Errorf("idmapped mounts at %s do not go away", path)
}

// chownTree hands every file below root to u without following symlinks
// (the fallback where idmapped mounts are not supported). Names are
// resolved one level at a time against directory handles opened with
// O_NOFOLLOW, so a symlink anywhere is changed itself, never its target,
// and the directories are walked by a few workers at once: on FUSE
// (zfs-fuse) each change is a round trip to the daemon, which serves
// several at a time.
func chownTree(root string, u pgcluster.OSUser) error {
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("chown %s: %w", root, err)
	}
	if err := unix.Fchown(fd, int(u.UID), int(u.GID)); err != nil {
		_ = unix.Close(fd) // read only
		return fmt.Errorf("chown %s: %w", root, err)
	}
	w := &chownWalk{u: u, slots: make(chan struct{}, chownWorkers)}
	w.dir(fd, root)
	w.wg.Wait()
	return w.err
}

// chownWorkers bounds the directories changed at once.
const chownWorkers = 8

type chownWalk struct {
	u     pgcluster.OSUser
	slots chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	err   error
}

func (w *chownWalk) fail(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		w.err = err
	}
}

// dir changes the entries of the open directory fd (closing it) and
// descends into its subdirectories, in another worker when one is free.
func (w *chownWalk) dir(fd int, path string) {
	f := os.NewFile(uintptr(fd), path)
	entries, err := f.ReadDir(-1)
	if err != nil {
		_ = f.Close() // read only
		w.fail(fmt.Errorf("chown: list %s: %w", path, err))
		return
	}
	var subdirs []string
	for _, e := range entries {
		if err := unix.Fchownat(fd, e.Name(), int(w.u.UID), int(w.u.GID), unix.AT_SYMLINK_NOFOLLOW); err != nil {
			w.fail(fmt.Errorf("chown %s: %w", filepath.Join(path, e.Name()), err))
			continue
		}
		if e.IsDir() {
			subdirs = append(subdirs, e.Name())
		}
	}
	for _, name := range subdirs {
		sub, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			w.fail(fmt.Errorf("chown: open %s: %w", filepath.Join(path, name), err))
			continue
		}
		subPath := filepath.Join(path, name)
		select {
		case w.slots <- struct{}{}:
			w.wg.Go(func() {
				defer func() { <-w.slots }()
				w.dir(sub, subPath)
			})
		default:
			w.dir(sub, subPath)
		}
	}
	_ = f.Close() // read only
}
