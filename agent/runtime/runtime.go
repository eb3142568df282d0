// Package runtime is how a clone's postgres runs: as the postgres OS user,
// on its own port, with the agent's pg_hba.conf and a settings file written
// into the clone's data directory, optionally inside a cgroup with CPU and
// memory limits. It knows processes and data directories, not clone
// lifecycles (that is agent/clone).
package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/thinlab/thinlab/internal/command"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

// SettingsFile is the file, inside the data directory, that holds the
// clone's settings; postgresql.conf includes it.
const SettingsFile = "postgresql.thinlab.conf"

// includeLine is appended to the clone's postgresql.conf (a CoW copy).
const includeLine = "include_if_exists = '" + SettingsFile + "'\t# added by the Thinlab agent\n"

// HBA is the clone's pg_hba.conf: the agent (root or the postgres user,
// the only ones who can reach the socket in the 0700 data directory) logs
// in over the socket without a password; everyone else needs a password
// (SCRAM) over TCP.
const HBA = `# Written by the Thinlab agent; rewritten on every start.
local   all   all         trust
host    all   all   all   scram-sha-256
`

// Options configure a Runtime.
type Options struct {
	// BinRoot holds <major>/bin (pgcluster.DefaultBinRoot when empty).
	BinRoot string
	// User runs postgres.
	User pgcluster.OSUser
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
}

// Instance is one postgres to run.
type Instance struct {
	// Name identifies the instance in logs and names its cgroup.
	Name    string
	DataDir string
	Port    int
	// Settings are written to SettingsFile (already validated and merged
	// with defaults by the caller).
	Settings map[string]string
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

func (r *Runtime) cluster(dataDir string) *pgcluster.Cluster {
	return &pgcluster.Cluster{DataDir: dataDir, User: r.opt.User, Runner: r.opt.Runner, Logger: r.opt.Logger}
}

// BinDir is the binaries directory for dataDir's PG_VERSION.
func (r *Runtime) BinDir(dataDir string) (string, error) {
	return pgcluster.BinDirFor(r.opt.BinRoot, dataDir)
}

// Start prepares the data directory (settings file, pg_hba.conf, stale pid
// and socket files of the snapshot's origin) and starts postgres, waiting
// until it accepts connections. It fails if postgres already runs there.
func (r *Runtime) Start(ctx context.Context, inst Instance) error {
	if n := len(inst.DataDir) + len("/.s.PGSQL.65535.lock"); n > 107 {
		return fmt.Errorf("data directory path %s is too long for a Unix socket (%d > 107 bytes): use a shorter clonesDir", inst.DataDir, n)
	}
	c := r.cluster(inst.DataDir)
	bin, err := r.BinDir(inst.DataDir)
	if err != nil {
		return err
	}
	c.BinDir = bin
	if c.Running() {
		pid, _ := c.PID()
		return fmt.Errorf("postgres already running in %s (pid %d)", inst.DataDir, pid)
	}
	if err := r.prepare(inst); err != nil {
		return fmt.Errorf("prepare %s: %w", inst.DataDir, err)
	}
	fixed := map[string]string{
		"hba_file":          filepath.Join(inst.DataDir, "pg_hba.conf"),
		"external_pid_file": "",
	}
	if err := c.Start(ctx, inst.Port, r.opt.ListenAddresses, fixed); err != nil {
		return err
	}
	if r.limits != nil {
		pid, _ := c.PID()
		if err := r.limits.attach(inst.Name, pid); err != nil {
			// A clone never runs without its configured limits.
			r.Kill(inst.Name, inst.DataDir)
			return fmt.Errorf("limits are configured but postgres could not be put into its cgroup, so it was stopped: %w", err)
		}
	}
	return nil
}

func (r *Runtime) prepare(inst Instance) error {
	dir := inst.DataDir
	uid, gid := int(r.opt.User.UID), int(r.opt.User.GID)
	os.Remove(filepath.Join(dir, "postmaster.pid"))
	// Socket lock files copied from the origin name its pid, which may be
	// alive; they are per port, but a reset may reuse the origin's port.
	if stale, _ := filepath.Glob(filepath.Join(dir, ".s.PGSQL.*")); len(stale) > 0 {
		for _, f := range stale {
			os.Remove(f)
		}
	}
	// The origin's log is not this clone's; start a fresh one so errors
	// shown on FATAL are this clone's own.
	os.Remove(filepath.Join(dir, "thinlab-postgres.log"))

	write := func(name, content string) error {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			return err
		}
		return os.Chown(p, uid, gid)
	}
	if err := write(SettingsFile, renderSettings(inst.Settings)); err != nil {
		return err
	}
	if err := write("pg_hba.conf", HBA); err != nil {
		return err
	}
	conf := filepath.Join(dir, "postgresql.conf")
	raw, err := os.ReadFile(conf)
	if err != nil {
		return fmt.Errorf("read postgresql.conf: %w", err)
	}
	if !strings.Contains(string(raw), includeLine) {
		f, err := os.OpenFile(conf, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return err
		}
		_, werr := f.WriteString("\n" + includeLine)
		if err := f.Close(); werr == nil {
			werr = err
		}
		if werr != nil {
			return werr
		}
	}
	return nil
}

