package config

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/internal/tlstest"
)

const full = `
server:
  host: 127.0.0.1
  port: 2345
  verificationToken: 0123456789abcdef0123456789abcdef
pools:
  - name: main
    mode: btrfs
    path: /var/lib/thinlab/pool
    clonesDir: /var/lib/thinlab/clones
provision:
  portPool: {from: 6000, to: 6099}
  pgBinRoot: /usr/lib/postgresql
  osUser: postgres
  accessHost: db.example.com
  cloneDefaults:
    settings:
      statement_timeout: 30s
  resources: {cpu: "1.5", memory: 512Mi}
cloning:
  maxIdleMinutes: 0
  protectionLeaseDurationMinutes: 60
  protectionMaxDurationMinutes: 120
retrieval:
  mode: logical
  source:
    host: prod.example.com
    dbname: app
    username: reader
    passwordEnv: SOURCE_PASSWORD
  databases: [app]
  refreshSchedule: "0 3 * * *"
  keepSnapshots: 7
stateDir: /var/lib/thinlab/state
platform:
  url: https://thinlab.example.com
  enrollToken: tok
  name: db-host-1
  caFile: /etc/thinlab/platform-ca.pem
`

func TestParseFull(t *testing.T) {
	c, err := Parse([]byte(full), "agent.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Pools[0].Mode != "btrfs" || c.Provision.PortPool.Size() != 100 {
		t.Fatalf("pools/ports: %+v %+v", c.Pools, c.Provision.PortPool)
	}
	if c.Cloning.MaxIdleMinutes != 0 {
		t.Fatalf("explicit maxIdleMinutes 0 (never) became %d", c.Cloning.MaxIdleMinutes)
	}
	if c.Provision.Resources.MemoryBytes() != 512<<20 || c.Provision.Resources.CPUQuota() != 1.5 {
		t.Fatalf("resources: %d %v", c.Provision.Resources.MemoryBytes(), c.Provision.Resources.CPUQuota())
	}
	if c.Retrieval.Pool != "main" || c.Retrieval.Jobs != 1 || c.Retrieval.Source.Port != 5432 || c.Retrieval.KeepSnapshots != 7 {
		t.Fatalf("retrieval defaults: %+v", c.Retrieval)
	}
	if c.Provision.AccessHost != "db.example.com" || c.Provision.ListenAddresses != "127.0.0.1" {
		t.Fatalf("hosts: %+v", c.Provision)
	}
	t.Setenv("SOURCE_PASSWORD", "from-env")
	if got := c.Retrieval.Source.ResolvedPassword(); got != "from-env" {
		t.Fatalf("password from env = %q", got)
	}
}

