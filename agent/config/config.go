// Package config is the agent's YAML configuration: one file, defaults for
// everything optional, and validation whose errors name the field and how
// to fix it.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is the whole agent configuration.
type Config struct {
	Server    Server    `yaml:"server"`
	Pools     []Pool    `yaml:"pools"`
	Provision Provision `yaml:"provision"`
	Cloning   Cloning   `yaml:"cloning"`
	Retrieval Retrieval `yaml:"retrieval"`
	// StateDir holds the agent's state (clones.json, retrieval state).
	StateDir string   `yaml:"stateDir"`
	Platform Platform `yaml:"platform"`
	// Shipping is where snapshots are exported to and imported from
	// besides other agents (POST /snapshots/ship with s3).
	Shipping Shipping `yaml:"shipping"`
}

// Shipping configures snapshot shipping through object storage.
type Shipping struct {
	// S3, when its endpoint is set, is an S3-compatible storage holding
	// snapshot streams as Bucket/Prefix<key>. Credentials come from the
	// environment variables the S3 fields name, never from API requests.
	S3 ShippingS3 `yaml:"s3"`
}

// ShippingS3 is the object storage of snapshot streams.
type ShippingS3 struct {
	S3     `yaml:",inline"`
	Bucket string `yaml:"bucket"`
	// Prefix is put before every key (e.g. "agent1/").
	Prefix string `yaml:"prefix"`
}

// Server is the agent's local HTTP API.
type Server struct {
	Host string `yaml:"host"`
	Port int    `yaml:"port"`
	// VerificationToken is required in the Verification-Token header (or
	// Authorization: Bearer) of every API request except /healthz and
	// /openapi.yaml. At least MinTokenLength characters; generate one with
	// `openssl rand -hex 32`.
	VerificationToken string `yaml:"verificationToken"`
	// InsecureNoAuth turns authentication off, for development only: it is
	// accepted only when Host is a loopback address and no token is set.
	InsecureNoAuth bool `yaml:"insecureNoAuth"`
	// MetricsAddress, when set (host:port), serves /metrics without a
	// token on a listener of its own, for a Prometheus that cannot send
	// the token. /metrics on the API itself always needs the token.
	MetricsAddress string `yaml:"metricsAddress"`
	// TLS serves the API over HTTPS when both files are set.
	TLS TLS `yaml:"tls"`
}

// TLS is the API's certificate and private key (PEM files).
type TLS struct {
	CertFile string `yaml:"certFile"`
	KeyFile  string `yaml:"keyFile"`
}

// Enabled reports whether the API serves HTTPS.
func (t TLS) Enabled() bool { return t.CertFile != "" || t.KeyFile != "" }

// MinTokenLength is the shortest server.verificationToken accepted.
const MinTokenLength = 32

// Pool is one copy-on-write pool, opened with agent/storage/backend.
type Pool struct {
	Name string `yaml:"name"`
	// Mode is the backend: zfs, lvm, btrfs or reflink.
	Mode string `yaml:"mode"`
	// Path is the backend's location of the pool: the mountpoint of a
	// btrfs/XFS filesystem, a ZFS dataset name, an LVM VG/thin pool.
	Path string `yaml:"path"`
	// ClonesDir is where clone datasets are mounted (backend default when
	// empty).
	ClonesDir string `yaml:"clonesDir"`
}

// Provision is how clones run.
type Provision struct {
	PortPool PortPool `yaml:"portPool"`
	// PgBinRoot holds one directory per major version (<root>/<major>/bin).
	PgBinRoot string `yaml:"pgBinRoot"`
	// OSUser owns the pools' data on disk and runs the pool's own postgres
	// (it refuses to run as root).
	OSUser string `yaml:"osUser"`
	// CloneUIDs is the range of OS uids (with gids of the same numbers)
	// given to clones, one per clone, for isolation. No account needs to
	// exist for them.
	CloneUIDs IDRange `yaml:"cloneUIDs"`
	// ListenAddresses is postgres' listen_addresses for every clone.
	ListenAddresses string `yaml:"listenAddresses"`
	// AccessHost is the host clients are told to connect to.
	AccessHost    string        `yaml:"accessHost"`
	CloneDefaults CloneDefaults `yaml:"cloneDefaults"`
	Resources     Resources     `yaml:"resources"`
}

