package physical

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/retrieval/pgsource"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

// toolPlan is how one tool makes the first copy and what restore_command
// the standby then uses.
type toolPlan struct {
	// argv fills dataDir; run through the private env wrapper.
	argv func(dataDir string) []string
	// restoreCommand is the tool's restore_command ("" when it has none)
	// for the standby in the pool's main dataset.
	restoreCommand string
	// restoreIn is the same restore_command for a postgres in another
	// data directory (a point-in-time recovery in a clone): pgBackRest
	// writes a relative %p beneath --pg1-path, which must be that one.
	restoreIn func(dataDir string) string
}

// tool resolves retrieval.physical.tool into a plan.
func (r *Retriever) tool() (toolPlan, error) {
	c := r.cfg
	bin := func(name string) string {
		if c.ToolPath != "" {
			return c.ToolPath
		}
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
		return name
	}
	env := filepath.Join(r.priv, envScript)
	var p toolPlan
	switch c.Tool {
	case config.ToolBasebackup:
		p.argv = func(dataDir string) []string {
			return []string{r.pgBin(dataDir, "pg_basebackup"), "-D", dataDir, "-X", "stream", "-c", "fast", "--no-sync", "-d", r.replicationConnInfo()}
		}
	case config.ToolCommand:
		p.argv = func(string) []string { return []string{"/bin/sh", "-c", c.Command} }
	case config.ToolPgBackRest:
		tool := bin("pgbackrest")
		var opts []string
		if c.PgBackRest.ConfigFile != "" {
			opts = append(opts, "--config="+c.PgBackRest.ConfigFile)
		}
		opts = append(opts, "--stanza="+c.PgBackRest.Stanza)
		p.argv = func(dataDir string) []string {
			a := append([]string{tool}, opts...)
			if c.PgBackRest.Set != "" {
				a = append(a, "--set="+c.PgBackRest.Set)
			}
			return append(a, "--pg1-path="+dataDir, "--type=standby", "--archive-mode=off", "--log-level-console=warn", "restore")
		}
		// archive-get checks that it runs for the cluster in pg1-path.
		p.restoreIn = func(dataDir string) string {
			return shJoin(append(append([]string{env, tool}, opts...), "--pg1-path="+dataDir, "archive-get")) + ` %f "%p"`
		}
	case config.ToolBarman:
		tool := bin("barman")
		var opts []string
		if c.Barman.ConfigFile != "" {
			opts = append(opts, "-c", c.Barman.ConfigFile)
		}
		id := c.Barman.BackupID
		if id == "" {
			id = "latest"
		}
		p.argv = func(dataDir string) []string {
			return append(append([]string{tool}, opts...), "-q", "recover", c.Barman.Server, id, dataDir)
		}
		p.restoreCommand = shJoin(append(append([]string{env, tool}, opts...), "-q", "get-wal", c.Barman.Server)) + ` %f > "%p"`
	case config.ToolWALG:
		tool := bin("wal-g")
		name := c.WALG.BackupName
		if name == "" {
			name = "LATEST"
		}
		p.argv = func(dataDir string) []string { return []string{tool, "backup-fetch", dataDir, name} }
		p.restoreCommand = shJoin([]string{env, tool, "wal-fetch"}) + ` "%f" "%p"`
	default:
		return p, fmt.Errorf("retrieval.physical.tool %q is unknown: use basebackup, command, pgbackrest, barman or walg", c.Tool)
	}
	if p.restoreIn != nil {
		p.restoreCommand = p.restoreIn(r.dataDir())
	}
	if c.ArchiveDir != "" {
		p.restoreIn = nil
		// A plain archive directory: copied from as provision.osUser.
		p.restoreCommand = "/bin/cp " + shQuote(strings.TrimSuffix(c.ArchiveDir, "/")) + `/"%f" "%p"`
	}
	if c.RestoreCommand != "" {
		p.restoreIn = nil
		p.restoreCommand = shJoin([]string{env}) + " /bin/sh -c " + shQuote(c.RestoreCommand)
	}
	if p.restoreIn == nil {
		cmd := p.restoreCommand
		p.restoreIn = func(string) string { return cmd }
	}
	if strings.ContainsAny(r.priv, "'\n") {
		return p, fmt.Errorf("the private directory %q must not contain quotes or newlines (it is part of restore_command)", r.priv)
	}
	return p, nil
}

// pgBin is a PostgreSQL program of the major version of dataDir (the
// newest installed when dataDir holds none yet).
func (r *Retriever) pgBin(dataDir, name string) string {
	dir, err := pgcluster.BinDirFor(r.binRoot, dataDir)
	if err != nil {
		dir, _ = pgcluster.NewestBinDir(r.binRoot) // without any PostgreSQL the program's start fails and says so
	}
	return filepath.Join(dir, name)
}