// Stop shuts postgres down in mode ("fast", "immediate", "smart"), killing
// it if pg_ctl fails, and removes its cgroup. Stopping a stopped instance
// is a no-op.
func (r *Runtime) Stop(ctx context.Context, name, dataDir, mode string) error {
	c := r.cluster(dataDir)
	pid, _ := c.PID()
	groups := cgroupsOf(pid, name)
	var err error
	if c.Running() {
		if bin, berr := r.BinDir(dataDir); berr == nil {
			c.BinDir = bin
		}
		if err = c.Stop(ctx, mode); err != nil {
			r.opt.Logger.Warn("pg_ctl stop failed; killing postgres", "instance", name, "err", err)
			r.kill(pid)
			if !c.Running() {
				err = nil
			}
		}
	}
	removeCgroups(groups)
	if r.limits != nil {
		r.limits.remove(name)
	}
	return err
}

// Kill stops postgres at once (SIGQUIT, then SIGKILL) without a clean
// shutdown, and removes its cgroup.
func (r *Runtime) Kill(name, dataDir string) {
	c := r.cluster(dataDir)
	pid, _ := c.PID()
	groups := cgroupsOf(pid, name)
	if pid > 0 && c.Running() {
		r.kill(pid)
	}
	removeCgroups(groups)
	if r.limits != nil {
		r.limits.remove(name)
	}
}

func (r *Runtime) kill(pid int) {
	if pid <= 0 {
		return
	}
	syscall.Kill(pid, syscall.SIGQUIT)
	if waitGone(pid, 5*time.Second) {
		return
	}
	syscall.Kill(pid, syscall.SIGKILL)
	waitGone(pid, 5*time.Second)
}

// Running reports the postmaster's pid and whether it is alive.
func (r *Runtime) Running(dataDir string) (int, bool) {
	c := r.cluster(dataDir)
	pid, _ := c.PID()
	return pid, c.Running()
}

// SocketConnString reaches the instance over its Unix socket (in the data
// directory) as user, without a password.
func (r *Runtime) SocketConnString(dataDir string, port int, user, db string) string {
	return r.cluster(dataDir).SocketConnString(port, user, db)
}

// LogTail returns the last n lines of the instance's postgres log.
func (r *Runtime) LogTail(dataDir string, n int) string {
	raw, err := os.ReadFile(r.cluster(dataDir).LogFile())
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Process is a running postmaster found on the host.
type Process struct {
	PID     int
	DataDir string
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
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(raw) == 0 {
			continue
		}
		args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		if filepath.Base(args[0]) != "postgres" {
			continue
		}
		for i := 1; i+1 < len(args); i++ {
			if args[i] == "-D" {
				if processAlive(pid) {
					out = append(out, Process{PID: pid, DataDir: filepath.Clean(args[i+1])})
				}
				break
			}
		}
	}
	return out, nil
}

// KillPID stops a postmaster that is not tracked by any data directory
// the caller knows (an orphan): SIGQUIT, then SIGKILL.
func (r *Runtime) KillPID(pid int) {
	groups := cgroupsOf(pid, "")
	r.kill(pid)
	removeCgroups(groups)
}

func processAlive(pid int) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	s := string(raw)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(fields) == 0 || fields[0] != "Z"
}

func waitGone(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if !processAlive(pid) {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return !processAlive(pid)
}