// PortPool is the inclusive range of clone ports.
type PortPool struct {
	From int `yaml:"from"`
	To   int `yaml:"to"`
}

// Size is the number of ports in the range.
func (p PortPool) Size() int { return p.To - p.From + 1 }

// IDRange is an inclusive range of OS uids/gids.
type IDRange struct {
	From uint32 `yaml:"from"`
	To   uint32 `yaml:"to"`
}

// CloneDefaults apply to every clone.
type CloneDefaults struct {
	// Settings are postgres settings for every clone, on top of small
	// memory defaults; a request's extra_conf overrides them.
	Settings map[string]string `yaml:"settings"`
	// DBName is the database reported when a request names none.
	DBName string `yaml:"dbName"`
}

// Resources are per-clone limits, applied through cgroups where the host
// allows it. Empty means no limit.
type Resources struct {
	// CPU is a number of CPUs, e.g. "1.5".
	CPU string `yaml:"cpu"`
	// Memory is a size such as "512Mi", "1Gi" or "536870912".
	Memory string `yaml:"memory"`
}

// CPUQuota parses CPU (0 when unset).
func (r Resources) CPUQuota() float64 {
	v, _ := strconv.ParseFloat(strings.TrimSpace(r.CPU), 64)
	return v
}

// MemoryBytes parses Memory (0 when unset).
func (r Resources) MemoryBytes() uint64 {
	v, _ := ParseSize(r.Memory)
	return v
}

// Cloning is the clones' lifetime policy.
type Cloning struct {
	// MaxIdleMinutes deletes a clone that had no connections for this long;
	// 0 disables idle cleanup.
	MaxIdleMinutes uint `yaml:"maxIdleMinutes"`
	// ProtectionLeaseDurationMinutes is how long protection lasts when a
	// request gives no duration; 0 means forever.
	ProtectionLeaseDurationMinutes uint `yaml:"protectionLeaseDurationMinutes"`
	// ProtectionMaxDurationMinutes caps any protection; 0 means no cap.
	ProtectionMaxDurationMinutes uint `yaml:"protectionMaxDurationMinutes"`
	// ProtectionExpiryWarningMinutes is how long before a protection ends
	// its clone.protection_expiring event is sent; 0 means 1440 (a day),
	// as in Database Lab Engine.
	ProtectionExpiryWarningMinutes uint `yaml:"protectionExpiryWarningMinutes"`
	// HibernateAfterMinutes stops the postgres of a clone that had no
	// connections for this long (fractions allowed, e.g. 0.5); the agent
	// listens on the clone's port and the first connection starts it
	// again. 0 (the default) never hibernates.
	HibernateAfterMinutes float64 `yaml:"hibernateAfterMinutes"`
	// Warm keeps started clones of the newest snapshot for creates.
	Warm Warm `yaml:"warm"`
}

// DefaultExpiryWarningMinutes is the expiry warning when none is set.
const DefaultExpiryWarningMinutes = 1440

// ExpiryWarning is how long before a protection ends its owner is warned.
func (c Cloning) ExpiryWarning() time.Duration {
	m := c.ProtectionExpiryWarningMinutes
	if m == 0 {
		m = DefaultExpiryWarningMinutes
	}
	const maxMinutes = uint64(math.MaxInt64 / int64(time.Minute))
	return time.Duration(min(uint64(m), maxMinutes)) * time.Minute
}

// Warm is the pool of warm clones: started, idle clones of the newest
// snapshot that a create with default settings takes (only its user is
// set up), refilled in the background.
type Warm struct {
	// Count is how many warm clones to keep (0: none).
	Count int `yaml:"count"`
	// MaxMemoryMiB bounds the warm clones' memory (the proportional set
	// size of their processes); no more are started while it would be
	// exceeded. 0 means no bound beyond Count.
	MaxMemoryMiB uint `yaml:"maxMemoryMiB"`
}