// refresh replaces the pool's main data with a fresh copy and starts the
// standby on it.
func (r *Retriever) refresh(ctx context.Context) error {
	plan, err := r.tool()
	if err != nil {
		return err
	}
	if err := r.writePrivate(); err != nil {
		return err
	}
	main := r.pool.MainDir()
	if err := os.Chown(main, int(r.user.UID), int(r.user.GID)); err != nil {
		return fmt.Errorf("hand the pool's main dataset to %s: %w", r.user.Name, err)
	}
	sb := r.standby()
	if sb.Running() {
		if err := sb.Stop(ctx, "fast"); err != nil {
			return fmt.Errorf("stop the standby before the new copy: %w", err)
		}
	}
	// Earlier data lives on in the snapshots; a copy starts empty. No
	// clone runs as provision.osUser, so nothing in main is hostile;
	// RemoveAll removes symlinks, never their targets.
	dataDir := r.dataDir()
	if err := os.RemoveAll(dataDir); err != nil {
		return fmt.Errorf("clear the pool's data directory: %w", err)
	}
	if err := pgcluster.AsUser(r.user.UID, r.user.GID, func() error { return os.Mkdir(dataDir, 0o700) }); err != nil {
		return fmt.Errorf("create the pool's data directory as %s: %w", r.user.Name, err)
	}
	argv := plan.argv(dataDir)
	if err := r.runTool(ctx, argv, dataDir); err != nil {
		return err
	}
	if !r.hasCopy() {
		return fmt.Errorf("retrieval.physical.tool %s finished but %s holds no PostgreSQL data directory (no PG_VERSION)", r.cfg.Tool, dataDir)
	}
	if err := r.prepareStandby(dataDir); err != nil {
		return err
	}
	return r.startStandby(ctx)
}

// runTool runs argv as provision.osUser through the private environment
// wrapper, with PGDATA set; its stderr is in the error.
func (r *Retriever) runTool(ctx context.Context, argv []string, dataDir string) error {
	full := append([]string{filepath.Join(r.priv, envScript)}, argv...)
	cmd := exec.CommandContext(ctx, full[0], full[1:]...) //nolint:gosec // G204: the configured tool, arguments built here, run as the unprivileged OS user
	cmd.Env = append(pgsource.BaseEnv(r.user), "PGDATA="+dataDir)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: r.user.Credential(), Setpgid: true}
	// A cancelled copy ends the tool and whatever it started.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out tailBuffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	start := time.Now()
	r.log.Info("first copy: running the tool", "tool", r.cfg.Tool, "program", argv[0])
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("retrieval.physical.tool %s (%s): %v: %s", r.cfg.Tool, filepath.Base(argv[0]), err, out.String())
	}
	r.log.Info("first copy: the tool finished", "tool", r.cfg.Tool, "elapsed", time.Since(start))
	return nil
}

// prepareStandby makes the copy start as a standby: standby.signal, and
// the configuration files a copy of a Debian-managed cluster lacks (its
// postgresql.conf and pg_hba.conf live in /etc). Files are created as
// provision.osUser, never as root.
func (r *Retriever) prepareStandby(dataDir string) error {
	return pgcluster.AsUser(r.user.UID, r.user.GID, func() error {
		d, err := os.OpenRoot(dataDir)
		if err != nil {
			return err
		}
		defer func() { _ = d.Close() }() // a directory handle
		for _, f := range []struct{ name, content string }{
			{"standby.signal", ""},
			{"postgresql.conf", "# made by thinlab: the copied cluster kept its configuration outside the data directory\n"},
			{"pg_hba.conf", "# made by thinlab: only the pool's own socket, only its OS user reaches it\nlocal all all trust\n"},
		} {
			fh, err := d.OpenFile(f.name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if errors.Is(err, os.ErrExist) {
				continue
			}
			if err != nil {
				return fmt.Errorf("create %s in the copy: %w", f.name, err)
			}
			_, err = fh.WriteString(f.content)
			if cerr := fh.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("write %s in the copy: %w", f.name, err)
			}
		}
		return nil
	})
}

// standbySettings are the standby's -c settings: how it keeps up, and no
// archiving (a standby's WAL must never reach the backup repository).
func (r *Retriever) standbySettings() (map[string]string, error) {
	plan, err := r.tool()
	if err != nil {
		return nil, err
	}
	s := map[string]string{
		"hot_standby":              "on",
		"archive_mode":             "off",
		"primary_conninfo":         "",
		"restore_command":          "",
		"recovery_target_timeline": "latest",
	}
	switch r.cfg.StandbyKind(r.src) {
	case config.StandbyStreaming:
		s["primary_conninfo"] = r.replicationConnInfo()
	case config.StandbyRestoreCommand:
		s["restore_command"] = plan.restoreCommand
	}
	maps.Copy(s, r.cfg.Settings)
	return s, nil
}

