// Package runtime is how a clone's postgres runs: as the clone's own OS
// user, on an idmapped mount of the clone's dataset, on its own port, with
// its settings as command-line arguments and the agent's pg_hba.conf and
// log in a root-owned directory outside the data directory, optionally
// inside a cgroup with CPU and memory limits. As root it never writes
// through a path inside a data directory (the clone's user controls it) and
// signals only processes verified to be the clone's postmaster, as the
// clone's user. It knows processes and data directories, not clone
// lifecycles (that is agent/clone).
package runtime

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/thinlab/thinlab/internal/command"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

// HBA is the clone's pg_hba.conf: the agent (root, or the clone's own OS
// user, the only ones who can reach the socket in the 0700 data
// directory) logs in over the socket without a password; everyone else
// needs a password (SCRAM) over TCP, also for replication (a replica of
// the clone streams from it with its own role).
const HBA = `# Written by the Thinlab agent; rewritten on every start.
local   all           all         trust
host    all           all   all   scram-sha-256
host    replication   all   all   scram-sha-256
`

// Options configure a Runtime.
type Options struct {
	// BinRoot holds <major>/bin (pgcluster.DefaultBinRoot when empty).
	BinRoot string
	// User owns the pools' data on disk (postgres); instances without
	// their own user run as it.
	User pgcluster.OSUser
	// RunDir holds a root-owned directory per instance with its
	// pg_hba.conf and log. Its path must be traversable by clone users
	// (0755 parents); RunDirFor gives one per agent state directory.
	RunDir string
	// CloneUIDFrom and CloneUIDTo bound the clones' own uids: an instance
	// user outside it is refused, and only a uid inside it ever has all
	// its processes ended (never the pool owner's or root's).
	CloneUIDFrom, CloneUIDTo uint32
	// ListenAddresses is postgres' listen_addresses.
	ListenAddresses string
	// CPU (number of CPUs) and MemoryBytes limit each clone when non-zero;
	// New fails when the host's cgroups cannot apply them.
	CPU         float64
	MemoryBytes uint64
	// CgroupRoot is where the cgroup filesystems are mounted
	// (DefaultCgroupRoot when empty).
	CgroupRoot string
	Runner     command.Runner
	Logger     *slog.Logger
}

// Runtime starts and stops clone postgres instances. Safe for concurrent
// use on different data directories.
type Runtime struct {
	opt    Options
	limits *limiter // nil: no limits configured
	// namespaces keeps the user namespaces of idmapped mounts, one per
	// clone uid: making one starts a process (~5 ms), and a clone uid is
	// reused after its clone is gone.
	namespaces userNamespaces
}

// Instance is one postgres to run.
type Instance struct {
	// Name identifies the instance in logs and names its cgroup.
	Name    string
	DataDir string
	Port    int
	// Settings are passed as -c arguments (already validated and merged
	// with defaults by the caller); they override postgresql.conf and
	// postgresql.auto.conf.
	Settings map[string]string
	// User runs this instance's postgres: a clone's own OS user. Zero means
	// Options.User, without an idmapped mount.
	User pgcluster.OSUser
	// Mount is the clone dataset's mountpoint (DataDir's parent), where the
	// idmapped mount is stacked when User is a clone's own user.
	Mount string
	// BeforeExec, when set, runs after Start's preparations, right before
	// postgres is executed (a hibernated clone's listener gives up the
	// port there, as late as it can).
	BeforeExec func()
}

// New builds a Runtime. When limits are configured it prepares and probes
// the host's cgroups once, and fails where they cannot be applied: clones
// never run without the limits the operator configured.
func New(opt Options) (*Runtime, error) {
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.Runner.Logger == nil {
		opt.Runner.Logger = opt.Logger
	}
	r := &Runtime{opt: opt}
	if opt.CPU > 0 || opt.MemoryBytes > 0 {
		l, err := newLimiter(opt.CgroupRoot, opt.CPU, opt.MemoryBytes)
		if err != nil {
			return nil, fmt.Errorf("per-clone CPU/memory limits (provision.resources) are configured but this host's cgroups cannot apply them: %w (see docs/agent-config.md, \"Per-clone limits\"; or remove the limits)", err)
		}
		opt.Logger.Info("per-clone limits enabled", "cgroup", l.describe(), "cpu", opt.CPU, "memory_bytes", opt.MemoryBytes)
		r.limits = l
	}
	return r, nil
}

