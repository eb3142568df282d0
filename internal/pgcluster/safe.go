package pgcluster

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The agent runs as root next to data directories whose contents a clone's
// (hostile) OS user controls. Everything below opens files inside a data
// directory relative to a handle of its PARENT (trusted: created by the
// agent or the storage backend) and refuses every symlink on the way, so a
// clone that replaces "data", "postmaster.pid" or a socket lock with a
// symlink cannot make root read, create or delete anything outside it.

// beneath is how paths inside a data directory are resolved.
const beneath = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

// openDataDir opens dataDir (O_DIRECTORY, no symlink in its last
// component) relative to its parent.
func openDataDir(dataDir string) (*os.File, error) {
	dataDir = filepath.Clean(dataDir)
	parent, err := os.OpenFile(filepath.Dir(dataDir), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer func() { _ = parent.Close() }() // read only
	fd, err := unix.Openat2(int(parent.Fd()), filepath.Base(dataDir), &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: beneath,
	})
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dataDir, Err: err}
	}
	return os.NewFile(uintptr(fd), dataDir), nil
}

// ReadDataFile reads name (a plain file directly inside dataDir) without
// following symlinks, at most limit bytes.
func ReadDataFile(dataDir, name string, limit int64) ([]byte, error) {
	d, err := openDataDir(dataDir)
	if err != nil {
		return nil, err
	}
	defer func() { _ = d.Close() }() // read only
	fd, err := unix.Openat2(int(d.Fd()), name, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_CLOEXEC,
		Resolve: beneath,
	})
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: filepath.Join(dataDir, name), Err: err}
	}
	f := os.NewFile(uintptr(fd), filepath.Join(dataDir, name))
	defer func() { _ = f.Close() }() // read only
	// A FIFO or device planted under a known name must not block or be read.
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", f.Name())
	}
	return io.ReadAll(io.LimitReader(f, limit))
}

// RemoveStale removes postmaster.pid and the socket lock files (.s.PGSQL.*)
// copied from a snapshot's origin or left by a dead postmaster, each
// unlinked relative to the data directory's handle (a symlink is removed
// itself, never its target).
func RemoveStale(dataDir string) error {
	d, err := openDataDir(dataDir)
	if err != nil {
		return err
	}
	defer func() { _ = d.Close() }() // read only
	names, err := d.Readdirnames(-1)
	if err != nil {
		return err
	}
	for _, n := range names {
		if n == "postmaster.pid" || strings.HasPrefix(n, ".s.PGSQL.") {
			if err := unix.Unlinkat(int(d.Fd()), n, 0); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("remove %s: %w", filepath.Join(dataDir, n), err)
			}
		}
	}
	return nil
}

// OpenLog opens (creating it 0600, owned by the caller) the log file at
// path for appending, refusing a symlink in its last component. Its parent
// must be a directory only the caller can change.
func OpenLog(path string, truncate bool) (*os.File, error) {
	flags := os.O_CREATE | os.O_WRONLY | os.O_APPEND | unix.O_NOFOLLOW | unix.O_CLOEXEC
	if truncate {
		flags |= os.O_TRUNC
	}
	f, err := os.OpenFile(path, flags, 0o600) //nolint:gosec // a configured log path, opened without following symlinks
	if err != nil {
		return nil, fmt.Errorf("open postgres log: %w", err)
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		_ = f.Close() // refused before any write
		return nil, fmt.Errorf("postgres log %s is not a regular file", path)
	}
	return f, nil
}

// TailFile returns the last n lines of the file at path, refusing symlinks.
func TailFile(path string, n int) string {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0) //nolint:gosec // read only, without following symlinks
	if err != nil {
		return ""
	}
	defer func() { _ = f.Close() }() // read only
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return ""
	}
	// The tail of a large log is enough.
	if st, _ := f.Stat(); st.Size() > 1<<20 {
		if _, err := f.Seek(st.Size()-1<<20, io.SeekStart); err != nil {
			return ""
		}
	}
	raw, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ProcInfo is what /proc says about a process.