// ensureStandby starts the standby unless it runs.
func (r *Retriever) ensureStandby(ctx context.Context) error {
	if r.standby().Running() {
		return nil
	}
	if err := r.writePrivate(); err != nil {
		return err
	}
	return r.startStandby(ctx)
}

func (r *Retriever) startStandby(ctx context.Context) error {
	settings, err := r.standbySettings()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, r.startTO)
	defer cancel()
	if err := r.standby().Start(ctx, standbyPort, "", settings); err != nil {
		return fmt.Errorf("start the standby: %w", err)
	}
	r.log.Info("standby started", "datadir", r.dataDir(), "standby", r.cfg.StandbyKind(r.src))
	return nil
}

// Private files: the tools' environment wrapper and the source's password.
const (
	envScript = "env.sh"
	passFile  = "pgpass"
)

// writePrivate (re)writes the private directory: root-owned, readable by
// provision.osUser's group only, so the user reads but cannot replace what
// root writes there, and no clone uid reads it at all.
func (r *Retriever) writePrivate() error {
	if err := os.MkdirAll(filepath.Dir(r.priv), 0o755); err != nil { //nolint:gosec // G301: provision.osUser traverses it to its private directory
		return fmt.Errorf("private directory for the tools: %w", err)
	}
	if err := os.Mkdir(r.priv, 0o750); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("private directory for the tools: %w", err)
	}
	st, err := os.Lstat(r.priv)
	if err != nil {
		return err
	}
	if !st.IsDir() || st.Sys().(*syscall.Stat_t).Uid != 0 && os.Geteuid() == 0 {
		return fmt.Errorf("%s must be a directory owned by root", r.priv)
	}
	if err := os.Chown(r.priv, os.Geteuid(), int(r.user.GID)); err != nil {
		return err
	}
	if err := os.Chmod(r.priv, 0o750); err != nil { //nolint:gosec // G302: the group is provision.osUser's: it must read the tools' environment
		return err
	}
	env := map[string]string{}
	maps.Copy(env, r.cfg.Env)
	for _, k := range r.cfg.EnvFromAgent {
		if v, ok := os.LookupEnv(k); ok {
			env[k] = v
		}
	}
	var b strings.Builder
	b.WriteString("#!/bin/sh\n# made by thinlab: the environment of the physical retrieval tools\n")
	for _, k := range slices.Sorted(maps.Keys(env)) {
		fmt.Fprintf(&b, "export %s=%s\n", k, shQuote(env[k]))
	}
	b.WriteString("exec \"$@\"\n")
	if err := r.writePrivateFile(envScript, b.String(), 0o750, int(r.user.GID)); err != nil {
		return err
	}
	// libpq reads a password file only when it is private to the user.
	pass := ""
	if pw := r.src.ResolvedPassword(); pw != "" {
		pass = "*:*:*:*:" + pgpassEscape(pw) + "\n"
	}
	return r.writePrivateFile(passFile, pass, 0o600, int(r.user.GID), int(r.user.UID))
}

// writePrivateFile replaces name in the private directory atomically.
func (r *Retriever) writePrivateFile(name, content string, mode os.FileMode, gid int, uid ...int) error {
	tmp := filepath.Join(r.priv, "."+name+".tmp")
	_ = os.Remove(tmp)                                                                   // a leftover of a crash
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600) //nolint:gosec // G304: a fixed name in the root-owned private directory
	if err != nil {
		return err
	}
	owner := os.Geteuid()
	if len(uid) > 0 {
		owner = uid[0]
	}
	_, err = f.WriteString(content)
	if err == nil {
		err = f.Chown(owner, gid)
	}
	if err == nil {
		err = f.Chmod(mode)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(r.priv, name))
	}
	if err != nil {
		_ = os.Remove(tmp) // the error says what failed
		return fmt.Errorf("write %s: %w", filepath.Join(r.priv, name), err)
	}
	return nil
}

// replicationConnInfo is the source as a libpq conninfo for pg_basebackup
// and primary_conninfo: the password only through the private passfile.
func (r *Retriever) replicationConnInfo() string {
	p := r.sourceParams()
	delete(p, "password")
	p["passfile"] = filepath.Join(r.priv, passFile)
	p["application_name"] = "thinlab_" + r.pool.Name()
	return pgsource.Conninfo(p)
}

// sourceParams are the libpq parameters of retrieval.source, password
// included (shared with logical retrieval: the same keys, the same
// connStr parsing).
func (r *Retriever) sourceParams() map[string]string {
	p, err := pgsource.Params(r.src)
	if err != nil {
		return map[string]string{} // New refused such a source already
	}
	return p
}

// pgpassEscape escapes ':' and '\' for a .pgpass field.
func pgpassEscape(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), `:`, `\:`)
}

// shQuote quotes s for /bin/sh.
func shQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func shJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = shQuote(a)
	}
	return strings.Join(q, " ")
}