// LimitsActive reports whether clones get cgroup limits.
func (r *Runtime) LimitsActive() bool { return r.limits != nil }

// RunDirFor is the directory of per-clone runtime files for an agent with
// stateDir: under /run (root-owned, reachable by clone users, whereas the
// state directory is 0700), one per agent.
func RunDirFor(stateDir string) string {
	abs, err := filepath.Abs(stateDir)
	if err != nil {
		abs = stateDir
	}
	sum := sha256.Sum256([]byte(abs))
	return filepath.Join("/run/thinlab", "clones-"+hex.EncodeToString(sum[:6]))
}

// user is the OS user an instance runs as.
func (r *Runtime) user(inst Instance) pgcluster.OSUser {
	if inst.User.UID == 0 {
		return r.opt.User
	}
	return inst.User
}

// ownUser reports whether u is a clone's own user (in the clone range,
// not the pool owner, not root).
func (r *Runtime) ownUser(u pgcluster.OSUser) bool {
	return u.UID != 0 && u.UID != r.opt.User.UID && u.UID >= r.opt.CloneUIDFrom && u.UID <= r.opt.CloneUIDTo
}

func (r *Runtime) cluster(inst Instance) *pgcluster.Cluster {
	c := &pgcluster.Cluster{DataDir: inst.DataDir, User: r.user(inst), Runner: r.opt.Runner, Logger: r.opt.Logger}
	if r.opt.RunDir != "" && inst.Name != "" {
		c.LogPath = filepath.Join(r.instanceDir(inst.Name), "postgres.log")
	}
	return c
}

func (r *Runtime) instanceDir(name string) string {
	return filepath.Join(r.opt.RunDir, filepath.Base(filepath.Clean("/"+name)))
}

// BinDir is the binaries directory for dataDir's PG_VERSION (read without
// following symlinks: the clone may have replaced it).
func (r *Runtime) BinDir(dataDir string) (string, error) {
	raw, err := pgcluster.ReadDataFile(dataDir, "PG_VERSION", 64)
	if err != nil {
		return "", fmt.Errorf("read PG_VERSION of %s (is it a PostgreSQL data directory?): %w", dataDir, err)
	}
	major := strings.TrimSpace(string(raw))
	if _, err := strconv.Atoi(major); err != nil {
		return "", fmt.Errorf("PG_VERSION of %s does not hold a major version number", dataDir)
	}
	root := r.opt.BinRoot
	if root == "" {
		root = pgcluster.DefaultBinRoot
	}
	dir := filepath.Join(root, major, "bin")
	if _, err := os.Stat(filepath.Join(dir, "postgres")); err != nil {
		return "", fmt.Errorf("data directory %s needs PostgreSQL %s, but %s/postgres is missing (install postgresql-%s)", dataDir, major, dir, major)
	}
	return dir, nil
}

