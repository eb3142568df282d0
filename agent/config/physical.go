package config

import (
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"

	"github.com/robfig/cron/v3"
)

// Physical tools and standby kinds.
const (
	ToolBasebackup = "basebackup"
	ToolCommand    = "command"
	ToolPgBackRest = "pgbackrest"
	ToolBarman     = "barman"
	ToolWALG       = "walg"

	StandbyStreaming      = "streaming"
	StandbyRestoreCommand = "restoreCommand"
	StandbyNone           = "none"

	// DefaultLagAlertSeconds is retrieval.physical.lagAlertSeconds' default.
	DefaultLagAlertSeconds = 300
)

// SourceSet reports whether retrieval.source names a server.
func (s Source) SourceSet() bool { return s.ConnStr != "" || s.Host != "" }

// StandbyKind is Standby, or its default for the tool.
func (p Physical) StandbyKind(src Source) string {
	if p.Standby != "" {
		return p.Standby
	}
	switch p.Tool {
	case ToolBasebackup:
		return StandbyStreaming
	case ToolCommand:
		if p.RestoreCommand != "" || p.ArchiveDir != "" && !src.SourceSet() {
			return StandbyRestoreCommand
		}
		if src.SourceSet() {
			return StandbyStreaming
		}
		return StandbyNone
	}
	return StandbyRestoreCommand
}

// LagAlert is LagAlertSeconds or its default.
func (p Physical) LagAlert() int {
	if p.LagAlertSeconds > 0 {
		return p.LagAlertSeconds
	}
	return DefaultLagAlertSeconds
}

// validatePhysical checks retrieval.physical; each error names its key.
func validatePhysical(r Retrieval) []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	p := r.Physical
	s := r.Source
	if k := s.AuthKind(); k != AuthPassword {
		bad("retrieval.source.auth.kind %s works with retrieval.mode logical only (managed services with IAM tokens offer no physical replication): use a password for a physical source", k)
	}
	switch p.Tool {
	case ToolBasebackup:
		if !s.SourceSet() {
			bad("retrieval.physical.tool basebackup needs retrieval.source (connStr, or host and username): the server pg_basebackup copies")
		}
	case ToolCommand:
		if strings.TrimSpace(p.Command) == "" {
			bad("retrieval.physical.command is empty: set the command that fills $PGDATA (tool command), e.g. \"rsync -a /backup/ $PGDATA/\"")
		}
	case ToolPgBackRest:
		if p.PgBackRest.Stanza == "" || !validToolName(p.PgBackRest.Stanza) {
			bad("retrieval.physical.pgbackrest.stanza %q: set the stanza to restore (letters, digits, '_', '-', '.')", p.PgBackRest.Stanza)
		}
		if p.PgBackRest.Set != "" && !validToolName(p.PgBackRest.Set) {
			bad("retrieval.physical.pgbackrest.set %q is not a backup set label", p.PgBackRest.Set)
		}
	case ToolBarman:
		if p.Barman.Server == "" || !validToolName(p.Barman.Server) {
			bad("retrieval.physical.barman.server %q: set the Barman server to recover (letters, digits, '_', '-', '.')", p.Barman.Server)
		}
		if p.Barman.BackupID != "" && !validToolName(p.Barman.BackupID) {
			bad("retrieval.physical.barman.backupID %q is not a backup ID (or latest)", p.Barman.BackupID)
		}
	case ToolWALG:
		if p.WALG.BackupName != "" && !validToolName(p.WALG.BackupName) {
			bad("retrieval.physical.walg.backupName %q is not a backup name (or LATEST)", p.WALG.BackupName)
		}
	case "":
		bad("retrieval.physical.tool is empty: use basebackup, command, pgbackrest, barman or walg")
	default:
		bad("retrieval.physical.tool %q is unknown: use basebackup, command, pgbackrest, barman or walg", p.Tool)
	}
	for _, f := range []struct{ key, path string }{
		{"retrieval.physical.toolPath", p.ToolPath},
		{"retrieval.physical.pgbackrest.configFile", p.PgBackRest.ConfigFile},
		{"retrieval.physical.barman.configFile", p.Barman.ConfigFile},
	} {
		if f.path != "" && !filepath.IsAbs(f.path) {
			bad("%s %q must be an absolute path", f.key, f.path)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(p.Env)) {
		if !envNameRE.MatchString(k) || strings.HasPrefix(k, "PG") {
			bad("retrieval.physical.env: %q is not an environment variable name the tools may get (no PG* variables)", k)
		}
	}
	for i, k := range p.EnvFromAgent {
		if !envNameRE.MatchString(k) || strings.HasPrefix(k, "PG") {
			bad("retrieval.physical.envFromAgent[%d] %q is not an environment variable name the tools may get (no PG* variables)", i, k)
		}
	}
	switch kind := p.StandbyKind(s); kind {
	case StandbyStreaming:
		if !s.SourceSet() {
			bad("retrieval.physical.standby streaming needs retrieval.source: the server the standby streams from")
		}
	case StandbyRestoreCommand:
		if p.Tool == ToolCommand && p.RestoreCommand == "" && p.ArchiveDir == "" {
			bad("retrieval.physical.standby restoreCommand with tool command needs retrieval.physical.restoreCommand or archiveDir")
		}
	case StandbyNone:
	default:
		bad("retrieval.physical.standby %q: use streaming, restoreCommand or none", kind)
	}
	if p.ArchiveDir != "" && (!filepath.IsAbs(p.ArchiveDir) || strings.ContainsAny(p.ArchiveDir, "'\n\r\x00%")) {
		bad("retrieval.physical.archiveDir %q must be an absolute path without quotes, %% or newlines", p.ArchiveDir)
	}
	if strings.ContainsAny(p.RestoreCommand, "\n\r\x00") {
		bad("retrieval.physical.restoreCommand must be one line")
	}
	for k := range p.Settings {
		if !identRE.MatchString(k) {
			bad("retrieval.physical.settings: %q is not a postgres setting name", k)
		}
	}
	if p.SnapshotSchedule != "" {
		if _, err := cron.ParseStandard(p.SnapshotSchedule); err != nil {
			bad("retrieval.physical.snapshotSchedule %q: %v (use 5 cron fields, e.g. \"*/30 * * * *\")", p.SnapshotSchedule, err)
		}
	}
	if p.LagAlertSeconds < 0 {
		bad("retrieval.physical.lagAlertSeconds (%d) must not be negative", p.LagAlertSeconds)
	}
	if s.Port < 0 || s.Port > 65535 {
		bad("retrieval.source.port (%d) must be between 1 and 65535", s.Port)
	}
	if s.Password != "" && s.PasswordEnv != "" {
		bad("retrieval.source: password and passwordEnv are both set: keep passwordEnv")
	}
	return errs
}

// validToolName reports whether stanza, server and backup names may look like: they
// become command-line arguments of the tools.
func validToolName(s string) bool {
	if s == "" || len(s) > 128 || s[0] == '-' {
		return false
	}
	for _, c := range s {
		if (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '_' && c != '-' && c != '.' {
			return false
		}
	}
	return true
}