type ProcInfo struct {
	PID int
	// UIDs are the real, effective, saved and filesystem uids.
	UIDs [4]uint32
	// Exe is the executable (" (deleted)" trimmed).
	Exe  string
	Args []string
	// Zombie: the process has exited and waits to be reaped.
	Zombie bool
}

// ReadProc reads /proc/PID.
func ReadProc(pid int) (ProcInfo, error) {
	p := ProcInfo{PID: pid}
	dir := "/proc/" + strconv.Itoa(pid)
	status, err := os.ReadFile(dir + "/status") //nolint:gosec // dir is /proc/<pid>, the pid a number
	if err != nil {
		return p, err
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		switch k {
		case "Uid":
			if len(f) != 4 {
				return p, fmt.Errorf("pid %d: bad Uid line %q", pid, line)
			}
			for i := range f {
				n, err := strconv.ParseUint(f[i], 10, 32)
				if err != nil {
					return p, fmt.Errorf("pid %d: bad Uid line %q", pid, line)
				}
				p.UIDs[i] = uint32(n)
			}
		case "State":
			p.Zombie = len(f) > 0 && (f[0] == "Z" || f[0] == "X")
		}
	}
	exe, err := os.Readlink(dir + "/exe")
	if err == nil {
		p.Exe = strings.TrimSuffix(exe, " (deleted)")
	}
	raw, err := os.ReadFile(dir + "/cmdline") //nolint:gosec // dir is /proc/<pid>, the pid a number
	if err != nil {
		return p, err
	}
	if len(raw) > 0 {
		p.Args = strings.Split(string(bytes.TrimRight(raw, "\x00")), "\x00")
	}
	return p, nil
}

// OwnedBy reports whether every uid of the process is uid.
func (p ProcInfo) OwnedBy(uid uint32) bool {
	for _, u := range p.UIDs {
		if u != uid {
			return false
		}
	}
	return true
}

// DataDirArg is the -D argument of a postgres command line ("" if none).
func (p ProcInfo) DataDirArg() string {
	for i := 1; i+1 < len(p.Args); i++ {
		if p.Args[i] == "-D" {
			return filepath.Clean(p.Args[i+1])
		}
	}
	return ""
}

// IsPostmasterOf reports whether p is a live postmaster of dataDir running
// as uid from a postgres binary (binDir/postgres when binDir is set).
func (p ProcInfo) IsPostmasterOf(uid uint32, binDir, dataDir string) error {
	switch {
	case p.Zombie:
		return fmt.Errorf("pid %d has exited", p.PID)
	case !p.OwnedBy(uid):
		return fmt.Errorf("pid %d runs as uid %v, not %d", p.PID, p.UIDs, uid)
	case filepath.Base(p.Exe) != "postgres" || (binDir != "" && p.Exe != filepath.Join(binDir, "postgres")):
		return fmt.Errorf("pid %d runs %q, not a postgres server binary", p.PID, p.Exe)
	case p.DataDirArg() != filepath.Clean(dataDir):
		return fmt.Errorf("pid %d serves data directory %q, not %s", p.PID, p.DataDirArg(), dataDir)
	}
	return nil
}

// Postmaster is a verified postmaster process, pinned by a pidfd so that a
// signal can never reach another process that reused its pid.
type Postmaster struct {
	PID   int
	UID   uint32
	GID   uint32
	pidfd int
}

// VerifyPostmaster pins pid with a pidfd and checks (after pinning, so the
// check is about the pinned process) that it is a postmaster of dataDir
// running as u from binDir (any postgres binary when empty).
func VerifyPostmaster(pid int, u OSUser, binDir, dataDir string) (*Postmaster, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("no pid")
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pid %d: %w", pid, err)
	}
	info, err := ReadProc(pid)
	if err == nil {
		err = info.IsPostmasterOf(u.UID, binDir, dataDir)
	}
	if err != nil {
		_ = unix.Close(fd) // a pidfd: nothing to flush; the check's error is the one to report
		return nil, err
	}
	return &Postmaster{PID: pid, UID: u.UID, GID: u.GID, pidfd: fd}, nil
}