func TestDefaults(t *testing.T) {
	c, err := Parse([]byte("server: {verificationToken: "+testToken+"}\npools: [{name: p, mode: zfs, path: tank/p}]\n"), "agent.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Server.Port != DefaultServerPort || c.Provision.PortPool.From != DefaultPortFrom ||
		c.Cloning.MaxIdleMinutes != DefaultMaxIdleMinutes || c.Cloning.ProtectionLeaseDurationMinutes != DefaultLeaseMinutes ||
		c.Cloning.ProtectionMaxDurationMinutes != DefaultMaxProtection || c.StateDir != DefaultStateDir ||
		c.Provision.OSUser != "postgres" || c.Provision.CloneUIDs != (IDRange{From: 200000, To: 265535}) || c.Provision.CloneDefaults.DBName != "postgres" || c.Retrieval.Mode != "" ||
		c.Retrieval.KeepSnapshots != 0 {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestErrorsNameFieldAndFix(t *testing.T) {
	base := "pools: [{name: p, mode: btrfs, path: /p}]\n"
	for _, tc := range []struct {
		name, yaml string
		want       []string
	}{
		{"unknown key", base + "provision:\n  portpool: {from: 1}\n", []string{"line 3", `unknown key "portpool"`, "provision"}},
		{"unknown top key", base + "stateDirectory: /x\n", []string{"line 2", `"stateDirectory"`, "top level"}},
		{"ports reversed", base + "provision:\n  portPool: {from: 6099, to: 6000}\n", []string{"provision.portPool.to (6000) must be greater than from (6099)"}},
		{"port range", base + "provision:\n  portPool: {from: 0, to: 70000}\n", []string{"provision.portPool.to (70000)"}},
		{"server in ports", base + "server: {port: 6001}\n", []string{"server.port (6001) is inside provision.portPool"}},
		{"no pools", "stateDir: /x\n", []string{"pools is empty"}},
		{"bad mode", "pools: [{name: p, mode: ext4, path: /p}]\n", []string{"pools[0].mode \"ext4\"", "zfs, lvm, btrfs, reflink"}},
		{"dup pool", "pools: [{name: p, mode: zfs, path: a}, {name: p, mode: zfs, path: b}]\n", []string{"pools[1].name \"p\" is used by another pool"}},
		{"bad pool name", "pools: [{name: 'a/b', mode: zfs, path: a}]\n", []string{"pools[0].name"}},
		{"root user", base + "provision: {osUser: root}\n", []string{"provision.osUser", "root"}},
		{"clone uids too low", base + "provision: {cloneUIDs: {from: 100, to: 200}}\n", []string{"provision.cloneUIDs (100-200)", "at least 1000"}},
		{"clone uids reversed", base + "provision: {cloneUIDs: {from: 300000, to: 200000}}\n", []string{"provision.cloneUIDs (300000-200000)"}},
		{"clone uids hold nobody", base + "provision: {cloneUIDs: {from: 60000, to: 70000}}\n", []string{"provision.cloneUIDs (60000-70000) contains 65534"}},
		{"bad setting", base + "provision:\n  cloneDefaults:\n    settings: {port: '1'}\n", []string{"provision.cloneDefaults.settings.port"}},
		{"bad cpu", base + "provision: {resources: {cpu: lots}}\n", []string{"provision.resources.cpu"}},
		{"bad memory", base + "provision: {resources: {memory: 1Ki}}\n", []string{"provision.resources.memory", "at least 32Mi"}},
		{"lease over max", base + "cloning: {protectionLeaseDurationMinutes: 100, protectionMaxDurationMinutes: 10}\n", []string{"cloning.protectionLeaseDurationMinutes (100) must not exceed protectionMaxDurationMinutes (10)"}},
		{"negative hibernation", base + "cloning: {hibernateAfterMinutes: -1}\n", []string{"cloning.hibernateAfterMinutes (-1) must be between 0"}},
		{"warm over ports", base + "provision: {portPool: {from: 6000, to: 6009}}\ncloning: {warm: {count: 11}}\n", []string{"cloning.warm.count (11) must be between 0 and the number of ports in provision.portPool (10)"}},
		{"warm unknown key", base + "cloning: {warm: {size: 2}}\n", []string{`unknown key "size"`, "cloning.warm"}},
		{"retrieval no source", base + "retrieval: {mode: logical}\n", []string{"retrieval.source: set connStr"}},
		{"retrieval bad cron", base + "retrieval: {mode: logical, source: {connStr: 'host=x'}, refreshSchedule: 'every day'}\n", []string{"retrieval.refreshSchedule"}},
		{"retrieval bad pool", base + "retrieval: {mode: logical, source: {connStr: 'host=x'}, pool: nope}\n", []string{`retrieval.pool "nope"`}},
		{"negative keepSnapshots", base + "retrieval: {keepSnapshots: -1}\n", []string{"retrieval.keepSnapshots (-1) must not be negative", "0 to keep every snapshot"}},
		{"negative keepSnapshots with logical", base + "retrieval: {mode: logical, source: {connStr: 'host=x'}, keepSnapshots: -3}\n", []string{"retrieval.keepSnapshots (-3)"}},
		{"keepSnapshots not a number", base + "retrieval: {keepSnapshots: all}\n", []string{"line 2", "all"}},
		{"retrieval bad sslMode", base + "retrieval: {mode: logical, source: {connStr: 'host=x', sslMode: verify}}\n", []string{`retrieval.source.sslMode "verify"`, "verify-full"}},
		{"retrieval verify without CA", base + "retrieval: {mode: logical, source: {host: x, username: u, sslMode: verify-full}}\n", []string{"retrieval.source.sslMode verify-full needs retrieval.source.sslRootCert"}},
		{"retrieval relative CA", base + "retrieval: {mode: logical, source: {host: x, username: u, sslRootCert: ca.pem}}\n", []string{`retrieval.source.sslRootCert "ca.pem" must be an absolute path`}},
		{"physical no tool", base + "retrieval: {mode: physical}\n", []string{"retrieval.physical.tool is empty"}},
		{"physical bad tool", base + "retrieval: {mode: physical, physical: {tool: pg_probackup}}\n", []string{`retrieval.physical.tool "pg_probackup" is unknown`}},
		{"physical basebackup no source", base + "retrieval: {mode: physical, physical: {tool: basebackup}}\n", []string{"retrieval.physical.tool basebackup needs retrieval.source"}},
		{"physical cloud auth", base + "retrieval: {mode: physical, physical: {tool: basebackup}, source: {host: db, username: u, auth: {kind: gcpCloudSqlIam}}}\n", []string{"retrieval.source.auth.kind gcpCloudSqlIam works with retrieval.mode logical only"}},
		{"physical no command", base + "retrieval: {mode: physical, physical: {tool: command}}\n", []string{"retrieval.physical.command is empty"}},
		{"physical bad stanza", base + "retrieval: {mode: physical, physical: {tool: pgbackrest, pgbackrest: {stanza: '--x'}}}\n", []string{`retrieval.physical.pgbackrest.stanza "--x"`}},
		{"physical no barman server", base + "retrieval: {mode: physical, physical: {tool: barman}}\n", []string{"retrieval.physical.barman.server"}},
		{"physical relative tool", base + "retrieval: {mode: physical, physical: {tool: walg, toolPath: wal-g}}\n", []string{`retrieval.physical.toolPath "wal-g" must be an absolute path`}},
		{"physical PG env", base + "retrieval: {mode: physical, physical: {tool: walg, env: {PGHOST: x}}}\n", []string{`retrieval.physical.env: "PGHOST"`}},
		{"physical streaming without source", base + "retrieval: {mode: physical, physical: {tool: walg, standby: streaming}}\n", []string{"retrieval.physical.standby streaming needs retrieval.source"}},
		{"physical bad standby", base + "retrieval: {mode: physical, physical: {tool: walg, standby: logical}}\n", []string{`retrieval.physical.standby "logical"`}},
		{"physical bad schedule", base + "retrieval: {mode: physical, physical: {tool: walg, snapshotSchedule: hourly}}\n", []string{`retrieval.physical.snapshotSchedule "hourly"`}},
		{"physical relative archiveDir", base + "retrieval: {mode: physical, physical: {tool: walg, archiveDir: archive}}\n", []string{`retrieval.physical.archiveDir "archive" must be an absolute path`}},
		{"physical quoted archiveDir", base + "retrieval: {mode: physical, physical: {tool: walg, archiveDir: \"/a'b\"}}\n", []string{`retrieval.physical.archiveDir "/a'b" must be an absolute path without quotes`}},
		{"physical unknown key", base + "retrieval: {mode: physical, physical: {tool: walg, stanza: x}}\n", []string{"retrieval.physical"}},
		{"state dir", base + "stateDir: relative\n", []string{"stateDir \"relative\" must be an absolute path"}},
		{"platform url", base + "platform: {url: 'ftp://x', enrollToken: t}\n", []string{"platform.url"}},
		{"platform plain http", base + "platform: {url: 'http://platform.example.com'}\n", []string{"platform.url", "platform.insecure"}},
		{"platform relative CA", base + "platform: {url: 'https://x', caFile: ca.pem}\n", []string{`platform.caFile "ca.pem" must be an absolute path`}},
		{"platform token without url", base + "platform: {enrollToken: t}\n", []string{"platform.url is empty"}},
		{"type error", base + "server: {port: abc}\n", []string{"line 2", "abc"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml), "agent.yaml")
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if !strings.HasPrefix(err.Error(), "agent.yaml: ") {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
}

func TestParsePhysical(t *testing.T) {
	base := "server: {verificationToken: 0123456789abcdef0123456789abcdef}\npools: [{name: p, mode: btrfs, path: /p}]\n"
	c, err := Parse([]byte(base+`retrieval:
  mode: physical
  physical:
    tool: walg
    env: {WALG_S3_PREFIX: "s3://b/p", AWS_ENDPOINT: "http://127.0.0.1:9000"}
    envFromAgent: [AWS_SECRET_ACCESS_KEY]
    snapshotSchedule: "*/5 * * * *"
`), "agent.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p := c.Retrieval.Physical
	if p.StandbyKind(c.Retrieval.Source) != StandbyRestoreCommand || p.LagAlert() != DefaultLagAlertSeconds || c.Retrieval.Pool != "p" {
		t.Errorf("physical defaults: standby %q, lag alert %d, pool %q", p.StandbyKind(c.Retrieval.Source), p.LagAlert(), c.Retrieval.Pool)
	}
}

func TestLoadFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(p, []byte(full), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(p); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Fatal("missing file: no error")
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint64{"512Mi": 512 << 20, "1Gi": 1 << 30, "2G": 2e9, "1048576": 1 << 20, "1.5Gi": 3 << 29} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("%s = %d, %v; want %d", in, got, err, want)
		}
	}
	if _, err := ParseSize("lots"); err == nil {
		t.Error("lots: no error")
	}
}

const testToken = "4f8a2c4f8a2c4f8a2c4f8a2c4f8a2c4f8a2c"

// TestServerAuthAndTLS: the agent does not start without a real token
// (issue 8), the insecure development switch works on loopback only, and
// TLS files are checked when the config loads.
func TestServerAuthAndTLS(t *testing.T) {
	files := tlstest.New(t)
	pools := "pools: [{name: p, mode: btrfs, path: /p}]\n"
	for _, tc := range []struct {
		name, server string
		want         []string // empty: valid
	}{
		{"no server section", "", []string{"server.verificationToken is empty", "at least 32 characters", "openssl rand -hex 32"}},
		{"empty token", "server: {verificationToken: ''}\n", []string{"server.verificationToken is empty", "openssl rand -hex 32"}},
		{"short token", "server: {verificationToken: short-secret-value}\n", []string{"server.verificationToken is 18 characters long, shorter than 32", "openssl rand -hex 32"}},
		{"token of 32", "server: {verificationToken: " + testToken[:32] + "}\n", nil},
		{"insecure on loopback", "server: {insecureNoAuth: true}\n", nil},
		{"insecure on ::1", "server: {host: '::1', insecureNoAuth: true}\n", nil},
		{"insecure on localhost", "server: {host: localhost, insecureNoAuth: true}\n", nil},
		{"insecure on all addresses", "server: {host: 0.0.0.0, insecureNoAuth: true}\n", []string{"server.insecureNoAuth is only allowed when server.host is a loopback address", `not "0.0.0.0"`}},
		{"insecure on a LAN address", "server: {host: 10.1.2.3, insecureNoAuth: true}\n", []string{"server.insecureNoAuth is only allowed", "server.verificationToken"}},
		{"insecure with a token", "server: {insecureNoAuth: true, verificationToken: " + testToken + "}\n", []string{"server.insecureNoAuth is true but server.verificationToken is set"}},
		{"metrics address", "server: {verificationToken: " + testToken + ", metricsAddress: '127.0.0.1:9187'}\n", nil},
		{"metrics address without port", "server: {verificationToken: " + testToken + ", metricsAddress: '127.0.0.1'}\n", []string{"server.metricsAddress \"127.0.0.1\" must be host:port"}},
		{"metrics address on the API port", "server: {verificationToken: " + testToken + ", metricsAddress: '127.0.0.1:2345'}\n", []string{"uses the API's own port 2345"}},
		{"tls", "server: {verificationToken: " + testToken + ", tls: {certFile: " + files.Cert + ", keyFile: " + files.Key + "}}\n", nil},
		{"tls cert only", "server: {verificationToken: " + testToken + ", tls: {certFile: " + files.Cert + "}}\n", []string{"server.tls.keyFile is empty but certFile is set"}},
		{"tls missing file", "server: {verificationToken: " + testToken + ", tls: {certFile: /nonexistent/agent.pem, keyFile: " + files.Key + "}}\n", []string{`server.tls.certFile "/nonexistent/agent.pem"`, "no such file"}},
		{"tls key of another cert", "server: {verificationToken: " + testToken + ", tls: {certFile: " + files.Cert + ", keyFile: " + files.OtherKey + "}}\n", []string{"server.tls: certFile and keyFile do not load as a pair"}},
		{"tls key is a device", "server: {verificationToken: " + testToken + ", tls: {certFile: " + files.Cert + ", keyFile: /dev/zero}}\n", []string{`server.tls.keyFile "/dev/zero" is not a regular file`}},
		{"tls cert as key", "server: {verificationToken: " + testToken + ", tls: {certFile: " + files.Cert + ", keyFile: " + files.Cert + "}}\n", []string{"server.tls: certFile and keyFile do not load as a pair"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.server+pools), "agent.yaml")
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("want a valid config, got %v", err)
				}
				if err := c.ValidateServer(); err != nil {
					t.Fatalf("ValidateServer of a valid config: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("want an error containing %q, got a valid config", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "short-secret-value") {
				t.Errorf("the error shows the token: %q", err)
			}
		})
	}
	// A config built in code (no Parse) is refused the same way.
	c := Default()
	if err := c.ValidateServer(); err == nil || !strings.Contains(err.Error(), "server.verificationToken is empty") {
		t.Fatalf("Default() without a token: want a server.verificationToken error, got %v", err)
	}
	c.Server.VerificationToken = GenerateToken()
	if err := c.ValidateServer(); err != nil || len(c.Server.VerificationToken) != 64 {
		t.Fatalf("GenerateToken (%d characters): %v", len(c.Server.VerificationToken), err)
	}
}

// More lease minutes than a time.Duration holds must not wrap around to a
// negative (already expired) lease.
func TestLeaseDoesNotOverflow(t *testing.T) {
	for _, tc := range []struct {
		name    string
		minutes uint
		want    time.Duration
	}{
		{"default", DefaultLeaseMinutes, time.Duration(DefaultLeaseMinutes) * time.Minute},
		{"none", 0, 0},
		{"largest uint", math.MaxUint, time.Duration(math.MaxInt64 / int64(time.Minute) * int64(time.Minute))},
		{"just over a Duration", uint(math.MaxInt64/int64(time.Minute)) + 1, time.Duration(math.MaxInt64 / int64(time.Minute) * int64(time.Minute))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := (Cloning{ProtectionLeaseDurationMinutes: tc.minutes}).Lease(); got != tc.want {
				t.Errorf("Lease() with %d minutes = %v; want %v", tc.minutes, got, tc.want)
			}
		})
	}
}

// TestHibernationAndWarmKeys: fractional minutes of hibernation and the
// warm section parse into what the clone manager uses.
func TestHibernationAndWarmKeys(t *testing.T) {
	c, err := Parse([]byte("pools: [{name: p, mode: btrfs, path: /p}]\nserver: {insecureNoAuth: true}\ncloning: {hibernateAfterMinutes: 0.5, warm: {count: 3, maxMemoryMiB: 256}}\n"), "test.yml")
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Cloning.HibernateAfter(); got != 30*time.Second {
		t.Errorf("hibernateAfterMinutes 0.5 is %v, want 30s", got)
	}
	if c.Cloning.Warm.Count != 3 || c.Cloning.Warm.MaxMemoryMiB != 256 {
		t.Errorf("warm %+v, want count 3, maxMemoryMiB 256", c.Cloning.Warm)
	}
	if d, _ := Parse([]byte("pools: [{name: p, mode: btrfs, path: /p}]\nserver: {insecureNoAuth: true}\n"), "test.yml"); d == nil || d.Cloning.HibernateAfter() != 0 || d.Cloning.Warm.Count != 0 {
		t.Errorf("defaults: hibernation and warm clones must be off")
	}
}
