package config

import (
	"strings"
	"testing"
)

// A DLE 3.x logical configuration in the shape of DLE's
// config.example.logical_generic.yml.
const dleLogical = `
server:
  verificationToken: "0123456789abcdef0123456789abcdef"
  port: 2345
embeddedUI:
  enabled: true
  dockerImage: "postgresai/ce-ui:latest"
global:
  engine: postgres
  debug: true
  database:
    username: postgres
    dbname: app
poolManager:
  mountDir: /var/lib/dblab
  dataSubDir: data
  clonesMountSubDir: clones
  socketSubDir: sockets
  observerSubDir: observer
  preSnapshotSuffix: "_pre"
  selectedPool: ""
databaseContainer: &db_container
  dockerImage: "postgresai/extended-postgres:15"
  containerConfig:
    "shm-size": 1gb
databaseConfigs: &db_configs
  configs:
    shared_buffers: 1GB
    work_mem: 100MB
provision:
  <<: *db_container
  portPool:
    from: 6000
    to: 6099
  useSudo: false
  keepUserPasswords: false
  cloneAccessAddresses: "127.0.0.1"
retrieval:
  jobs:
    - logicalDump
    - logicalRestore
    - logicalSnapshot
  refresh:
    timetable: "0 0 * * 1"
    skipStartRefresh: false
  spec:
    logicalDump:
      options:
        <<: *db_container
        dumpLocation: "/var/lib/dblab/dblab_pool/dump"
        source:
          type: remote
          connection:
            dbname: app
            host: prod.example.com
            port: 5432
            username: reader
            password: s3cret
        databases:
          app:
            tables:
              - public.users
        parallelJobs: 4
        customOptions:
          - "--no-comments"
          - "--file=/tmp/evil"
    logicalRestore:
      options:
        <<: *db_container
        dumpLocation: "/var/lib/dblab/dblab_pool/dump"
        parallelJobs: 4
        customOptions:
          - "--no-tablespaces"
        queryPreprocessing:
          queryPath: "/etc/dblab/sql"
          maxParallelQueries: 2
    logicalSnapshot:
      options:
        <<: *db_configs
        preprocessingScript: "/etc/dblab/mask.sh"
cloning:
  accessHost: "db.example.com"
  maxIdleMinutes: 120
diagnostic:
  logsRetentionDays: 7
`

// TestImportDLE: a DLE logical configuration becomes a Thinlab config that
// loads (after the pool path is checked), carries source, databases,
// tables, jobs, options, schedule, ports, cloning and pre-processing, and
// names what it could not carry over, including an output-redirecting
// option.
func TestImportDLE(t *testing.T) {
	res, err := ImportDLE([]byte(dleLogical))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse(res.YAML, "imported.yaml")
	if err != nil {
		t.Fatalf("the imported configuration does not load: %v\n%s", err, res.YAML)
	}
	r := cfg.Retrieval
	if r.Mode != "logical" || r.Source.Host != "prod.example.com" || r.Source.Port != 5432 || r.Source.Username != "reader" || r.Source.DBName != "app" ||
		r.Jobs != 4 || r.RefreshSchedule != "0 0 * * 1" || !r.RefreshOnStart || r.Logical.Format != FormatDirectory ||
		strings.Join(r.Databases, ",") != "app" || strings.Join(r.Logical.IncludeTables, ",") != "public.users" ||
		strings.Join(r.Logical.DumpOptions, ",") != "--no-comments" || strings.Join(r.Logical.RestoreOptions, ",") != "--no-tablespaces" ||
		r.Preprocess.SQLDir != "/etc/dblab/sql" || r.Preprocess.DBName != "app" || strings.Join(r.Preprocess.Scripts, ",") != "/etc/dblab/mask.sh" {
		t.Fatalf("retrieval %+v\n%s", r, res.YAML)
	}
	if cfg.Provision.PortPool.From != 6000 || cfg.Provision.PortPool.To != 6099 || cfg.Provision.AccessHost != "db.example.com" ||
		cfg.Provision.ListenAddresses != "127.0.0.1" || cfg.Cloning.MaxIdleMinutes != 120 || cfg.Provision.CloneDefaults.Settings["work_mem"] != "100MB" ||
		cfg.Server.Port != 2345 || len(cfg.Pools) != 1 || cfg.Pools[0].Name != "dblab_pool" {
		t.Fatalf("config %+v", cfg)
	}
	notCarried := strings.Join(res.NotCarried, "\n")
	for _, want := range []string{
		`retrieval.spec.logicalDump.options.customOptions[1] "--file=/tmp/evil": sets the output file`,
		"databaseContainer.dockerImage: no Thinlab counterpart",
		"embeddedUI.enabled: no Thinlab counterpart",
		"diagnostic.logsRetentionDays: no Thinlab counterpart",
		"retrieval.spec.logicalRestore.options.queryPreprocessing.maxParallelQueries: no Thinlab counterpart",
		"poolManager.preSnapshotSuffix: no Thinlab counterpart",
	} {
		if !strings.Contains(notCarried, want) {
			t.Errorf("not-carried list lacks %q:\n%s", want, notCarried)
		}
	}
	for _, carried := range []string{"retrieval.refresh.timetable", "cloning.maxIdleMinutes", "provision.portPool.from", "source.connection.host"} {
		if strings.Contains(notCarried, carried) {
			t.Errorf("%s is carried over but listed as not:\n%s", carried, notCarried)
		}
	}
	if check := strings.Join(res.Check, "\n"); !strings.Contains(check, "passwordEnv") || !strings.Contains(check, "pools[0]") {
		t.Fatalf("review list %q", check)
	}
}

func TestImportDLERejectsGarbage(t *testing.T) {
	if _, err := ImportDLE([]byte("{not yaml")); err == nil {
		t.Fatal("garbage accepted")
	}
	if _, err := ImportDLE(nil); err == nil {
		t.Fatal("an empty file accepted")
	}
}
