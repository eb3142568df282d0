// Package pgcluster initializes, starts and stops PostgreSQL clusters with the
// system's binaries, as the postgres OS user. The agent uses it for clone
// instances and the pool's own instance, the platform for its embedded
// database, and tests for throwaway servers.
package pgcluster

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/thinlab/thinlab/internal/command"
)

// DefaultBinRoot is where Debian installs one directory per major version.
const DefaultBinRoot = "/usr/lib/postgresql"

// OSUser is the account PostgreSQL runs as.
type OSUser struct {
	Name string
	UID  uint32
	GID  uint32
}

// LookupUser finds an OS account by name (normally "postgres").
func LookupUser(name string) (OSUser, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return OSUser{}, fmt.Errorf("OS user %q not found (install postgresql or set the user in the config): %w", name, err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	return OSUser{Name: name, UID: uint32(uid), GID: uint32(gid)}, nil
}

// Credential returns the credential for running a process as u, or nil when
// the current process already is u (so tests can run unprivileged too).
func (u OSUser) Credential() *syscall.Credential {
	if uint32(os.Getuid()) == u.UID { //nolint:gosec // a uid is never negative
		return nil
	}
	return &syscall.Credential{Uid: u.UID, Gid: u.GID}
}

// ChownR hands path and everything below it to u, without following
// symlinks. The walk runs in an os.Root: a directory swapped for a symlink
// during the walk cannot lead it outside path.
func (u OSUser) ChownR(path string) error {
	root, err := os.OpenRoot(path)
	if err != nil {
		return err
	}
	defer func() { _ = root.Close() }() // only a directory handle
	return fs.WalkDir(root.FS(), ".", func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return root.Lchown(p, int(u.UID), int(u.GID))
	})
}

// MkdirTemp creates a fresh directory under os.TempDir() owned by u with mode
// 0700. t.TempDir() cannot be used for data directories when tests run as
// root: its parent is 0700 root, so the postgres user cannot reach it.
func MkdirTemp(pattern string, u OSUser) (string, error) {
	dir, err := os.MkdirTemp("", pattern)
	if err != nil {
		return "", err
	}
	if err := os.Chmod(dir, 0o700); err != nil { //nolint:gosec // a directory: 0700 is owner-only
		return "", err
	}
	if err := os.Chown(dir, int(u.UID), int(u.GID)); err != nil {
		_ = os.RemoveAll(dir) // undo; the chown error is the one to report
		return "", err
	}
	return dir, nil
}

// BinDirFor returns the binaries directory matching dataDir's PG_VERSION
// under root (DefaultBinRoot when empty).
func BinDirFor(root, dataDir string) (string, error) {
	if root == "" {
		root = DefaultBinRoot
	}
	raw, err := os.ReadFile(filepath.Join(dataDir, "PG_VERSION")) //nolint:gosec // a configured data directory
	if err != nil {
		return "", fmt.Errorf("read PG_VERSION of %s (is it a PostgreSQL data directory?): %w", dataDir, err)
	}
	major := strings.TrimSpace(string(raw))
	dir := filepath.Join(root, major, "bin")
	if _, err := os.Stat(filepath.Join(dir, "postgres")); err != nil { //nolint:gosec // the configured PostgreSQL binary directory
		return "", fmt.Errorf("data directory %s needs PostgreSQL %s, but %s/postgres is missing (install postgresql-%s)", dataDir, major, dir, major)
	}
	return dir, nil
}

// NewestBinDir returns the binaries directory of the newest installed major
// version under root (DefaultBinRoot when empty).
func NewestBinDir(root string) (string, error) {
	if root == "" {
		root = DefaultBinRoot
	}
	entries, err := os.ReadDir(root)
	if err != nil {
		return "", fmt.Errorf("no PostgreSQL under %s (install postgresql-15): %w", root, err)
	}
	var majors []int
	for _, e := range entries {
		if n, err := strconv.Atoi(e.Name()); err == nil {
			if _, err := os.Stat(filepath.Join(root, e.Name(), "bin", "postgres")); err == nil {
				majors = append(majors, n)
			}
		}
	}
	if len(majors) == 0 {
		return "", fmt.Errorf("no PostgreSQL server binaries under %s (install postgresql-15)", root)
	}
	return filepath.Join(root, strconv.Itoa(slices.Max(majors)), "bin"), nil
}

