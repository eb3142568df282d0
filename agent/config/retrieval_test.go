package config

import (
	"strings"
	"testing"
)

// TestLogicalExtraOptionsRefuseRedirection: extra pg_dump/pg_restore
// options that would choose the connection, the output or the format are
// refused with an error naming the key and the option; harmless ones pass.
func TestLogicalExtraOptionsRefuseRedirection(t *testing.T) {
	base := "server: {verificationToken: 0123456789abcdef0123456789abcdef}\npools: [{name: p, mode: btrfs, path: /p}]\nretrieval:\n  mode: logical\n  source: {connStr: 'host=x'}\n  logical:\n"
	for _, tc := range []struct {
		name, yaml string
		want       string // "" = valid
	}{
		{"harmless dump options", "    dumpOptions: ['--no-comments', '-Z0', '--exclude-table-data=audit_*', '-tpublic.users', '-v']\n", ""},
		{"harmless restore options", "    restoreOptions: ['--no-comments', '--disable-triggers', '-v', '-e']\n", ""},
		{"dump -f", "    dumpOptions: ['-f', '/tmp/x']\n", `retrieval.logical.dumpOptions[0] "-f" sets the output file`},
		{"dump -f joined", "    dumpOptions: ['-f/tmp/x']\n", `retrieval.logical.dumpOptions[0] "-f/tmp/x" sets the output file`},
		{"dump --file", "    dumpOptions: ['--no-comments', '--file=/tmp/x']\n", `retrieval.logical.dumpOptions[1] "--file=/tmp/x" sets the output file`},
		{"dump --fil abbreviation", "    dumpOptions: ['--fil=/tmp/x']\n", `dumpOptions[0] "--fil=/tmp/x" sets the output file (--file)`},
		{"dump -h", "    dumpOptions: ['-hevil']\n", `dumpOptions[0] "-hevil" sets the connection`},
		{"dump bundled -vd", "    dumpOptions: ['-vdpostgres']\n", `dumpOptions[0] "-vdpostgres" sets the connection (-d)`},
		{"dump --dbname", "    dumpOptions: ['--dbname=host=evil']\n", `dumpOptions[0] "--dbname=host=evil" sets the connection`},
		{"dump -p", "    dumpOptions: ['-p5433']\n", `dumpOptions[0] "-p5433" sets the connection`},
		{"dump --port", "    dumpOptions: ['--port=1']\n", `sets the connection (--port)`},
		{"dump bare value", "    dumpOptions: ['--table', 'users']\n", `dumpOptions[1] "users" is not an option`},
		{"dump valued short alone", "    dumpOptions: ['-t']\n", `dumpOptions[0] "-t" takes a value`},
		{"dump --format", "    dumpOptions: ['--format=p']\n", `sets the format`},
		{"dump --jobs", "    dumpOptions: ['-j4']\n", `sets the jobs`},
		{"restore -f", "    restoreOptions: ['-f-']\n", `retrieval.logical.restoreOptions[0] "-f-" sets the output file`},
		{"restore --list", "    restoreOptions: ['--list']\n", `restoreOptions[0] "--list" sets the output (list instead of restore)`},
		{"restore -d", "    restoreOptions: ['-dpostgres']\n", `restoreOptions[0] "-dpostgres" sets the connection`},
		{"restore --host", "    restoreOptions: ['--host=/tmp']\n", `restoreOptions[0] "--host=/tmp" sets the connection`},
		{"bad format", "    format: tar\n", `retrieval.logical.format "tar"`},
		{"empty table pattern", "    includeTables: ['']\n", `retrieval.logical.includeTables[0] "" is not a pattern`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(base+tc.yaml), "agent.yaml")
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("valid options refused: %v", err)
			case tc.want != "" && err == nil:
				t.Fatalf("accepted, want an error containing %q", tc.want)
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func TestPreprocessValidation(t *testing.T) {
	base := "server: {verificationToken: 0123456789abcdef0123456789abcdef}\npools: [{name: p, mode: btrfs, path: /p}]\nretrieval:\n  mode: logical\n  source: {connStr: 'host=x'}\n  preprocess:\n"
	for yaml, want := range map[string]string{
		"    sqlDir: rel/sql\n":          `retrieval.preprocess.sqlDir "rel/sql" must be an absolute path`,
		"    scripts: [mask.sh]\n":       `retrieval.preprocess.scripts[0] "mask.sh" must be an absolute path`,
		"    dbName: 'a b;'\n":           `retrieval.preprocess.dbName "a b;"`,
		"    sqlDir: /etc/thinlab/sql\n": "",
		"    scripts: [/usr/bin/true]\n": "",
	} {
		_, err := Parse([]byte(base+yaml), "agent.yaml")
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("%s: error %v, want %q", yaml, err, want)
		}
	}
}

func TestRetrievalPoolsValidation(t *testing.T) {
	base := "server: {verificationToken: 0123456789abcdef0123456789abcdef}\npools: [{name: a, mode: btrfs, path: /a}, {name: b, mode: btrfs, path: /b}]\nretrieval:\n  mode: logical\n  source: {connStr: 'host=x'}\n"
	for yaml, want := range map[string]string{
		"  pools: [a, b]\n":            "",
		"  pools: [a, b]\n  pool: a\n": `retrieval.pool "a" and retrieval.pools are both set`,
		"  pools: [a]\n":               "retrieval.pools has one pool",
		"  pools: [a, c]\n":            `retrieval.pools[1] "c" is not one of pools[].name`,
		"  pools: [a, a]\n":            `retrieval.pools[1] "a" is listed twice`,
		"  pools: [a, b]\n  busyPool: {forceAfterMinutes: -1}\n": "retrieval.busyPool",
	} {
		c, err := Parse([]byte(base+yaml), "agent.yaml")
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("%s: error %v, want %q", yaml, err, want)
		}
		if want == "" && err == nil && c.Retrieval.Pool != "" {
			t.Errorf("%s: retrieval.pool defaulted to %q although pools rotate", yaml, c.Retrieval.Pool)
		}
	}
}