// Start isolates the instance (idmapped mount for a clone's own user),
// removes stale pid and socket files of the snapshot's origin, writes its
// pg_hba.conf and starts postgres, waiting until it accepts connections.
// It fails if postgres already runs there.
func (r *Runtime) Start(ctx context.Context, inst Instance) error {
	if n := len(inst.DataDir) + len("/.s.PGSQL.65535.lock"); n > 107 {
		return fmt.Errorf("data directory path %s is too long for a Unix socket (%d > 107 bytes): use a shorter clonesDir", inst.DataDir, n)
	}
	if r.opt.RunDir == "" {
		return errors.New("runtime: Options.RunDir is not set")
	}
	u := r.user(inst)
	if u.UID == 0 {
		return errors.New("runtime: postgres cannot run as root (set Options.User)")
	}
	if u.UID != r.opt.User.UID && !r.ownUser(u) {
		return fmt.Errorf("runtime: uid %d of instance %s is outside the clone uid range %d-%d", u.UID, inst.Name, r.opt.CloneUIDFrom, r.opt.CloneUIDTo)
	}
	if r.ownUser(u) {
		if err := r.isolate(inst, u); err != nil {
			return err
		}
	}
	c := r.cluster(inst)
	bin, err := r.BinDir(inst.DataDir)
	if err != nil {
		return err
	}
	c.BinDir = bin
	if c.Running() {
		pid, _ := c.PID()
		return fmt.Errorf("postgres already running in %s (pid %d)", inst.DataDir, pid)
	}
	if r.ownUser(u) {
		// Whatever the clone's user left running (a server whose postmaster
		// was killed, a program started with COPY ... TO PROGRAM) goes
		// before a new postmaster starts.
		r.killUser(u)
	}
	hba, err := r.writeRunFiles(inst.Name)
	if err != nil {
		return err
	}
	settings := maps.Clone(inst.Settings)
	if settings == nil {
		settings = map[string]string{}
	}
	settings["hba_file"] = hba
	settings["external_pid_file"] = ""
	if inst.BeforeExec != nil {
		inst.BeforeExec()
	}
	if err := c.Start(ctx, inst.Port, r.opt.ListenAddresses, settings); err != nil {
		return err
	}
	if r.limits != nil {
		// Only a verified postmaster goes into the clone's cgroup: the
		// clone's user can write any pid into postmaster.pid.
		pm, err := c.Postmaster()
		if err == nil {
			err = r.limits.attach(inst.Name, pm.PID)
			pm.Close()
		}
		if err != nil {
			// A clone never runs without its configured limits.
			r.Kill(inst)
			return fmt.Errorf("limits are configured but postgres could not be put into its cgroup, so it was stopped: %w", err)
		}
	}
	return nil
}

// Prepare does ahead of Start what can be done before inst's data exists
// (the user namespace of its idmapped mount), so that callers can overlap
// it with making the dataset. It is optional: Start does whatever is left.
func (r *Runtime) Prepare(inst Instance) {
	if r == nil {
		return // a manager without a runtime (tests of its bookkeeping)
	}
	u := r.user(inst)
	if !r.ownUser(u) {
		return
	}
	if err := r.namespaces.prepare(r.opt.User, u); err != nil {
		// Start makes it again and reports the error there.
		r.opt.Logger.Debug("user namespace for a clone not prepared", "clone", inst.Name, "err", err)
	}
}

// writeRunFiles makes the instance's root-owned directory and its
// pg_hba.conf (readable by the clone's postgres); it returns the file's
// path.
func (r *Runtime) writeRunFiles(name string) (string, error) {
	dir := r.instanceDir(name)
	if err := os.MkdirAll(dir, 0o755); err != nil { //nolint:gosec // clone users (their own uids) must reach their run directory; only root writes it
		return "", fmt.Errorf("runtime directory: %w", err)
	}
	// MkdirAll keeps an existing directory as is: make sure it is root's
	// and nobody else can write to it.
	for _, d := range []string{filepath.Dir(dir), dir} {
		st, err := os.Lstat(d)
		if err != nil {
			return "", err
		}
		sys := st.Sys().(*syscall.Stat_t)
		if !st.IsDir() || sys.Uid != uint32(os.Geteuid()) { //nolint:gosec // a uid is never negative
			return "", fmt.Errorf("runtime directory %s is not a directory owned by the agent's user", d)
		}
		if st.Mode().Perm() != 0o755 {
			if err := os.Chmod(d, 0o755); err != nil { //nolint:gosec // clone users (their own uids) must reach their run directory; only root writes it
				return "", err
			}
		}
	}
	hba := filepath.Join(dir, "pg_hba.conf")
	f, err := os.OpenFile(hba, os.O_CREATE|os.O_WRONLY|os.O_TRUNC|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644) //nolint:gosec // the clone's postgres, under its own uid, reads it; it holds no secret
	if err != nil {
		return "", fmt.Errorf("write pg_hba.conf: %w", err)
	}
	_, werr := f.WriteString(HBA)
	if err := f.Close(); werr == nil {
		werr = err
	}
	if werr != nil {
		return "", fmt.Errorf("write pg_hba.conf: %w", werr)
	}
	return hba, nil
}