// Cluster is one PostgreSQL data directory and how to run it.
type Cluster struct {
	DataDir string
	BinDir  string
	User    OSUser
	// SocketDir holds the Unix socket; defaults to DataDir.
	SocketDir string
	// LogPath is where Start sends the server's output; defaults to
	// thinlab-postgres.log in DataDir. The agent keeps clones' logs in a
	// root-owned directory instead, handing postgres only the open file.
	LogPath string
	Runner  command.Runner
	Logger  *slog.Logger
	// DieWithParent makes postgres get SIGKILL when the process that
	// started it dies (Pdeathsig), for servers started by tests: a test
	// binary killed by -timeout must not leave them holding mounts. Never
	// for clones, which outlive the agent by design. Pdeathsig follows the
	// OS thread that started the child, and Go ends a thread when a
	// goroutine locked to it exits (AsUser does, on every Signal), so
	// such servers are started from a thread that never ends
	// (StartOnLastingThread).
	DieWithParent bool
}

// InitOptions are passed to initdb.
type InitOptions struct {
	Superuser string // default "postgres"
	// AuthLocal and AuthHost default to "trust" and "scram-sha-256".
	AuthLocal string
	AuthHost  string
}

// Init runs initdb into c.DataDir, which must be empty or missing and whose
// parent the postgres user can reach.
func (c *Cluster) Init(ctx context.Context, opt InitOptions) error {
	if opt.Superuser == "" {
		opt.Superuser = "postgres"
	}
	if opt.AuthLocal == "" {
		opt.AuthLocal = "trust"
	}
	if opt.AuthHost == "" {
		opt.AuthHost = "scram-sha-256"
	}
	if c.BinDir == "" {
		dir, err := NewestBinDir("")
		if err != nil {
			return err
		}
		c.BinDir = dir
	}
	if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
		return err
	}
	if err := os.Chown(c.DataDir, int(c.User.UID), int(c.User.GID)); err != nil {
		return err
	}
	_, err := c.Runner.RunCmd(ctx, command.Cmd{
		Name:       filepath.Join(c.BinDir, "initdb"),
		Args:       []string{"-D", c.DataDir, "-U", opt.Superuser, "--auth-local=" + opt.AuthLocal, "--auth-host=" + opt.AuthHost, "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"},
		Credential: c.User.Credential(),
		Dir:        "/",
	})
	return err
}

func (c *Cluster) socketDir() string {
	if c.SocketDir != "" {
		return c.SocketDir
	}
	return c.DataDir
}

// LogFile is where Start sends the server's output.
func (c *Cluster) LogFile() string {
	if c.LogPath != "" {
		return c.LogPath
	}
	return filepath.Join(c.DataDir, "thinlab-postgres.log")
}

// FastSettings are for throwaway clusters in tests: no durability.
var FastSettings = map[string]string{
	"fsync":              "off",
	"synchronous_commit": "off",
	"full_page_writes":   "off",
}

// Start launches postgres on port (listening on listenAddr, or only the
// socket when empty) with extra settings, detached in its own session so it
// outlives the caller, and waits until it accepts connections.
func (c *Cluster) Start(ctx context.Context, port int, listenAddr string, settings map[string]string) error {
	// A caller whose time is already used up gets that said, instead of a
	// postgres that is launched, killed at once and reported as "did not
	// become ready" with an empty log, which reads like a hang.
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("postgres in %s not started: no time left (%w)", c.DataDir, err)
	}
	if c.BinDir == "" {
		dir, err := BinDirFor("", c.DataDir)
		if err != nil {
			return err
		}
		c.BinDir = dir
	}
	// A pid file copied from a snapshot of a running server must go, or
	// postgres may refuse to start.
	if c.Running() {
		pid, _ := c.PID()
		return fmt.Errorf("postgres already running in %s (pid %d)", c.DataDir, pid)
	}
	if err := RemoveStale(c.DataDir); err != nil {
		return fmt.Errorf("remove stale postmaster.pid: %w", err)
	}

	args := []string{"-D", c.DataDir,
		"-c", "port=" + strconv.Itoa(port),
		"-c", "listen_addresses=" + listenAddr,
		"-c", "unix_socket_directories=" + c.socketDir(),
	}
	for _, k := range slices.Sorted(maps.Keys(settings)) {
		args = append(args, "-c", k+"="+settings[k])
	}
	logf, err := OpenLog(c.LogFile(), c.LogPath != "")
	if err != nil {
		return err
	}
	defer func() { _ = logf.Close() }() // the server writes through its own descriptor
	if c.LogPath == "" {
		// The legacy log lives in the data directory, which the server
		// owns.
		if err := logf.Chown(int(c.User.UID), int(c.User.GID)); err != nil {
			return fmt.Errorf("give the postgres log to %s: %w", c.User.Name, err)
		}
	}

	cmd := exec.Command(filepath.Join(c.BinDir, "postgres"), args...) //nolint:gosec // runs the configured postgres binary; the arguments are settings, not a shell
	cmd.Dir = "/"
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Credential: c.User.Credential()}
	if c.DieWithParent {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	c.logger().Debug("start postgres", "datadir", c.DataDir, "port", port)
	start := cmd.Start
	if c.DieWithParent {
		start = func() error { return StartOnLastingThread(cmd) }
	}
	if err := start(); err != nil {
		return fmt.Errorf("start postgres in %s: %w", c.DataDir, err)
	}
	launched := time.Now()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reap the child when it ends

	// Small data starts in tens of milliseconds: a short tick keeps the
	// wait for readiness from adding much to a clone's start. After the
	// first 100 ms the tick slows down, so that a slow start (a large
	// recovery, a loaded or emulated host) is not slowed further by polls.
	const fastPolls = 50
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	polls := 0
	for {
		if c.ready(cmd.Process.Pid) {
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("postgres in %s exited during start (%v): %s", c.DataDir, err, TailFile(c.LogFile(), 10))
		case <-ctx.Done():
			_ = cmd.Process.Kill() // it may have exited meanwhile; the timeout is the error
			// How long it was given tells a stuck server (the whole
			// budget) from a caller that had little left.
			return fmt.Errorf("postgres in %s did not become ready within %s of its start: %w; log: %s", c.DataDir, time.Since(launched).Round(time.Millisecond), ctx.Err(), TailFile(c.LogFile(), 10))
		case <-tick.C:
			if polls++; polls == fastPolls {
				tick.Reset(10 * time.Millisecond)
			}
		}
	}
}