func TestSourceIAMValidation(t *testing.T) {
	base := "server: {verificationToken: 0123456789abcdef0123456789abcdef}\npools: [{name: a, mode: btrfs, path: /a}]\nretrieval:\n  mode: logical\n  source: "
	for yaml, want := range map[string]string{
		"{host: db, username: u, iam: aws-rds, region: eu-west-1, sslMode: require}\n": "",
		"{host: db, username: u, iam: aws-rds}\n":                                      "retrieval.source.auth.aws.region is empty",
		"{host: db, username: u, iam: aws-rds, region: r, passwordEnv: PW}\n":          "replaces the password",
		"{host: db, username: u, iam: aws-rds, region: r, sslMode: disable}\n":         "would send the token without TLS",
		"{host: db, username: u, iam: gcp}\n":                                          `retrieval.source.iam "gcp"`,
		// retrieval.source.auth
		"{host: db, username: u, auth: {kind: awsRdsIam, aws: {region: eu-west-1, profile: prod}}}\n":                 "",
		"{connStr: 'host=db user=u', auth: {kind: awsRdsIam, aws: {region: eu-west-1}}}\n":                            "needs retrieval.source.host and username",
		"{host: db, username: u, auth: {kind: awsRdsIam, aws: {region: r, stsEndpoint: 'ftp://x'}}}\n":                "retrieval.source.auth.aws.stsEndpoint",
		"{host: db, username: u, iam: aws-rds, region: r, auth: {kind: awsRdsIam}}\n":                                 "keep auth.kind",
		"{host: db, username: u, auth: {kind: gcpCloudSqlIam, gcp: {keyFile: /etc/sa.json}}}\n":                       "",
		"{host: db, username: u, auth: {kind: gcpCloudSqlIam, gcp: {keyFile: sa.json}}}\n":                            "retrieval.source.auth.gcp.keyFile",
		"{host: db, username: u, auth: {kind: gcpCloudSqlIam}, sslMode: prefer}\n":                                    "would send the token without TLS",
		"{host: db, username: u, auth: {kind: azureAd, azure: {tenantID: t, clientID: c, clientSecretEnv: S}}}\n":     "",
		"{host: db, username: u, auth: {kind: azureAd, azure: {clientSecretEnv: S}}}\n":                               "needs tenantID and clientID",
		"{host: db, username: u, auth: {kind: azureAd, azure: {tenantID: t, clientID: c, clientSecretEnv: 'a b'}}}\n": "clientSecretEnv \"a b\" is not an environment variable name",
		"{host: db, username: u, auth: {kind: azureAd}, password: x}\n":                                               "replaces the password",
		"{host: db, username: u, auth: {kind: kerberos}}\n":                                                           `auth.kind "kerberos": use password, awsRdsIam`,
		"{host: db, username: u, auth: {kind: password}, passwordEnv: PW}\n":                                          "",
	} {
		_, err := Parse([]byte(base+yaml), "agent.yaml")
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("%s: error %v, want %q", yaml, err, want)
		}
	}
}

func TestReplicationValidation(t *testing.T) {
	base := "server: {verificationToken: 0123456789abcdef0123456789abcdef}\npools: [{name: a, mode: btrfs, path: /a}, {name: b, mode: btrfs, path: /b}]\nretrieval:\n  mode: logical\n  source: {host: db, username: u, passwordEnv: PW}\n  pool: a\n  logical:\n    replication: {enabled: true, "
	for yaml, want := range map[string]string{
		"publication: thinlab}\n":                                            "",
		"publication: thinlab, slotName: agent_1}\n":                         "",
		"publication: thinlab, lagAlertSeconds: 60}\n":                       "",
		"slotName: x}\n":                                                     `retrieval.logical.replication.publication ""`,
		"publication: thinlab, slotName: Bad-Name}\n":                        `retrieval.logical.replication.slotName "Bad-Name"`,
		"publication: thinlab, lagAlertSeconds: -1}\n":                       "retrieval.logical.replication.lagAlertSeconds (-1)",
		"publication: thinlab}\n    format: directory\n":                     "remove retrieval.logical.format directory",
		"publication: thinlab}\n    includeTables: [public.users]\n":         "the publication chooses the replicated tables",
		"publication: thinlab}\n    dumps: [{path: /d.dump, dbName: app}]\n": "not retrieval.logical.dumps",
	} {
		c, err := Parse([]byte(base+yaml), "agent.yaml")
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("%s: error %v, want %q", yaml, err, want)
		}
		if want == "" && err == nil && (!c.Retrieval.Logical.Replication.Enabled || c.Retrieval.Logical.Replication.Slot() == "") {
			t.Errorf("%s: parsed %+v", yaml, c.Retrieval.Logical.Replication)
		}
	}
	rot := "server: {verificationToken: 0123456789abcdef0123456789abcdef}\npools: [{name: a, mode: btrfs, path: /a}, {name: b, mode: btrfs, path: /b}]\nretrieval:\n  mode: logical\n  source: {host: db, username: u, passwordEnv: PW}\n  pools: [a, b]\n  logical: {replication: {enabled: true, publication: p}}\n"
	if _, err := Parse([]byte(rot), "agent.yaml"); err == nil || !strings.Contains(err.Error(), "set retrieval.pool instead of retrieval.pools") {
		t.Errorf("replication with rotating pools: %v", err)
	}
}
