package config

import (
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/robfig/cron/v3"

	"github.com/thinlab/thinlab/agent/runtime"
	"github.com/thinlab/thinlab/agent/storage"
)

// Modes a pool may have.
var poolModes = []string{storage.ModeZFS, storage.ModeLVM, storage.ModeBtrfs, storage.ModeReflink}

var envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Validate checks the whole configuration and returns every problem at
// once, each naming the field and the fix.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if c.Server.Host == "" {
		bad("server.host is empty: set the address the API listens on, e.g. 127.0.0.1")
	}
	if c.Server.Port < 1 || c.Server.Port > 65535 {
		bad("server.port (%d) must be between 1 and 65535", c.Server.Port)
	}

	if len(c.Pools) == 0 {
		bad("pools is empty: add at least one pool with name, mode and path")
	}
	seen := map[string]bool{}
	for i, p := range c.Pools {
		f := fmt.Sprintf("pools[%d]", i)
		if err := storage.ValidateName("pool name", p.Name); err != nil {
			bad("%s.name: %v", f, err)
		} else if seen[p.Name] {
			bad("%s.name %q is used by another pool: pool names must be unique", f, p.Name)
		}
		seen[p.Name] = true
		if !contains(poolModes, p.Mode) {
			bad("%s.mode %q is not supported: use one of %s", f, p.Mode, strings.Join(poolModes, ", "))
		}
		if p.Path == "" {
			bad("%s.path is empty: set the pool's location (btrfs/XFS mountpoint, ZFS dataset, LVM vg/thinpool)", f)
		}
		if p.ClonesDir != "" && !filepath.IsAbs(p.ClonesDir) {
			bad("%s.clonesDir %q must be an absolute path", f, p.ClonesDir)
		}
	}

	pr := c.Provision
	pp := pr.PortPool
	if pp.From < 1 || pp.From > 65535 {
		bad("provision.portPool.from (%d) must be between 1 and 65535", pp.From)
	}
	if pp.To < 1 || pp.To > 65535 {
		bad("provision.portPool.to (%d) must be between 1 and 65535", pp.To)
	}
	if pp.To < pp.From {
		bad("provision.portPool.to (%d) must be greater than from (%d)", pp.To, pp.From)
	}
	if c.Server.Port >= pp.From && c.Server.Port <= pp.To {
		bad("server.port (%d) is inside provision.portPool (%d-%d): move one of them", c.Server.Port, pp.From, pp.To)
	}
	if !filepath.IsAbs(pr.PgBinRoot) {
		bad("provision.pgBinRoot %q must be an absolute path (e.g. /usr/lib/postgresql)", pr.PgBinRoot)
	}
	if pr.OSUser == "" || pr.OSUser == "root" {
		bad("provision.osUser %q: postgres refuses to run as root; use the postgres OS user", pr.OSUser)
	}
	if ids := pr.CloneUIDs; ids.From < 1000 || ids.To < ids.From || ids.To > 1<<31-1 {
		bad("provision.cloneUIDs (%d-%d): give a range from at least 1000 (above system accounts) up to at most 2147483647, for example {from: %d, to: %d}", ids.From, ids.To, DefaultCloneUIDFrom, DefaultCloneUIDTo)
	} else if ids.From <= 65534 && ids.To >= 65534 {
		bad("provision.cloneUIDs (%d-%d) contains 65534 (nobody): start the range above it, for example {from: %d, to: %d}", ids.From, ids.To, DefaultCloneUIDFrom, DefaultCloneUIDTo)
	}
	if strings.ContainsAny(pr.ListenAddresses, "'\"\n\r\\ ") {
		bad("provision.listenAddresses %q: use a comma-separated list of addresses without spaces or quotes", pr.ListenAddresses)
	}
	if strings.ContainsAny(pr.AccessHost, "'\"\n\r\\ /") {
		bad("provision.accessHost %q is not a host name or address", pr.AccessHost)
	}
	for k, v := range pr.CloneDefaults.Settings {
		if err := runtime.ValidateSetting(k, v); err != nil {
			bad("provision.cloneDefaults.settings.%s: %v", k, err)
		}
	}
	if !validIdent(pr.CloneDefaults.DBName) {
		bad("provision.cloneDefaults.dbName %q is not a valid database name", pr.CloneDefaults.DBName)
	}
	if s := strings.TrimSpace(pr.Resources.CPU); s != "" {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil || v <= 0 {
			bad("provision.resources.cpu %q must be a positive number of CPUs, e.g. \"1.5\"", pr.Resources.CPU)
		}
	}
	if s := strings.TrimSpace(pr.Resources.Memory); s != "" {
		v, err := ParseSize(s)
		if err != nil || v < 32<<20 {
			bad("provision.resources.memory %q must be a size of at least 32Mi, e.g. \"512Mi\" or \"2Gi\"", pr.Resources.Memory)
		}
	}

	cl := c.Cloning
	if cl.ProtectionMaxDurationMinutes > 0 && cl.ProtectionLeaseDurationMinutes > cl.ProtectionMaxDurationMinutes {
		bad("cloning.protectionLeaseDurationMinutes (%d) must not exceed protectionMaxDurationMinutes (%d)", cl.ProtectionLeaseDurationMinutes, cl.ProtectionMaxDurationMinutes)
	}
	if cl.ProtectionMaxDurationMinutes > 0 && cl.ProtectionLeaseDurationMinutes == 0 {
		bad("cloning.protectionLeaseDurationMinutes is 0 (forever) but protectionMaxDurationMinutes is %d: set a lease up to the maximum", cl.ProtectionMaxDurationMinutes)
	}

	r := c.Retrieval
	if r.KeepSnapshots < 0 {
		bad("retrieval.keepSnapshots (%d) must not be negative: set the number of newest snapshots to keep, or 0 to keep every snapshot", r.KeepSnapshots)
	}
	switch r.Mode {
	case "":
	case "logical":
		s := r.Source
		if s.ConnStr == "" && (s.Host == "" || s.Username == "") {
			bad("retrieval.source: set connStr, or host and username (plus port, dbname, passwordEnv)")
		}
		if s.ConnStr != "" && (s.Host != "" || s.Username != "" || s.DBName != "") {
			bad("retrieval.source: connStr and host/username/dbname are both set: use one or the other")
		}
		if s.Port < 0 || s.Port > 65535 {
			bad("retrieval.source.port (%d) must be between 1 and 65535", s.Port)
		}
		if s.Password != "" && s.PasswordEnv != "" {
			bad("retrieval.source: password and passwordEnv are both set: keep passwordEnv")
		}
		if s.PasswordEnv != "" && !envNameRE.MatchString(s.PasswordEnv) {
			bad("retrieval.source.passwordEnv %q is not an environment variable name", s.PasswordEnv)
		}
		if r.Pool != "" && !seen[r.Pool] {
			bad("retrieval.pool %q is not one of pools[].name", r.Pool)
		}
		if r.Jobs < 1 || r.Jobs > 64 {
			bad("retrieval.jobs (%d) must be between 1 and 64", r.Jobs)
		}
		for i, db := range r.Databases {
			if !validIdent(db) {
				bad("retrieval.databases[%d] %q is not a valid database name", i, db)
			}
		}
		if r.RefreshSchedule != "" {
			if _, err := cron.ParseStandard(r.RefreshSchedule); err != nil {
				bad("retrieval.refreshSchedule %q: %v (use 5 cron fields, e.g. \"0 3 * * *\")", r.RefreshSchedule, err)
			}
		}
	case "physical":
		bad("retrieval.mode \"physical\" is not supported yet: use \"logical\" or leave it empty")
	default:
		bad("retrieval.mode %q is unknown: use \"logical\" or leave it empty", r.Mode)
	}

	if !filepath.IsAbs(c.StateDir) {
		bad("stateDir %q must be an absolute path (e.g. /var/lib/thinlab)", c.StateDir)
	}

	if c.Platform.URL != "" {
		u, err := url.Parse(c.Platform.URL)
		if err != nil || u.Host == "" || !contains([]string{"http", "https", "ws", "wss"}, u.Scheme) {
			bad("platform.url %q must be an http(s) URL such as https://thinlab.example.com", c.Platform.URL)
		}
		if c.Platform.Token == "" {
			bad("platform.token is empty: set the enrollment or agent token given by the platform")
		}
	}
	return errors.Join(errs...)
}

var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$-]{0,62}$`)

func validIdent(s string) bool { return identRE.MatchString(s) }

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