// HibernateAfter is HibernateAfterMinutes as a duration (0: never).
func (c Cloning) HibernateAfter() time.Duration {
	if c.HibernateAfterMinutes <= 0 || c.HibernateAfterMinutes > 1e9 {
		return 0
	}
	return time.Duration(c.HibernateAfterMinutes * float64(time.Minute))
}

// Retrieval fills a pool with data.
type Retrieval struct {
	// Mode is "logical" (pg_dump and pg_restore, or existing dumps), or
	// empty for none.
	Mode   string `yaml:"mode"`
	Source Source `yaml:"source"`
	// Pool is the pool to fill; the first pool when empty and Pools is
	// unset. Set it to pin an agent to one pool (agents sharing a host).
	Pool string `yaml:"pool"`
	// Pools, instead of Pool, are two or more pools a full refresh rotates
	// between: each refresh fills an idle one (not the one with the newest
	// snapshot, preferably one without clones); clones default to the
	// newest snapshot, so the active pool switches when it is ready.
	Pools []string `yaml:"pools"`
	// BusyPool says when a refresh may fill a pool that still has clones
	// (only with Pools, when every idle pool has clones).
	BusyPool BusyPool `yaml:"busyPool"`
	// Databases to copy; all non-template databases of the source when
	// empty.
	Databases []string `yaml:"databases"`
	// Jobs is the parallelism (1 when unset): with logical.format piped
	// the number of databases copied at once (a piped archive restores
	// serially); with directory pg_dump's and pg_restore's --jobs.
	Jobs int `yaml:"jobs"`
	// RefreshSchedule is a cron expression (5 fields) for full refreshes;
	// empty means only on demand.
	RefreshSchedule string `yaml:"refreshSchedule"`
	// RefreshOnStart runs a full refresh when the agent starts and the pool
	// has no snapshot yet.
	RefreshOnStart bool `yaml:"refreshOnStart"`
	// KeepSnapshots is how many of retrieval.pool's newest snapshots to
	// keep: after every refresh and every minute the older ones are
	// deleted, except those clones use or that are protected (they count
	// towards the number). 0 keeps every snapshot.
	KeepSnapshots int `yaml:"keepSnapshots"`
	// Logical tunes the logical mode (format, filters, extra options).
	Logical Logical `yaml:"logical"`
	// Preprocess runs SQL and scripts against the pool before each
	// snapshot (masking).
	Preprocess Preprocess `yaml:"preprocess"`
	// Physical configures retrieval.mode "physical".
	Physical Physical `yaml:"physical"`
}

// Physical is retrieval.mode "physical": a first copy of the source's
// data directory into the pool's main dataset, a standby there that keeps
// replaying, and snapshots of its state on a schedule.
type Physical struct {
	// Tool makes the first copy: "basebackup" (pg_basebackup from
	// retrieval.source), "command" (Command), "pgbackrest", "barman" or
	// "walg".
	Tool string `yaml:"tool"`
	// Command is run by /bin/sh -c as provision.osUser with PGDATA set to
	// the (empty) data directory to fill, e.g. "rsync -a /backup/ $PGDATA/".
	Command string `yaml:"command"`
	// Env is the environment of the tool, of Command and of the standby's
	// restore_command (e.g. WALG_S3_PREFIX, AWS_ENDPOINT). Values are kept
	// in a file only provision.osUser reads, never in the data directory.
	Env map[string]string `yaml:"env"`
	// EnvFromAgent names variables of the agent's own environment passed
	// on the same way (secrets such as AWS_SECRET_ACCESS_KEY).
	EnvFromAgent []string `yaml:"envFromAgent"`
	// ToolPath is the tool's binary (pgbackrest, barman, wal-g); found in
	// PATH when empty.
	ToolPath   string             `yaml:"toolPath"`
	PgBackRest PhysicalPgBackRest `yaml:"pgbackrest"`
	Barman     PhysicalBarman     `yaml:"barman"`
	WALG       PhysicalWALG       `yaml:"walg"`
	// Standby is how the standby keeps up: "streaming" (primary_conninfo
	// from retrieval.source), "restoreCommand" (the tool's archive), or
	// "none". Default: streaming for basebackup and command with a
	// source, restoreCommand for the backup tools.
	Standby string `yaml:"standby"`
	// RestoreCommand overrides the tool's restore_command ("%f", "%p").
	RestoreCommand string `yaml:"restoreCommand"`
	// ArchiveDir is a plain WAL archive directory (what the source's
	// archive_command fills, e.g. "cp %p /archive/%f"): when set and
	// RestoreCommand is not, restore_command copies from it. It is the
	// archive point-in-time clones replay from; the window's end is read
	// from its newest segments.
	ArchiveDir string `yaml:"archiveDir"`
	// Settings are extra postgres settings of the standby.
	Settings map[string]string `yaml:"settings"`
	// SnapshotSchedule is a cron expression (5 fields) for the snapshot
	// cycle; empty means only on demand.
	SnapshotSchedule string `yaml:"snapshotSchedule"`
	// PreSnapshot makes the scheduled snapshots of the unpromoted standby
	// state: point-in-time clones start from them; their clones are
	// promoted, or hot standbys when requested read-only.
	PreSnapshot bool `yaml:"preSnapshot"`
	// LagAlertSeconds raises the lag_high alert when the standby is this
	// far behind (default 300).
	LagAlertSeconds int `yaml:"lagAlertSeconds"`
}

