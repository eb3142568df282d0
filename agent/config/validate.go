package config

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
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

	errs = append(errs, c.Server.validate()...)
	if s3 := c.Shipping.S3; s3.Endpoint != "" || s3.Bucket != "" {
		if u, err := url.Parse(s3.Endpoint); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			bad("shipping.s3.endpoint %q: give the storage's URL (https://s3.REGION.amazonaws.com or http://127.0.0.1:9000)", s3.Endpoint)
		}
		if s3.Bucket == "" {
			bad("shipping.s3.bucket is empty: name the bucket that holds snapshot streams")
		}
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
		if !slices.Contains(poolModes, p.Mode) {
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
		if err := runtime.ValidateDefaultSetting(k, v); err != nil {
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

	if cl.HibernateAfterMinutes < 0 || cl.HibernateAfterMinutes > 1e9 {
		bad("cloning.hibernateAfterMinutes (%g) must be between 0 (never hibernate) and 1e9 minutes", cl.HibernateAfterMinutes)
	}
	if cl.Warm.Count < 0 || cl.Warm.Count > c.Provision.PortPool.Size() {
		bad("cloning.warm.count (%d) must be between 0 and the number of ports in provision.portPool (%d)", cl.Warm.Count, c.Provision.PortPool.Size())
	}

	r := c.Retrieval
	if r.KeepSnapshots < 0 {
		bad("retrieval.keepSnapshots (%d) must not be negative: set the number of newest snapshots to keep, or 0 to keep every snapshot", r.KeepSnapshots)
	}
	switch r.Mode {
	case "":
	case "logical":
		s := r.Source
		if s.ConnStr == "" && (s.Host == "" || s.Username == "") && len(r.Logical.Dumps) == 0 {
			bad("retrieval.source: set connStr, or host and username (plus port, dbname, passwordEnv), or restore existing dumps (retrieval.logical.dumps)")
		}
		if s.ConnStr != "" && (s.Host != "" || s.Username != "" || s.DBName != "") {
			bad("retrieval.source: connStr and host/username/dbname are both set: use one or the other")
		}
		if s.Port < 0 || s.Port > 65535 {
			bad("retrieval.source.port (%d) must be between 1 and 65535", s.Port)
		}
		s.validateAuth(bad)
		if s.Password != "" && s.PasswordEnv != "" {
			bad("retrieval.source: password and passwordEnv are both set: keep passwordEnv")
		}
		if s.PasswordEnv != "" && !envNameRE.MatchString(s.PasswordEnv) {
			bad("retrieval.source.passwordEnv %q is not an environment variable name", s.PasswordEnv)
		}
		switch s.SSLMode {
		case "", "disable", "allow", "prefer", "require", "verify-ca", "verify-full":
		default:
			bad("retrieval.source.sslMode %q: use verify-full (with sslRootCert), verify-ca, require, prefer, allow or disable", s.SSLMode)
		}
		if s.SSLRootCert != "" && !filepath.IsAbs(s.SSLRootCert) {
			bad("retrieval.source.sslRootCert %q must be an absolute path to the CA certificate (PEM)", s.SSLRootCert)
		}
		if (s.SSLMode == "verify-ca" || s.SSLMode == "verify-full") && s.SSLRootCert == "" && !strings.Contains(s.ConnStr, "sslrootcert") {
			bad("retrieval.source.sslMode %s needs retrieval.source.sslRootCert: the CA certificate that signed the source server's", s.SSLMode)
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
		r.Logical.validate(bad)
		r.validateReplication(bad)
		r.validatePools(bad, seen)
		r.Preprocess.validate(bad)
	case "physical":
		if r.Pool != "" && !seen[r.Pool] {
			bad("retrieval.pool %q is not one of pools[].name", r.Pool)
		}
		errs = append(errs, validatePhysical(r)...)
	default:
		bad("retrieval.mode %q is unknown: use \"logical\", \"physical\" or leave it empty", r.Mode)
	}

	if !filepath.IsAbs(c.StateDir) {
		bad("stateDir %q must be an absolute path (e.g. /var/lib/thinlab)", c.StateDir)
	}

	if pl := c.Platform; pl.URL != "" {
		u, err := url.Parse(pl.URL)
		switch {
		case err != nil || u.Host == "" || !slices.Contains([]string{"http", "https", "ws", "wss"}, u.Scheme):
			bad("platform.url %q must be an https URL such as https://thinlab.example.com", pl.URL)
		case (u.Scheme == "http" || u.Scheme == "ws") && !pl.Insecure && !isLoopbackHost(u.Hostname()):
			bad("platform.url %q is plain http: use https, or set platform.insecure: true (development only; the tunnel carries the agent's credential and API)", pl.URL)
		}
		if pl.CAFile != "" && !filepath.IsAbs(pl.CAFile) {
			bad("platform.caFile %q must be an absolute path", pl.CAFile)
		}
	} else if c.Platform.EnrollToken != "" || c.Platform.CAFile != "" || c.Platform.Name != "" {
		bad("platform.url is empty but other platform keys are set: set platform.url to connect the agent to a platform, or remove the platform section")
	}
	return errors.Join(errs...)
}

// ValidateServer checks only the server section (listen address,
// authentication, TLS). The agent calls it before serving even a
// configuration built in code, so that no path starts an API without
// authentication by accident.
func (c *Config) ValidateServer() error { return errors.Join(c.Server.validate()...) }

func (s Server) validate() []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if s.Host == "" {
		bad("server.host is empty: set the address the API listens on, e.g. 127.0.0.1")
	}
	if s.Port < 1 || s.Port > 65535 {
		bad("server.port (%d) must be between 1 and 65535", s.Port)
	}
	switch {
	case s.InsecureNoAuth && s.VerificationToken != "":
		bad("server.insecureNoAuth is true but server.verificationToken is set: remove insecureNoAuth to require the token")
	case s.InsecureNoAuth && !IsLoopback(s.Host):
		bad("server.insecureNoAuth is only allowed when server.host is a loopback address (127.0.0.1, ::1 or localhost), not %q: set server.verificationToken instead (generate one with `openssl rand -hex 32`)", s.Host)
	case s.InsecureNoAuth:
	case s.VerificationToken == "":
		bad("server.verificationToken is empty: the API needs a token of at least %d characters; generate one with `openssl rand -hex 32`", MinTokenLength)
	case len(s.VerificationToken) < MinTokenLength:
		// Never echo the token: config errors reach logs and terminals.
		bad("server.verificationToken is %d characters long, shorter than %d: generate one with `openssl rand -hex 32`", len(s.VerificationToken), MinTokenLength)
	}
	if s.MetricsAddress != "" {
		host, port, err := net.SplitHostPort(s.MetricsAddress)
		if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 1 || n > 65535 {
			bad("server.metricsAddress %q must be host:port, e.g. 127.0.0.1:9187", s.MetricsAddress)
		} else if (host == s.Host || host == "" || s.Host == "0.0.0.0" || s.Host == "::") && n == s.Port {
			bad("server.metricsAddress %q uses the API's own port %d: pick another port", s.MetricsAddress, s.Port)
		}
	}
	if t := s.TLS; t.Enabled() {
		switch {
		case t.CertFile == "":
			bad("server.tls.certFile is empty but keyFile is set: set both (PEM certificate and key) or neither")
		case t.KeyFile == "":
			bad("server.tls.keyFile is empty but certFile is set: set both (PEM certificate and key) or neither")
		default:
			okFiles := true
			for _, f := range []struct{ name, path string }{{"certFile", t.CertFile}, {"keyFile", t.KeyFile}} {
				// A regular file only: a FIFO or /dev/zero would hang the
				// start (reading it never ends).
				if st, err := os.Stat(f.path); err != nil {
					bad("server.tls.%s %q: %v", f.name, f.path, err)
					okFiles = false
				} else if !st.Mode().IsRegular() {
					bad("server.tls.%s %q is not a regular file: give a PEM file", f.name, f.path)
					okFiles = false
				}
			}
			if okFiles {
				if _, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile); err != nil {
					bad("server.tls: certFile and keyFile do not load as a pair: %v (give PEM files, the key matching the certificate)", err)
				}
			}
		}
	}
	return errs
}

// IsLoopback reports whether host (a name or address) can only be
// reached from this machine.
func IsLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$-]{0,62}$`)

func validIdent(s string) bool { return identRE.MatchString(s) }

// GenerateToken returns a random verification token (64 hex characters,
// as `openssl rand -hex 32` prints), for tests and setup scripts.
func GenerateToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b)
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}