// WriteRunFile writes a private file for inst into its root-owned
// runtime directory (outside the data directory), readable only by the
// instance's own user: a replica's passfile. It returns the file's path.
func (r *Runtime) WriteRunFile(inst Instance, name, content string) (string, error) {
	if _, err := r.writeRunFiles(inst.Name); err != nil {
		return "", err
	}
	u := r.user(inst)
	path := filepath.Join(r.instanceDir(inst.Name), filepath.Base(filepath.Clean("/"+name)))
	_ = os.Remove(path)                                                                                  // replaced whole: a new owner and mode
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600) //nolint:gosec // a fixed name in the root-owned runtime directory
	if err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	_, werr := f.WriteString(content)
	if werr == nil {
		werr = f.Chown(int(u.UID), int(u.GID))
	}
	if err := f.Close(); werr == nil {
		werr = err
	}
	if werr != nil {
		_ = os.Remove(path) // the error says what failed
		return "", fmt.Errorf("write %s: %w", path, werr)
	}
	return path, nil
}

// isolate makes inst.Mount show the pool owner's files as u's: an
// idmapped mount stacked on it (or, where the filesystem cannot, a chown
// of the dataset to u).
func (r *Runtime) isolate(inst Instance, u pgcluster.OSUser) error {
	if inst.Mount == "" || filepath.Dir(filepath.Clean(inst.DataDir)) != filepath.Clean(inst.Mount) {
		return fmt.Errorf("runtime: instance %s runs as its own user but its mount %q is not the parent of %s", inst.Name, inst.Mount, inst.DataDir)
	}
	owned := func() bool {
		st, err := os.Lstat(inst.DataDir)
		return err == nil && st.Sys().(*syscall.Stat_t).Uid == u.UID
	}
	on, err := idmapped(inst.Mount)
	if err != nil {
		return err
	}
	if on {
		if owned() {
			return nil
		}
		// Mapped for another user (a clone given a new uid): redo it.
		if err := Unmount(inst.Mount); err != nil {
			return err
		}
	} else if owned() {
		return nil // the chown fallback was applied before
	}
	t0 := time.Now()
	err = r.namespaces.mount(inst.Mount, r.opt.User, u)
	if err == nil {
		r.opt.Logger.Debug("idmapped mount", "clone", inst.Name, "uid", u.UID, "took", time.Since(t0))
		if !owned() {
			return fmt.Errorf("idmapped mount of %s does not show %s as uid %d", inst.Mount, inst.DataDir, u.UID)
		}
		return nil
	}
	if !errors.Is(err, ErrIdmapUnsupported) {
		return err
	}
	t0 = time.Now()
	if err := chownTree(inst.Mount, u); err != nil {
		return fmt.Errorf("give clone %s its own user (chown fallback): %w", inst.Name, err)
	}
	r.opt.Logger.Warn("the clone's filesystem does not support idmapped mounts: its files were chowned to the clone's user instead, which costs time proportional to the number of files on every create and reset (use btrfs, XFS, ext4 or OpenZFS >= 2.2)",
		"clone", inst.Name, "uid", u.UID, "took", time.Since(t0), "reason", err.Error())
	return nil
}