// PhysicalPgBackRest is the pgBackRest repository to restore from.
type PhysicalPgBackRest struct {
	Stanza     string `yaml:"stanza"`
	ConfigFile string `yaml:"configFile"`
	// Set is the backup set to restore; the latest when empty.
	Set string `yaml:"set"`
}

// PhysicalBarman is the Barman server to recover from.
type PhysicalBarman struct {
	Server     string `yaml:"server"`
	ConfigFile string `yaml:"configFile"`
	// BackupID is the backup to recover; "latest" when empty.
	BackupID string `yaml:"backupID"`
}

// PhysicalWALG is the WAL-G backup to fetch (storage from Env).
type PhysicalWALG struct {
	// BackupName is the backup to fetch; "LATEST" when empty.
	BackupName string `yaml:"backupName"`
}

// Source is the database logical retrieval copies from. Give either
// ConnStr or Host/Port/DBName/Username; the password can come from Password
// or, better, the environment variable named by PasswordEnv.
type Source struct {
	ConnStr     string `yaml:"connStr"`
	Host        string `yaml:"host"`
	Port        int    `yaml:"port"`
	DBName      string `yaml:"dbname"`
	Username    string `yaml:"username"`
	Password    string `yaml:"password"`
	PasswordEnv string `yaml:"passwordEnv"`
	// SSLRootCert is the CA that signed the source server's certificate;
	// with it SSLMode defaults to verify-full.
	SSLRootCert string `yaml:"sslRootCert"`
	// SSLMode is libpq's sslmode. Empty means verify-full with SSLRootCert,
	// else libpq's prefer, which the agent logs as insecure (an attacker
	// on the path can pose as the source and receive the password).
	SSLMode string `yaml:"sslMode"`
	// IAM, "aws-rds", is the older spelling of auth.kind awsRdsIam (with
	// Region as auth.aws.region).
	IAM string `yaml:"iam"`
	// Region is the AWS region of the RDS instance (with IAM aws-rds).
	Region string `yaml:"region"`
	// Auth chooses how the agent authenticates to the source: the
	// configured password, or a cloud IAM token made fresh for every
	// connection.
	Auth SourceAuth `yaml:"auth"`
}

// Source authentication kinds (retrieval.source.auth.kind).
const (
	AuthPassword       = "password"
	AuthAWSRDSIAM      = "awsRdsIam"
	AuthGCPCloudSQLIAM = "gcpCloudSqlIam"
	AuthAzureAD        = "azureAd"
)

// SourceAuth is retrieval.source.auth: the password is the configured
// one (kind password, the default) or an access token of the source's
// cloud, fetched with the agent's own cloud identity.
type SourceAuth struct {
	// Kind is password (default), awsRdsIam, gcpCloudSqlIam or azureAd.
	Kind  string    `yaml:"kind"`
	AWS   AWSAuth   `yaml:"aws"`
	GCP   GCPAuth   `yaml:"gcp"`
	Azure AzureAuth `yaml:"azure"`
}

