package config

import (
	"fmt"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// Logical dump formats (retrieval.logical.format).
const (
	// FormatPiped streams pg_dump -Fc into pg_restore: no dump on disk,
	// one process pair per database.
	FormatPiped = "piped"
	// FormatDirectory writes pg_dump -Fd --jobs N to a directory on the
	// pool (outside PGDATA, removed before the snapshot) and restores it
	// with pg_restore --jobs N.
	FormatDirectory = "directory"
)

// Logical tunes retrieval.mode logical.
type Logical struct {
	// Format is FormatPiped (default) or FormatDirectory.
	Format string `yaml:"format"`
	// ParallelDatabases is how many databases are copied at once. Default:
	// retrieval.jobs with format piped (a piped archive restores serially),
	// 1 with directory (there retrieval.jobs is each pg_dump's and
	// pg_restore's --jobs).
	ParallelDatabases int `yaml:"parallelDatabases"`
	// IncludeTables, ExcludeTables, IncludeSchemas, ExcludeSchemas are
	// pg_dump --table, --exclude-table, --schema and --exclude-schema
	// patterns, applied to every copied database.
	IncludeTables  []string `yaml:"includeTables"`
	ExcludeTables  []string `yaml:"excludeTables"`
	IncludeSchemas []string `yaml:"includeSchemas"`
	ExcludeSchemas []string `yaml:"excludeSchemas"`
	// DumpOptions and RestoreOptions are extra pg_dump and pg_restore
	// options, each one argument in --name=value (or -xVALUE) form.
	// Options that choose the connection, the output or the format are
	// refused: the agent sets those.
	DumpOptions    []string `yaml:"dumpOptions"`
	RestoreOptions []string `yaml:"restoreOptions"`
	// Dumps, when set, are restored instead of dumping retrieval.source
	// (which is then not needed): existing pg_dump output on disk or in S3.
	Dumps []Dump `yaml:"dumps"`
	// S3 is the storage of dumps whose path is s3://bucket/key.
	S3 S3 `yaml:"s3"`
	// Replication keeps the pool's postgres current by logical
	// replication instead of copying everything at every refresh.
	Replication Replication `yaml:"replication"`
}

// Replication is retrieval.logical.replication: the source's schema is
// copied with pg_dump --schema-only, the pool's postgres then subscribes
// to Publication on the source in every copied database (the
// subscription's initial copy brings the data, its slot created in the
// same step, so no row is lost or doubled) and keeps running. A refresh
// then snapshots the replicated state instead of copying again.
type Replication struct {
	Enabled bool `yaml:"enabled"`
	// Publication is the publication's name on the source, in every copied
	// database (CREATE PUBLICATION ... FOR ALL TABLES, made by the source's
	// administrator: the agent never changes the source).
	Publication string `yaml:"publication"`
	// SlotName prefixes the subscriptions' and their replication slots'
	// names on the source: <slotName>_<database> (default "thinlab").
	// Agents replicating from one source need different prefixes.
	SlotName string `yaml:"slotName"`
	// LagAlertSeconds raises the lag_high alert when the subscription is
	// this far behind (default 300).
	LagAlertSeconds int `yaml:"lagAlertSeconds"`
}

// DefaultSlotName is retrieval.logical.replication.slotName's default.
const DefaultSlotName = "thinlab"

// Slot is the prefix of the subscriptions' names (SlotName or the
// default).
func (r Replication) Slot() string {
	if r.SlotName != "" {
		return r.SlotName
	}
	return DefaultSlotName
}

// LagAlert is the lag_high threshold in seconds.
func (r Replication) LagAlert() int {
	if r.LagAlertSeconds > 0 {
		return r.LagAlertSeconds
	}
	return DefaultLagAlertSeconds
}

// slotPrefixRE: replication slot names are lower-case letters, digits and
// underscores, at most 63 characters (room is left for the database).
var slotPrefixRE = regexp.MustCompile(`^[a-z0-9_]{1,30}$`)

func (r Retrieval) validateReplication(bad func(string, ...any)) {
	rep := r.Logical.Replication
	if !rep.Enabled {
		return
	}
	if !validIdent(rep.Publication) {
		bad("retrieval.logical.replication.publication %q is not a valid name: name the publication on the source (CREATE PUBLICATION thinlab FOR ALL TABLES in every copied database)", rep.Publication)
	}
	if rep.SlotName != "" && !slotPrefixRE.MatchString(rep.SlotName) {
		bad("retrieval.logical.replication.slotName %q: use at most 30 lower-case letters, digits and underscores (slot names on the source are <slotName>_<database>)", rep.SlotName)
	}
	if rep.LagAlertSeconds < 0 {
		bad("retrieval.logical.replication.lagAlertSeconds (%d) must not be negative (0: the default, %d)", rep.LagAlertSeconds, DefaultLagAlertSeconds)
	}
	if len(r.Logical.Dumps) > 0 {
		bad("retrieval.logical.replication needs a live source, not retrieval.logical.dumps: remove one of them")
	}
	if len(r.Pools) > 0 {
		bad("retrieval.logical.replication keeps one pool's postgres subscribed: set retrieval.pool instead of retrieval.pools")
	}
	if r.Source.IAM != "" || r.Source.AuthKind() != AuthPassword {
		bad("retrieval.logical.replication cannot use a cloud IAM token (retrieval.source.iam or retrieval.source.auth.kind): the subscription keeps its connection for longer than a token lives; give the replication user a password (passwordEnv)")
	}
	l := r.Logical
	if len(l.IncludeTables)+len(l.ExcludeTables)+len(l.IncludeSchemas)+len(l.ExcludeSchemas) > 0 {
		bad("retrieval.logical.replication: the publication chooses the replicated tables; remove includeTables/excludeTables/includeSchemas/excludeSchemas (a table it publishes must exist in the pool)")
	}
	if l.Format == FormatDirectory {
		bad("retrieval.logical.replication copies only the schema with pg_dump and the data through the subscription: remove retrieval.logical.format directory")
	}
}

// S3 is an S3-compatible object storage (AWS S3, MinIO, ...), addressed
// path-style (endpoint/bucket/key) and signed with AWS Signature V4.
type S3 struct {
	// Endpoint is the storage's URL, e.g. https://s3.eu-west-1.amazonaws.com
	// or http://127.0.0.1:9000.
	Endpoint string `yaml:"endpoint"`
	// Region signs the requests ("us-east-1" if empty).
	Region string `yaml:"region"`
	// AccessKeyIDEnv and SecretAccessKeyEnv name the environment variables
	// holding the key (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY if
	// empty; AWS_SESSION_TOKEN is used when set).
	AccessKeyIDEnv     string `yaml:"accessKeyIDEnv"`
	SecretAccessKeyEnv string `yaml:"secretAccessKeyEnv"`
}

// Dump formats (retrieval.logical.dumps[].format).
const (
	DumpAuto      = "auto"
	DumpCustom    = "custom"
	DumpDirectory = "directory"
	DumpPlain     = "plain"
)

// Dump is one existing dump restored into one database.
type Dump struct {
	// Path is a custom-format file (pg_dump -Fc), a directory-format
	// directory (-Fd; readable by provision.osUser) or a plain SQL file,
	// uncompressed or compressed with gzip, bzip2 or zstd; or the same in
	// S3 as s3://bucket/key (a directory: s3://bucket/prefix/).
	Path string `yaml:"path"`
	// DBName is the database the dump is restored into.
	DBName string `yaml:"dbName"`
	// Format is auto (default: recognised from the content), custom,
	// directory or plain.
	Format string `yaml:"format"`
}

// Preprocess is what runs against the freshly filled pool's postgres
// before each snapshot: the hook for masking and patching.
type Preprocess struct {
	// SQLDir holds the SQL steps: each sub-folder is a group, groups run
	// in name order, the *.sql files of one group run in parallel (one
	// session each). *.sql files directly in SQLDir form a group that runs
	// first.
	SQLDir string `yaml:"sqlDir"`
	// DBName is the database the SQL files run in ("postgres" if empty).
	DBName string `yaml:"dbName"`
	// Scripts run after the SQL, in order, as provision.osUser (never
	// root), with PGHOST, PGPORT, PGUSER and PGDATABASE naming the pool's
	// postgres. Each must be an absolute path to an executable file.
	Scripts []string `yaml:"scripts"`
}

// Enabled says whether anything is configured.
func (p Preprocess) Enabled() bool { return p.SQLDir != "" || len(p.Scripts) > 0 }

// Options the agent sets itself, refused in dumpOptions/restoreOptions.
// Short options are single letters; long ones are matched also as
// getopt's unambiguous abbreviations.
var (
	dumpShortRefused    = map[byte]string{'f': "output file", 'h': "connection", 'd': "connection", 'p': "connection", 'U': "connection", 'F': "format", 'j': "jobs"}
	dumpLongRefused     = map[string]string{"file": "output file", "host": "connection", "dbname": "connection", "port": "connection", "username": "connection", "format": "format", "jobs": "jobs"}
	restoreShortRefused = map[byte]string{'f': "output file", 'h': "connection", 'd': "connection", 'p': "connection", 'U': "connection", 'F': "format", 'j': "jobs", 'l': "output (list instead of restore)"}
	restoreLongRefused  = map[string]string{"file": "output file", "host": "connection", "dbname": "connection", "port": "connection", "username": "connection", "format": "format", "jobs": "jobs", "list": "output (list instead of restore)"}
)

// Short options that take a value (the rest of a bundled argument is
// that value).
const (
	dumpShortValued    = "dEefFhjnNpStTUZ"
	restoreShortValued = "dfFhIjLnNPpStTU"
)

// checkToolOption says why opt may not be an extra option ("" if it may).
func checkToolOption(opt string, short map[byte]string, valued string, long map[string]string) string {
	switch {
	case opt == "" || opt == "-" || opt == "--":
		return "is not an option"
	case strings.HasPrefix(opt, "--"):
		name, _, _ := strings.Cut(opt[2:], "=")
		for full, why := range long {
			if strings.HasPrefix(full, name) {
				return fmt.Sprintf("sets the %s (--%s), which the agent chooses", why, full)
			}
		}
		return ""
	case strings.HasPrefix(opt, "-"):
		// Short options may be bundled (-vOx): any refused letter up to
		// the first one that takes a value refuses the whole argument.
		for i := 1; i < len(opt); i++ {
			if why, ok := short[opt[i]]; ok {
				return fmt.Sprintf("sets the %s (-%c), which the agent chooses", why, opt[i])
			}
			if strings.IndexByte(valued, opt[i]) >= 0 {
				if i == len(opt)-1 {
					return "takes a value: join it (-xVALUE or --name=value), since a separate argument would be read as a database"
				}
				return ""
			}
		}
		return ""
	default:
		// pg_dump reads a bare argument as the database (a connection
		// string even): values must be joined to their option.
		return "is not an option: give values as --name=value, since a separate argument would be read as a database"
	}
}

func (l Logical) validate(bad func(string, ...any)) {
	if l.S3.Endpoint != "" {
		if u, err := url.Parse(l.S3.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("retrieval.logical.s3.endpoint %q must be an http(s) URL such as https://s3.eu-west-1.amazonaws.com", l.S3.Endpoint)
		}
	}
	for _, k := range []struct{ key, v string }{{"accessKeyIDEnv", l.S3.AccessKeyIDEnv}, {"secretAccessKeyEnv", l.S3.SecretAccessKeyEnv}} {
		if k.v != "" && !envNameRE.MatchString(k.v) {
			bad("retrieval.logical.s3.%s %q is not an environment variable name", k.key, k.v)
		}
	}
	seenDB := map[string]bool{}
	for i, d := range l.Dumps {
		if rest, ok := strings.CutPrefix(d.Path, "s3://"); ok {
			bucket, key, _ := strings.Cut(rest, "/")
			if bucket == "" || key == "" {
				bad("retrieval.logical.dumps[%d].path %q: an S3 dump is s3://bucket/key (a directory dump s3://bucket/prefix/)", i, d.Path)
			}
			if l.S3.Endpoint == "" {
				bad("retrieval.logical.dumps[%d].path %q is in S3 but retrieval.logical.s3.endpoint is empty: set the storage's URL", i, d.Path)
			}
		} else if !filepath.IsAbs(d.Path) {
			bad("retrieval.logical.dumps[%d].path %q must be an absolute path to a dump file or directory, or s3://bucket/key", i, d.Path)
		}
		if !validIdent(d.DBName) {
			bad("retrieval.logical.dumps[%d].dbName %q is not a valid database name: name the database to restore into", i, d.DBName)
		} else if seenDB[d.DBName] {
			bad("retrieval.logical.dumps[%d].dbName %q is restored twice: give each dump its own database", i, d.DBName)
		}
		seenDB[d.DBName] = true
		switch d.Format {
		case "", DumpAuto, DumpCustom, DumpDirectory, DumpPlain:
		default:
			bad("retrieval.logical.dumps[%d].format %q: use auto, custom, directory or plain", i, d.Format)
		}
	}
	switch l.Format {
	case "", FormatPiped, FormatDirectory:
	default:
		bad("retrieval.logical.format %q: use %q (pg_dump | pg_restore, no dump on disk) or %q (pg_dump -Fd --jobs)", l.Format, FormatPiped, FormatDirectory)
	}
	if l.ParallelDatabases < 0 || l.ParallelDatabases > 64 {
		bad("retrieval.logical.parallelDatabases (%d) must be between 1 and 64 (0: the default)", l.ParallelDatabases)
	}
	for key, list := range map[string][]string{"includeTables": l.IncludeTables, "excludeTables": l.ExcludeTables, "includeSchemas": l.IncludeSchemas, "excludeSchemas": l.ExcludeSchemas} {
		for i, p := range list {
			if strings.TrimSpace(p) == "" || strings.ContainsAny(p, "\x00\n") {
				bad("retrieval.logical.%s[%d] %q is not a pattern: give a table or schema name (pg_dump pattern, e.g. public.users or audit_*)", key, i, p)
			}
		}
	}
	for i, o := range l.DumpOptions {
		if why := checkToolOption(o, dumpShortRefused, dumpShortValued, dumpLongRefused); why != "" {
			bad("retrieval.logical.dumpOptions[%d] %q %s: remove it", i, o, why)
		}
	}
	for i, o := range l.RestoreOptions {
		if why := checkToolOption(o, restoreShortRefused, restoreShortValued, restoreLongRefused); why != "" {
			bad("retrieval.logical.restoreOptions[%d] %q %s: remove it", i, o, why)
		}
	}
}

func (p Preprocess) validate(bad func(string, ...any)) {
	if p.SQLDir != "" && !filepath.IsAbs(p.SQLDir) {
		bad("retrieval.preprocess.sqlDir %q must be an absolute path", p.SQLDir)
	}
	if p.DBName != "" && !validIdent(p.DBName) {
		bad("retrieval.preprocess.dbName %q is not a valid database name", p.DBName)
	}
	for i, s := range p.Scripts {
		if !filepath.IsAbs(s) {
			bad("retrieval.preprocess.scripts[%d] %q must be an absolute path to an executable", i, s)
		}
	}
	if slices.Contains(p.Scripts, "") {
		bad("retrieval.preprocess.scripts has an empty entry: remove it")
	}
}

// BusyPool is the refresh policy for pools that still have clones. While
// every idle pool has clones a refresh is skipped (a refresh.skipped
// event and alert name the pool and when it will be forced); it fills the
// least recently refreshed of them once either limit is reached. Clones on
// a pool that is refreshed keep working: they live on their own datasets.
type BusyPool struct {
	// ForceAfterMinutes forces the refresh this long after the first skip
	// (the warning period); 0 never forces by time.
	ForceAfterMinutes int `yaml:"forceAfterMinutes"`
	// ForceAfterRetries forces the refresh after this many skipped
	// attempts; 0 never forces by count.
	ForceAfterRetries int `yaml:"forceAfterRetries"`
}

func (r Retrieval) validatePools(bad func(string, ...any), seen map[string]bool) {
	if len(r.Pools) > 0 && r.Pool != "" {
		bad("retrieval.pool %q and retrieval.pools are both set: pool pins one pool, pools rotates between several; keep one", r.Pool)
	}
	if len(r.Pools) == 1 {
		bad("retrieval.pools has one pool: rotation needs two or more (or set retrieval.pool)")
	}
	dup := map[string]bool{}
	for i, name := range r.Pools {
		if !seen[name] {
			bad("retrieval.pools[%d] %q is not one of pools[].name", i, name)
		}
		if dup[name] {
			bad("retrieval.pools[%d] %q is listed twice", i, name)
		}
		dup[name] = true
	}
	if r.BusyPool.ForceAfterMinutes < 0 || r.BusyPool.ForceAfterRetries < 0 {
		bad("retrieval.busyPool: forceAfterMinutes and forceAfterRetries must not be negative (0 = never force)")
	}
}