// Stop shuts postgres down in mode ("fast", "immediate", "smart"), killing
// it if it does not stop, then ends every other process of the clone's
// user and removes its cgroup. Stopping a stopped instance is a no-op.
func (r *Runtime) Stop(ctx context.Context, inst Instance, mode string) error {
	c := r.cluster(inst)
	if bin, berr := r.BinDir(inst.DataDir); berr == nil {
		c.BinDir = bin
	}
	pid := 0
	var err error
	if pm, perr := c.Postmaster(); perr == nil {
		pid = pm.PID
		pm.Close()
	}
	groups := cgroupsOf(pid, inst.Name)
	if pid > 0 {
		if err = c.Stop(ctx, mode); err != nil {
			r.opt.Logger.Warn("postgres did not stop; killing it", "instance", inst.Name, "err", err)
			c.Kill()
			if !c.Running() {
				err = nil
			}
		}
	}
	if u := r.user(inst); r.ownUser(u) {
		r.killUser(u)
	}
	removeCgroups(groups)
	if r.limits != nil {
		r.limits.remove(inst.Name)
	}
	return err
}

// Kill stops postgres at once (SIGQUIT, then SIGKILL) without a clean
// shutdown, ends every other process of the clone's user and removes its
// cgroup.
func (r *Runtime) Kill(inst Instance) {
	c := r.cluster(inst)
	if bin, err := r.BinDir(inst.DataDir); err == nil {
		c.BinDir = bin
	}
	pid := 0
	if pm, err := c.Postmaster(); err == nil {
		pid = pm.PID
		pm.Close()
	}
	groups := cgroupsOf(pid, inst.Name)
	c.Kill()
	if u := r.user(inst); r.ownUser(u) {
		r.killUser(u)
	}
	removeCgroups(groups)
	if r.limits != nil {
		r.limits.remove(inst.Name)
	}
}

// Release undoes what Start set up outside the data directory: the
// idmapped mount (before the backend destroys the dataset) and the
// instance's runtime directory. Call it after Stop.
func (r *Runtime) Release(inst Instance) error {
	var err error
	if inst.Mount != "" {
		err = Unmount(inst.Mount)
	}
	if r.opt.RunDir != "" && inst.Name != "" {
		if rerr := os.RemoveAll(r.instanceDir(inst.Name)); rerr != nil {
			// Not fatal to the release: the directory holds only this
			// instance's socket and lock files, made again by the next
			// Start of the name.
			r.opt.Logger.Warn("could not remove a clone's runtime directory", "clone", inst.Name, "err", rerr)
		}
	}
	return err
}

// killUser sends SIGKILL to every process of a clone's own user: kill(-1)
// from a thread running as that user reaches exactly that user's
// processes. It waits (up to 10 s: a process in uninterruptible sleep dies
// only when its I/O ends) until none is left.
func (r *Runtime) killUser(u pgcluster.OSUser) {
	if !r.ownUser(u) {
		return
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if !anyProcessOf(u) {
			return
		}
		left := processesOf(u.UID)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			r.opt.Logger.Warn("processes of a clone's OS user survive SIGKILL", "uid", u.UID, "pids", left)
			return
		}
		err := pgcluster.AsUser(u.UID, u.GID, func() error { return unix.Kill(-1, unix.SIGKILL) })
		if err != nil && !errors.Is(err, unix.ESRCH) {
			r.opt.Logger.Warn("could not end the processes of a clone's OS user", "uid", u.UID, "err", err)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// processesOf lists live processes whose real or effective uid is uid
// (from /proc/PID/status alone: this runs on every clone start).
func processesOf(uid uint32) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	want := strconv.FormatUint(uint64(uid), 10)
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile("/proc/" + e.Name() + "/status")
		if err != nil {
			continue
		}
		mine, zombie := false, false
		for line := range strings.SplitSeq(string(raw), "\n") {
			if v, ok := strings.CutPrefix(line, "State:"); ok {
				f := strings.Fields(v)
				zombie = len(f) > 0 && (f[0] == "Z" || f[0] == "X")
			}
			if v, ok := strings.CutPrefix(line, "Uid:"); ok {
				f := strings.Fields(v)
				mine = len(f) > 1 && (f[0] == want || f[1] == want)
				break
			}
		}
		if mine && !zombie {
			out = append(out, pid)
		}
	}
	return out
}

// UIDInUse reports whether any process runs as uid (the allocator skips
// such uids).
func UIDInUse(uid uint32) bool {
	return anyProcessOf(pgcluster.OSUser{UID: uid, GID: uid}) && len(processesOf(uid)) > 0
}