// AWSAuth signs RDS IAM tokens (SigV4 presigned, 15 minutes) with
// credentials from the standard AWS chain: AWS_ACCESS_KEY_ID /
// AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN); AWS_WEB_IDENTITY_TOKEN_FILE
// with AWS_ROLE_ARN (STS AssumeRoleWithWebIdentity); the profile of the
// shared credentials and config files; ECS container credentials; EC2
// instance metadata (IMDSv2).
type AWSAuth struct {
	// Region is the RDS instance's region (required).
	Region string `yaml:"region"`
	// Profile is the shared-file profile (AWS_PROFILE, else "default").
	Profile string `yaml:"profile"`
	// STSEndpoint replaces https://sts.REGION.amazonaws.com for web
	// identity (AWS_ENDPOINT_URL_STS does too): a VPC endpoint.
	STSEndpoint string `yaml:"stsEndpoint"`
	// IMDSEndpoint replaces http://169.254.169.254 for EC2 instance
	// credentials (AWS_EC2_METADATA_SERVICE_ENDPOINT does too).
	IMDSEndpoint string `yaml:"imdsEndpoint"`
}

// GCPAuth gets a Cloud SQL IAM access token (scope sqlservice.login):
// from the service-account key file KeyFile, else the one
// GOOGLE_APPLICATION_CREDENTIALS names, else the metadata server of the
// instance the agent runs on.
type GCPAuth struct {
	KeyFile string `yaml:"keyFile"`
	// MetadataEndpoint replaces http://metadata.google.internal
	// (GCE_METADATA_HOST does too).
	MetadataEndpoint string `yaml:"metadataEndpoint"`
}

// AzureAuth gets a Microsoft Entra ID (Azure AD) access token for Azure
// Database for PostgreSQL: with TenantID and ClientID by the client
// credentials grant (the secret from the environment variable
// ClientSecretEnv, or the certificate CertificateFile, or the federated
// token file AZURE_FEDERATED_TOKEN_FILE), else from the managed identity
// of the VM (ClientID picks a user-assigned one).
type AzureAuth struct {
	TenantID string `yaml:"tenantID"`
	ClientID string `yaml:"clientID"`
	// ClientSecretEnv names the environment variable holding the client
	// secret (never the secret itself in the config).
	ClientSecretEnv string `yaml:"clientSecretEnv"`
	// CertificateFile is a PEM file with the client certificate and its
	// private key (RSA).
	CertificateFile string `yaml:"certificateFile"`
	// AuthorityHost replaces https://login.microsoftonline.com
	// (AZURE_AUTHORITY_HOST does too): sovereign clouds.
	AuthorityHost string `yaml:"authorityHost"`
	// ManagedIdentity uses the VM's managed identity even when TenantID
	// is set.
	ManagedIdentity bool `yaml:"managedIdentity"`
	// IMDSEndpoint replaces http://169.254.169.254 for managed identity.
	IMDSEndpoint string `yaml:"imdsEndpoint"`
}

// AuthKind is the source's authentication kind, with the older iam:
// aws-rds read as awsRdsIam.
func (s Source) AuthKind() string {
	switch {
	case s.Auth.Kind != "":
		return s.Auth.Kind
	case s.IAM == "aws-rds":
		return AuthAWSRDSIAM
	}
	return AuthPassword
}

// AWSRegion is auth.aws.region, or the older region.
func (s Source) AWSRegion() string {
	if s.Auth.AWS.Region != "" {
		return s.Auth.AWS.Region
	}
	return s.Region
}

// ResolvedPassword is Password, or the value of PasswordEnv.
func (s Source) ResolvedPassword() string {
	if s.Password != "" {
		return s.Password
	}
	if s.PasswordEnv != "" {
		return os.Getenv(s.PasswordEnv)
	}
	return ""
}