// ready reads postmaster.pid: line 1 is the pid, line 8 the status
// ("ready" once connections are accepted), as pg_ctl -w does.
func (c *Cluster) ready(pid int) bool {
	lines, err := readPidFile(c.DataDir)
	if err != nil || len(lines) < 8 {
		return false
	}
	return lines[0] == strconv.Itoa(pid) && strings.TrimSpace(lines[7]) == "ready"
}

// PID returns the postmaster's pid from postmaster.pid (0 if none).
func (c *Cluster) PID() (int, error) {
	lines, err := readPidFile(c.DataDir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, nil
		}
		return 0, err
	}
	if len(lines) == 0 {
		return 0, nil
	}
	return strconv.Atoi(strings.TrimSpace(lines[0]))
}

// Postmaster pins the postmaster recorded in postmaster.pid after checking
// that it really is this cluster's (its OS user, a postgres binary, -D this
// data directory): the file is writable by whoever runs the server, who
// may have written any pid into it. The caller closes it.
func (c *Cluster) Postmaster() (*Postmaster, error) {
	pid, err := c.PID()
	if err != nil {
		return nil, err
	}
	if pid <= 0 {
		return nil, errors.New("no postmaster.pid")
	}
	return VerifyPostmaster(pid, c.User, c.BinDir, c.DataDir)
}

// Running reports whether this cluster's verified postmaster is alive.
func (c *Cluster) Running() bool {
	pm, err := c.Postmaster()
	if err != nil {
		return false
	}
	pm.Close()
	return true
}

// Stop shuts the server down (mode "fast" when empty), signalling the
// verified postmaster as the cluster's OS user like pg_ctl stop does, and
// waits up to a minute for it to exit.
func (c *Cluster) Stop(ctx context.Context, mode string) error {
	sig, err := StopSignal(mode)
	if err != nil {
		return err
	}
	pm, err := c.Postmaster()
	if err != nil {
		return nil // not running (or not ours to stop)
	}
	defer pm.Close()
	if err := pm.Signal(sig); err != nil {
		return fmt.Errorf("stop postgres in %s: %w", c.DataDir, err)
	}
	wait := time.Minute
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
		wait = time.Until(dl)
	}
	if !pm.Wait(wait) {
		return fmt.Errorf("postgres in %s (pid %d) did not stop within %s (mode %s)", c.DataDir, pm.PID, wait.Round(time.Second), mode)
	}
	return nil
}

// Kill stops the server at once (SIGQUIT to the verified postmaster, then
// SIGKILL), for cleanup paths where a clean shutdown does not matter.
func (c *Cluster) Kill() {
	pm, err := c.Postmaster()
	if err != nil {
		return
	}
	defer pm.Close()
	_ = pm.Signal(syscall.SIGQUIT) // it may have exited already; Wait tells
	if !pm.Wait(5 * time.Second) {
		_ = pm.Signal(syscall.SIGKILL) // as above
		pm.Wait(5 * time.Second)
	}
}

// SocketConnString is a libpq key/value string that reaches the server over
// its Unix socket (trust auth from initdb's defaults).
func (c *Cluster) SocketConnString(port int, user, db string) string {
	return fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable", c.socketDir(), port, user, db)
}

func (c *Cluster) logger() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.Default()
}

// readPidFile reads postmaster.pid without following symlinks.
func readPidFile(dataDir string) ([]string, error) {
	raw, err := ReadDataFile(dataDir, "postmaster.pid", 64<<10)
	if err != nil {
		return nil, err
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines, sc.Err()
}