// Close releases the pidfd.
func (p *Postmaster) Close() {
	if p.pidfd >= 0 {
		_ = unix.Close(p.pidfd) // a pidfd: nothing to flush
		p.pidfd = -1
	}
}

// Signal sends sig to the pinned process as its own OS user (never as
// root), so even a mistaken verification could only reach that user's own
// processes.
func (p *Postmaster) Signal(sig syscall.Signal) error {
	return AsUser(p.UID, p.GID, func() error {
		return unix.PidfdSendSignal(p.pidfd, sig, nil, 0)
	})
}

// Wait waits up to d for the process to exit; it reports whether it did.
func (p *Postmaster) Wait(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		left := max(time.Until(deadline), 0)
		fds := []unix.PollFd{{Fd: int32(p.pidfd), Events: unix.POLLIN}} //nolint:gosec // a file descriptor fits in int32 (the kernel's own type)
		n, err := unix.Poll(fds, int(left.Milliseconds()))
		if err == nil && n > 0 {
			return true
		}
		if err != nil && err != unix.EINTR {
			return false
		}
		if left == 0 {
			return false
		}
	}
}

// AsUser runs f on a dedicated OS thread whose credentials are dropped to
// uid/gid (no supplementary groups). The thread is never given back to the
// Go scheduler: it exits with the goroutine, so no other goroutine ever
// runs with the dropped credentials. When the agent already runs as uid, f
// runs as is.
func AsUser(uid, gid uint32, f func() error) error {
	if uint32(os.Geteuid()) == uid { //nolint:gosec // a uid is never negative
		return f()
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			// The process's main thread cannot exit: a goroutine ending
			// locked to it parks it for good, and with dropped credentials
			// the process's leader would keep the uid, so that a process
			// of that uid (a clone's COPY ... TO PROGRAM) could kill -9
			// the agent. Drop them on another thread: this goroutine holds
			// the main thread meanwhile, so the next one cannot get it.
			err := AsUser(uid, gid, f)
			runtime.UnlockOSThread()
			done <- err
			return
		}
		// Deliberately no UnlockOSThread: the thread dies with the goroutine.
		if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, 0, 0, 0); e != 0 {
			done <- fmt.Errorf("setgroups: %w", e)
			return
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(gid), uintptr(gid), uintptr(gid)); e != 0 {
			done <- fmt.Errorf("setresgid %d: %w", gid, e)
			return
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(uid), uintptr(uid), uintptr(uid)); e != 0 {
			done <- fmt.Errorf("setresuid %d: %w", uid, e)
			return
		}
		done <- f()
	}()
	return <-done
}

// StopSignal is the postmaster's signal for a pg_ctl stop mode.
func StopSignal(mode string) (syscall.Signal, error) {
	switch mode {
	case "smart":
		return syscall.SIGTERM, nil
	case "fast", "":
		return syscall.SIGINT, nil
	case "immediate":
		return syscall.SIGQUIT, nil
	}
	return 0, fmt.Errorf("unknown shutdown mode %q (want smart, fast or immediate)", mode)
}

// lastingThread runs functions on one OS thread that lives as long as the
// process: the goroutine locked to it never exits.
var lastingThread = sync.OnceValue(func() chan<- func() {
	ch := make(chan func())
	go func() {
		runtime.LockOSThread() // never unlocked: the thread must not end
		for f := range ch {
			f()
		}
	}()
	return ch
})

// StartOnLastingThread starts cmd from an OS thread that never ends. A
// child's Pdeathsig fires when the thread that forked it ends, not the
// process, and any thread may end under the caller: AsUser's goroutine
// locks the thread it lands on and ends it, which killed test servers
// during their clean shutdown (rows lost). Use it for every cmd with
// SysProcAttr.Pdeathsig set.
func StartOnLastingThread(cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	lastingThread() <- func() { errc <- cmd.Start() }
	return <-errc
}