// Platform is the control plane the agent connects to (optional): the
// agent dials out to URL over a websocket tunnel (agent/tunnel).
type Platform struct {
	// URL is the platform's address, https://... (plain http only to a
	// loopback address or with Insecure).
	URL string `yaml:"url"`
	// EnrollToken is exchanged once for the agent's credential, which is
	// then kept in stateDir (platform-credential.json, mode 0600); the
	// token is not needed after that.
	EnrollToken string `yaml:"enrollToken"`
	// Name is the agent's name on the platform (default: the host name).
	Name string `yaml:"name"`
	// CAFile, when set, is the only CA trusted for the platform's
	// certificate (default: the system roots).
	CAFile string `yaml:"caFile"`
	// Insecure allows plain http to a non-loopback platform (development
	// only: the tunnel carries the agent's credential and API).
	Insecure bool `yaml:"insecure"`
}

// Defaults.
const (
	DefaultServerHost      = "127.0.0.1"
	DefaultServerPort      = 2345
	DefaultPortFrom        = 6000
	DefaultPortTo          = 6099
	DefaultOSUser          = "postgres"
	DefaultCloneUIDFrom    = 200000
	DefaultCloneUIDTo      = 265535
	DefaultPgBinRoot       = "/usr/lib/postgresql"
	DefaultListenAddresses = "127.0.0.1"
	DefaultDBName          = "postgres"
	DefaultMaxIdleMinutes  = 120
	DefaultLeaseMinutes    = 1440
	DefaultMaxProtection   = 10080
	DefaultStateDir        = "/var/lib/thinlab"
)

// Default returns a configuration with every default filled in and no
// pools.
func Default() *Config {
	c := &Config{}
	c.applyDefaults(nil)
	return c
}

// Load reads and validates the YAML file at path.
func Load(path string) (*Config, error) {
	raw, err := os.ReadFile(path) //nolint:gosec // G304: the operator names the agent's config file (flag or env); reading it is the point
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(raw, path)
}

// Parse decodes and validates YAML. name is used in error messages.
func Parse(raw []byte, name string) (*Config, error) {
	c := &Config{}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: %s", name, explainYAMLError(err))
	}
	// Which keys were present decides some defaults (maxIdleMinutes: 0 is
	// a valid "never").
	var present map[string]bool
	var node yaml.Node
	if err := yaml.Unmarshal(raw, &node); err == nil {
		present = presentKeys(&node)
	}
	c.applyDefaults(present)
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return c, nil
}

func (c *Config) applyDefaults(present map[string]bool) {
	if c.Server.Host == "" {
		c.Server.Host = DefaultServerHost
	}
	if c.Server.Port == 0 {
		c.Server.Port = DefaultServerPort
	}
	p := &c.Provision
	if p.PortPool.From == 0 && p.PortPool.To == 0 {
		p.PortPool = PortPool{From: DefaultPortFrom, To: DefaultPortTo}
	}
	if p.PgBinRoot == "" {
		p.PgBinRoot = DefaultPgBinRoot
	}
	if p.OSUser == "" {
		p.OSUser = DefaultOSUser
	}
	if p.CloneUIDs.From == 0 && p.CloneUIDs.To == 0 {
		p.CloneUIDs = IDRange{From: DefaultCloneUIDFrom, To: DefaultCloneUIDTo}
	}
	if p.ListenAddresses == "" {
		p.ListenAddresses = DefaultListenAddresses
	}
	if p.AccessHost == "" {
		p.AccessHost = accessHostFor(p.ListenAddresses)
	}
	if p.CloneDefaults.DBName == "" {
		p.CloneDefaults.DBName = DefaultDBName
	}
	if !present["cloning.maxIdleMinutes"] {
		c.Cloning.MaxIdleMinutes = DefaultMaxIdleMinutes
	}
	if !present["cloning.protectionLeaseDurationMinutes"] {
		c.Cloning.ProtectionLeaseDurationMinutes = DefaultLeaseMinutes
	}
	if !present["cloning.protectionMaxDurationMinutes"] {
		c.Cloning.ProtectionMaxDurationMinutes = DefaultMaxProtection
	}
	if c.Retrieval.Mode != "" && c.Retrieval.Jobs == 0 {
		c.Retrieval.Jobs = 1
	}
	if c.Retrieval.Mode != "" && c.Retrieval.Pool == "" && len(c.Retrieval.Pools) == 0 && len(c.Pools) > 0 {
		c.Retrieval.Pool = c.Pools[0].Name
	}
	if c.Retrieval.Source.Port == 0 && c.Retrieval.Source.ConnStr == "" && c.Retrieval.Mode != "" {
		c.Retrieval.Source.Port = 5432
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
}

// accessHostFor picks the host clients should use given postgres'
// listen_addresses: its first concrete address, or this host's name when
// it listens everywhere.
func accessHostFor(listen string) string {
	first := strings.TrimSpace(strings.Split(listen, ",")[0])
	if first == "" || first == "*" || first == "0.0.0.0" || first == "::" {
		if h, err := os.Hostname(); err == nil {
			return h
		}
		return "localhost"
	}
	return first
}

// presentKeys lists dotted paths of mapping keys present in the document
// (sequence items are not descended into; only top-level sections matter).
func presentKeys(n *yaml.Node) map[string]bool {
	out := map[string]bool{}
	var walk func(n *yaml.Node, prefix string)
	walk = func(n *yaml.Node, prefix string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, prefix)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				key := n.Content[i].Value
				if prefix != "" {
					key = prefix + "." + key
				}
				out[key] = true
				walk(n.Content[i+1], key)
			}
		}
	}
	walk(n, "")
	return out
}