// anyProcessOf is the quick first check for processes of u: kill(-1, 0)
// sent as u reaches every process u may signal (those whose real or saved
// uid is u's) but the agent itself, and costs one syscall where a /proc
// scan reads every process's status. ESRCH means there is none; anything
// else (including a zombie) is confirmed by processesOf.
func anyProcessOf(u pgcluster.OSUser) bool {
	err := pgcluster.AsUser(u.UID, u.GID, func() error { return unix.Kill(-1, 0) })
	return !errors.Is(err, unix.ESRCH)
}

// Running reports the postmaster's pid and whether it is alive: a
// postgres process serving dataDir (a pid the clone wrote into
// postmaster.pid for another process does not count).
func (r *Runtime) Running(dataDir string) (int, bool) {
	c := &pgcluster.Cluster{DataDir: dataDir}
	pid, _ := c.PID()
	if pid <= 0 {
		return pid, false
	}
	p, err := pgcluster.ReadProc(pid)
	if err != nil || p.Zombie || filepath.Base(p.Exe) != "postgres" || p.DataDirArg() != filepath.Clean(dataDir) {
		return pid, false
	}
	return pid, true
}

// SocketConnString reaches the instance over its Unix socket (in the data
// directory) as user, without a password.
func (r *Runtime) SocketConnString(dataDir string, port int, user, db string) string {
	return (&pgcluster.Cluster{DataDir: dataDir}).SocketConnString(port, user, db)
}

// LogTail returns the last n lines of the instance's postgres log.
func (r *Runtime) LogTail(name string, n int) string {
	return pgcluster.TailFile(filepath.Join(r.instanceDir(name), "postgres.log"), n)
}

// Process is a running postmaster found on the host.
type Process struct {
	PID     int
	DataDir string
	// UID is the OS user it runs as.
	UID uint32
}

// Postmasters lists running postmasters (not their children, whose
// command lines postgres rewrites) with their -D data directory.
func Postmasters() ([]Process, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var out []Process
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		p, err := pgcluster.ReadProc(pid)
		if err != nil || p.Zombie || len(p.Args) == 0 || filepath.Base(p.Args[0]) != "postgres" || filepath.Base(p.Exe) != "postgres" {
			continue
		}
		if d := p.DataDirArg(); d != "" && p.OwnedBy(p.UIDs[0]) {
			out = append(out, Process{PID: pid, DataDir: d, UID: p.UIDs[0]})
		}
	}
	return out, nil
}

// KillPID stops a postmaster that no data directory the caller knows
// tracks (an orphan), after checking that it still is that postmaster
// (same user, a postgres binary, the same -D), as its own OS user:
// SIGQUIT, then SIGKILL. Every other process of a clone's own user ends
// too.
func (r *Runtime) KillPID(p Process) {
	if p.UID == 0 {
		return
	}
	u := pgcluster.OSUser{UID: p.UID, GID: p.UID}
	if p.UID == r.opt.User.UID {
		u = r.opt.User
	} else if info, err := os.Stat(p.DataDir); err == nil {
		u.GID = info.Sys().(*syscall.Stat_t).Gid
	}
	pm, err := pgcluster.VerifyPostmaster(p.PID, u, "", p.DataDir)
	if err != nil {
		r.opt.Logger.Warn("not stopping a process that is not the postmaster it was", "pid", p.PID, "reason", err.Error())
		return
	}
	defer pm.Close()
	groups := cgroupsOf(p.PID, "")
	_ = pm.Signal(syscall.SIGQUIT) // it may have exited already; Wait tells
	if !pm.Wait(5 * time.Second) {
		_ = pm.Signal(syscall.SIGKILL) // as above
		pm.Wait(5 * time.Second)
	}
	r.killUser(u)
	removeCgroups(groups)
}

// processAlive reports whether pid exists and has not exited.
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	p, err := pgcluster.ReadProc(pid)
	return err == nil && !p.Zombie
}