// typeSections maps Go type names in yaml.v3's messages to config paths.
var typeSections = map[string]string{
	"config.Config":        "top level",
	"config.Server":        "server",
	"config.TLS":           "server.tls",
	"config.Pool":          "pools[]",
	"config.Provision":     "provision",
	"config.PortPool":      "provision.portPool",
	"config.IDRange":       "provision.cloneUIDs",
	"config.CloneDefaults": "provision.cloneDefaults",
	"config.Resources":     "provision.resources",
	"config.Cloning":       "cloning",
	"config.Warm":          "cloning.warm",
	"config.Retrieval":     "retrieval",
	"config.Physical":      "retrieval.physical",
	"config.Source":        "retrieval.source",
	"config.Logical":       "retrieval.logical",
	"config.Preprocess":    "retrieval.preprocess",
	"config.BusyPool":      "retrieval.busyPool",
	"config.Platform":      "platform",
}

var unknownFieldRE = regexp.MustCompile(`^line (\d+): field (\S+) not found in type (\S+)$`)

// explainYAMLError rewrites yaml.v3's messages ("field x not found in type
// config.Server") into the config's own vocabulary.
func explainYAMLError(err error) string {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return err.Error()
	}
	msgs := make([]string, 0, len(te.Errors))
	for _, e := range te.Errors {
		if m := unknownFieldRE.FindStringSubmatch(e); m != nil {
			section := typeSections[m[3]]
			if section == "" {
				section = m[3]
			}
			msgs = append(msgs, fmt.Sprintf("line %s: unknown key %q in %s (check its spelling and indentation)", m[1], m[2], section))
			continue
		}
		msgs = append(msgs, e)
	}
	return strings.Join(msgs, "; ")
}

// ParseSize parses a byte size: a plain number of bytes, or a number with
// a suffix Ki, Mi, Gi, Ti (powers of 1024) or K, M, G, T (powers of 1000).
func ParseSize(s string) (uint64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	mult := uint64(1)
	for _, u := range []struct {
		suffix string
		mult   uint64
	}{{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40}, {"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12}} {
		if before, ok := strings.CutSuffix(s, u.suffix); ok {
			s = before
			mult = u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("bad size")
	}
	return uint64(v * float64(mult)), nil
}

// Duration helpers used by the clone manager.

// Lease is the default protection duration (0 = no expiry).
func (c Cloning) Lease() time.Duration {
	// More minutes than a Duration holds (some 292 years) would wrap
	// around to a negative lease; they mean "practically forever".
	const maxMinutes = uint64(math.MaxInt64 / int64(time.Minute))
	m := min(uint64(c.ProtectionLeaseDurationMinutes), maxMinutes)
	return time.Duration(m) * time.Minute
}
