// Package agentapi is the typed Go client of the Thinlab agent API and the
// JSON types of that API. The wire format is Database Lab Engine's (routes,
// field names, time formats, error body), so this client also talks to a
// DLE engine, and DLE's own clients talk to a Thinlab agent. Thinlab's
// additions are extra fields and routes only.
//
// This package imports nothing of the agent or the platform: it is what
// clients link.
package agentapi

import "time"

// VerificationTokenHeader carries the agent's token on every request
// (except /healthz and /metrics).
const VerificationTokenHeader = "Verification-Token"

// Clone status codes (Clone.Status.Code).
const (
	StatusOK        = "OK"
	StatusCreating  = "CREATING"
	StatusResetting = "RESETTING"
	StatusDeleting  = "DELETING"
	StatusExporting = "EXPORTING"
	StatusFatal     = "FATAL"
)

// Instance status codes (InstanceStatus.Status.Code).
const (
	InstanceOK      = "OK"
	InstanceWarning = "WARNING"
)

// Pool status values (PoolEntry.Status).
const (
	PoolActive     = "active"
	PoolRefreshing = "refreshing"
	PoolEmpty      = "empty"
)

// Retrieval modes and statuses (Retrieving).
const (
	RetrievalModePhysical = "physical"
	RetrievalModeLogical  = "logical"
	RetrievalModeUnknown  = "unknown"

	RetrievalInactive     = "inactive"
	RetrievalPending      = "pending"
	RetrievalFailed       = "failed"
	RetrievalRefreshing   = "refreshing"
	RetrievalRenewed      = "renewed"
	RetrievalSnapshotting = "snapshotting"
	RetrievalFinished     = "finished"
)

// Error codes of the error body. DLE has the first four; CONFLICT (409) is
// Thinlab's, used where DLE answers 400 or 500 for a state conflict.
const (
	CodeBadRequest   = "BAD_REQUEST"
	CodeUnauthorized = "UNAUTHORIZED"
	CodeNotFound     = "NOT_FOUND"
	CodeInternal     = "INTERNAL_ERROR"
	CodeConflict     = "CONFLICT"
)

// Status is a code with a human message (clone and instance status).
type Status struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Clone is one thin clone.
type Clone struct {
	ID            string        `json:"id"`
	Snapshot      *Snapshot     `json:"snapshot"`
	Branch        string        `json:"branch"`
	Revision      int           `json:"revision"`
	Protected     bool          `json:"protected"`
	ProtectedTill *LocalTime    `json:"protectedTill,omitempty"`
	DeleteAt      *LocalTime    `json:"deleteAt"`
	CreatedAt     *LocalTime    `json:"createdAt"`
	Status        Status        `json:"status"`
	DB            Database      `json:"db"`
	Metadata      CloneMetadata `json:"metadata"`

	// Pool is the pool the clone's data lives in (Thinlab addition).
	Pool string `json:"pool,omitempty"`
	// Labels are the clone's key=value labels (Thinlab addition).
	Labels map[string]string `json:"labels,omitempty"`
	// RefreshForcedAt is when the clone's pool will be refreshed although
	// it still has clones (retrieval.busyPool), while such a refresh
	// waits; status.message then says so too (Thinlab addition).
	RefreshForcedAt *LocalTime `json:"refreshForcedAt,omitempty"`

	// PointInTime is the recovery target of a point-in-time clone
	// (Thinlab addition; absent for other clones).
	PointInTime *ClonePointInTime `json:"pointInTime,omitempty"`
	// ReadOnly clones (and replicas) run as hot standbys: in recovery,
	// refusing writes (Thinlab addition).
	ReadOnly bool `json:"readOnly,omitempty"`
	// ReplicaOf is the clone a replica streams from; Replicas the ids of
	// a clone's replicas (Thinlab additions).
	ReplicaOf string   `json:"replicaOf,omitempty"`
	Replicas  []string `json:"replicas,omitempty"`
	// Hibernated tells that the clone's postgres is stopped until the next
	// connection to its port, which starts it (Thinlab addition; the
	// status stays OK, as DLE clients expect).
	Hibernated bool `json:"hibernated,omitempty"`
}

// ClonePointInTime is a recovery target: Time (RFC 3339, fractions
// allowed) or LSN (X/Y).
type ClonePointInTime struct {
	Time string `json:"time,omitempty"`
	LSN  string `json:"lsn,omitempty"`
}

// Database is how to reach a clone. Port is a string, as in DLE; Host, Port
// and ConnStr are set once the clone is OK. Password is always empty.
type Database struct {
	ConnStr   string `json:"connStr"`
	Host      string `json:"host"`
	Port      string `json:"port"`
	Username  string `json:"username"`
	Password  string `json:"password"`
	DBName    string `json:"dbName"`
	OwnerUser string `json:"ownerUser,omitempty"`

	// Restricted tells whether the user is a non-superuser owner (Thinlab
	// addition).
	Restricted bool `json:"restricted,omitempty"`
}

// CloneMetadata are a clone's sizes (bytes) and timings.
type CloneMetadata struct {
	CloneDiffSize uint64 `json:"cloneDiffSize"`
	LogicalSize   uint64 `json:"logicalSize"`
	// CloningTime is seconds from the request to the clone being ready.
	CloningTime                    float64 `json:"cloningTime"`
	MaxIdleMinutes                 uint    `json:"maxIdleMinutes"`
	ProtectionLeaseDurationMinutes uint    `json:"protectionLeaseDurationMinutes,omitempty"`
	ProtectionMaxDurationMinutes   uint    `json:"protectionMaxDurationMinutes,omitempty"`
}

// Snapshot is a read-only point-in-time image clones are made from.
type Snapshot struct {
	ID            string     `json:"id"`
	CreatedAt     *LocalTime `json:"createdAt"`
	DataStateAt   *LocalTime `json:"dataStateAt"`
	PhysicalSize  uint64     `json:"physicalSize"`
	LogicalSize   uint64     `json:"logicalSize"`
	Pool          string     `json:"pool"`
	NumClones     int        `json:"numClones"`
	Clones        []string   `json:"clones"`
	Branch        string     `json:"branch"`
	Message       string     `json:"message"`
	Protected     bool       `json:"protected"`
	ProtectedTill *LocalTime `json:"protectedTill,omitempty"`
	DeleteAt      *LocalTime `json:"deleteAt,omitempty"`
	// Labels are the snapshot's key=value labels (Thinlab addition).
	Labels map[string]string `json:"labels,omitempty"`
}

// PoolSnapshot is the reply of POST /snapshot: the pool's raw snapshot,
// with plain RFC 3339 (nanosecond) times, as DLE sends it.
type PoolSnapshot struct {
	ID                string    `json:"id"`
	CreatedAt         time.Time `json:"createdAt"`
	DataStateAt       time.Time `json:"dataStateAt"`
	Used              uint64    `json:"used"`
	LogicalReferenced uint64    `json:"logicalReferenced"`
	Pool              string    `json:"pool"`
	Branch            string    `json:"branch"`
	Message           string    `json:"message"`
}

// CreateSnapshotRequest is the body of POST /snapshot; an empty pool name
// means the first pool.
type CreateSnapshotRequest struct {
	PoolName string `json:"poolName"`
}

// CreateCloneRequest is the body of POST /clone. Input names are
// snake_case where DLE's are (db_name, extra_conf).
type CreateCloneRequest struct {
	// ID is optional; the server generates one when empty.
	ID        string `json:"id,omitempty"`
	Protected bool   `json:"protected"`
	// ProtectionDurationMinutes: nil means the server's lease, 0 no expiry
	// (capped by the server's maximum).
	ProtectionDurationMinutes *uint               `json:"protectionDurationMinutes,omitempty"`
	DB                        *DatabaseRequest    `json:"db"`
	Snapshot                  *SnapshotCloneField `json:"snapshot,omitempty"`
	Branch                    string              `json:"branch,omitempty"`
	ExtraConf                 map[string]string   `json:"extra_conf,omitempty"`
	// Labels are the clone's key=value labels (Thinlab addition).
	Labels map[string]string `json:"labels,omitempty"`
	// ReadOnly makes the clone a hot standby (Thinlab addition).
	ReadOnly bool `json:"readOnly,omitempty"`
}

// DatabaseRequest is the clone's database user.
type DatabaseRequest struct {
	Username   string `json:"username"`
	Password   string `json:"password"`
	Restricted bool   `json:"restricted"`
	DBName     string `json:"db_name,omitempty"`
}

// SnapshotCloneField names the snapshot of a new clone; nil or an empty ID
// means the latest.
type SnapshotCloneField struct {
	ID string `json:"id"`
	// PointInTime (RFC 3339, fractions allowed) or LSN ("X/Y") makes a
	// point-in-time clone: the newest "pre" snapshot at or before the
	// target, WAL from the pool's archive replayed up to it, promoted.
	// Give ID empty with either (Thinlab additions).
	PointInTime string `json:"pointInTime,omitempty"`
	LSN         string `json:"lsn,omitempty"`
}

// PatchSnapshotRequest changes a snapshot's protection or schedules its
// deletion (PATCH /snapshot/{id}). An omitted duration means no expiry
// (capped by the server's maximum); a zero DeleteAt clears the schedule.
type PatchSnapshotRequest struct {
	Protected                 *bool      `json:"protected,omitempty"`
	ProtectionDurationMinutes *uint      `json:"protectionDurationMinutes,omitempty"`
	DeleteAt                  *LocalTime `json:"deleteAt,omitempty"`
	// Labels, when set, replace the labels (an empty map clears them;
	// Thinlab addition).
	Labels *map[string]string `json:"labels,omitempty"`
}

// PatchCloneRequest changes a clone's protection (PATCH /clone/{id}).
type PatchCloneRequest struct {
	Protected                 bool  `json:"protected"`
	ProtectionDurationMinutes *uint `json:"protectionDurationMinutes,omitempty"`
}

// CloneLabelsRequest replaces a clone's labels (PATCH /clone/{id} with
// labels and no protected: protection stays as it is; Thinlab addition).
type CloneLabelsRequest struct {
	Labels map[string]string `json:"labels"`
}

// ResetCloneRequest resets a clone to SnapshotID, or to the latest
// snapshot when Latest is set; both empty means the same snapshot.
type ResetCloneRequest struct {
	SnapshotID string `json:"snapshotID"`
	Latest     bool   `json:"latest"`
	// PointInTime or LSN resets to a point in time, as in
	// SnapshotCloneField (Thinlab additions; neither with snapshotID or
	// latest).
	PointInTime string `json:"pointInTime,omitempty"`
	LSN         string `json:"lsn,omitempty"`
}

// CreateReplicasRequest is POST /clone/{id}/replicas (Thinlab addition).
type CreateReplicasRequest struct {
	Count int `json:"count"`
}

// Response is DLE's generic success body.
type Response struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

// ErrorBody is the body of every 4xx/5xx answer. Detail and Hint are
// optional (DLE never sends them; Thinlab sends Detail with the bad field).
type ErrorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Detail  string `json:"detail,omitempty"`
	Hint    string `json:"hint,omitempty"`
}

// Health is the reply of /healthz.
type Health struct {
	Version    string `json:"version"`
	Edition    string `json:"edition"`
	InstanceID string `json:"instanceID"`
}

// InstanceStatus is the reply of GET /status.
type InstanceStatus struct {
	Status          *Status          `json:"status"`
	Engine          Engine           `json:"engine"`
	Pools           []PoolEntry      `json:"pools"`
	Cloning         Cloning          `json:"cloning"`
	Retrieving      Retrieving       `json:"retrieving"`
	Provisioner     Provisioner      `json:"provisioner"`
	Synchronization *Synchronization `json:"synchronization"`
}

// Engine describes the agent.
type Engine struct {
	Version                   string     `json:"version"`
	Edition                   string     `json:"edition"`
	BillingActive             bool       `json:"billingActive"`
	InstanceID                string     `json:"instanceID"`
	StartedAt                 *LocalTime `json:"startedAt,omitempty"`
	Telemetry                 *bool      `json:"telemetry,omitempty"`
	DisableConfigModification *bool      `json:"disableConfigModification,omitempty"`
}

// PoolEntry is one pool in GET /status. Mode is zfs or lvm in DLE;
// Thinlab also reports btrfs and reflink.
type PoolEntry struct {
	Name        string     `json:"name"`
	Mode        string     `json:"mode"`
	DataStateAt *LocalTime `json:"dataStateAt"`
	Status      string     `json:"status"`
	CloneList   []string   `json:"cloneList"`
	FileSystem  FileSystem `json:"fileSystem"`
}

// FileSystem is a pool's space accounting in bytes.
type FileSystem struct {
	Mode            string  `json:"mode"`
	Size            uint64  `json:"size"`
	Free            uint64  `json:"free"`
	Used            uint64  `json:"used"`
	DataSize        uint64  `json:"dataSize"`
	UsedBySnapshots uint64  `json:"usedBySnapshots"`
	UsedByClones    uint64  `json:"usedByClones"`
	CompressRatio   float64 `json:"compressRatio"`
}

// Cloning summarizes the clones (newest createdAt first).
type Cloning struct {
	// ExpectedCloningTime is in seconds.
	ExpectedCloningTime            float64 `json:"expectedCloningTime"`
	NumClones                      int     `json:"numClones"`
	Clones                         []Clone `json:"clones"`
	ProtectionLeaseDurationMinutes uint    `json:"protectionLeaseDurationMinutes"`
	ProtectionMaxDurationMinutes   uint    `json:"protectionMaxDurationMinutes"`

	// NumHibernated counts the clones whose postgres sleeps until their
	// next connection; Warm is the pool of started clones kept for
	// creates (Thinlab additions).
	NumHibernated int         `json:"numHibernated,omitempty"`
	Warm          *WarmClones `json:"warm,omitempty"`
}

// WarmClones is the agent's pool of warm clones (Thinlab addition): Target
// is cloning.warm.count, Ready are waiting to be taken, Starting being
// built, of SnapshotID; MemoryBytes is their processes' proportional set
// size, MaxMemoryBytes the bound (0: none); Taken counts creates they
// served since the agent started.
type WarmClones struct {
	Target         int    `json:"target"`
	Ready          int    `json:"ready"`
	Starting       int    `json:"starting"`
	SnapshotID     string `json:"snapshotID,omitempty"`
	MemoryBytes    uint64 `json:"memoryBytes"`
	MaxMemoryBytes uint64 `json:"maxMemoryBytes"`
	Taken          uint64 `json:"taken"`
}

// Retrieving is the data retrieval state (also GET /instance/retrieval).
type Retrieving struct {
	Mode        string           `json:"mode"`
	Status      string           `json:"status"`
	LastRefresh *LocalTime       `json:"lastRefresh"`
	NextRefresh *LocalTime       `json:"nextRefresh"`
	Alerts      map[string]Alert `json:"alerts"`
	Activity    *Activity        `json:"activity"`
	// Job is the running refresh with its progress (a Thinlab extension,
	// left out when none runs).
	Job *RetrievalJob `json:"job,omitempty"`
	// Lag is how far a continuously updated pool (physical standby,
	// logical replication subscription) is behind the source (a Thinlab
	// extension, left out for other modes and until first measured).
	Lag *RetrievalLag `json:"lag,omitempty"`
	// PointInTime is the WAL archive window point-in-time clones can
	// reach (Thinlab extension; physical retrieval only).
	PointInTime *PointInTimeWindow `json:"pointInTime,omitempty"`
}

// Lag kinds (RetrievalLag.Kind).
const (
	LagStandby      = "standby"
	LagSubscription = "subscription"
)

// RetrievalLag is the replay lag of a physical standby or the apply lag
// of a logical replication subscription: 0 seconds and bytes when caught
// up. With SourceReachable false the source could not be asked: Bytes is
// what was received but not applied, Seconds the time since the last
// known position.
type RetrievalLag struct {
	Kind            string     `json:"kind"`
	Seconds         float64    `json:"seconds"`
	Bytes           int64      `json:"bytes"`
	CheckedAt       *LocalTime `json:"checkedAt"`
	SourceReachable bool       `json:"sourceReachable"`
}

// PointInTimeWindow is the span of targets a point-in-time clone accepts:
// from the last commit held by the oldest "pre" snapshot (included) to the
// newest archived commit (excluded: replay stops at the first commit after
// the target, which must be in the archive). Times are RFC 3339 with
// fractional seconds (unlike DLE's LocalTime fields).
type PointInTimeWindow struct {
	Available bool `json:"available"`
	// Reason says why no point-in-time clone can be made now.
	Reason  string `json:"reason,omitempty"`
	Pool    string `json:"pool"`
	From    string `json:"from,omitempty"`
	To      string `json:"to,omitempty"`
	FromLSN string `json:"fromLSN,omitempty"`
	ToLSN   string `json:"toLSN,omitempty"`
	// ToSource is where the end comes from: "archiveDir" (the newest
	// archived segments) or "standby" (the last transaction the standby
	// replayed from the backup tool's archive).
	ToSource string `json:"toSource,omitempty"`
	// Snapshots is the number of "pre" snapshots recoveries start from.
	Snapshots int `json:"snapshots"`
}

// RetrievalJob is a running refresh and its progress. Unit is "bytes",
// "relations" or "steps"; Total is 0 while unknown, and so is ETASeconds.
type RetrievalJob struct {
	Mode          string     `json:"mode"`
	Pool          string     `json:"pool"`
	StartedAt     *LocalTime `json:"startedAt"`
	Phase         string     `json:"phase"`
	Unit          string     `json:"unit"`
	Done          int64      `json:"done"`
	Total         int64      `json:"total"`
	RatePerSecond float64    `json:"ratePerSecond"`
	ETASeconds    float64    `json:"etaSeconds,omitempty"`
}

// Alert is one kind of retrieval problem; the map key is its type
// (refresh_failed -> level error).
type Alert struct {
	Level    string    `json:"level"`
	Message  string    `json:"message"`
	LastSeen time.Time `json:"lastSeen"`
	Count    int       `json:"count"`
}

// Activity are the queries running on the source and the target while a
// refresh runs.
type Activity struct {
	Source []PGActivityEvent `json:"source"`
	Target []PGActivityEvent `json:"target"`
}

// PGActivityEvent is one running query.
type PGActivityEvent struct {
	User          string  `json:"user"`
	Query         string  `json:"query"`
	Duration      float64 `json:"duration"`
	WaitEventType string  `json:"waitEventType"`
	WaitEvent     string  `json:"waitEvent"`
}

// Provisioner describes how clones run. Thinlab runs postgres processes,
// not containers, so DockerImage is empty.
type Provisioner struct {
	DockerImage     string            `json:"dockerImage"`
	ContainerConfig map[string]string `json:"containerConfig"`
}

// Synchronization is the physical-mode replication state.
type Synchronization struct {
	Status            Status `json:"status"`
	StartedAt         string `json:"startedAt,omitempty"`
	LastReplayedLsn   string `json:"lastReplayedLsn"`
	LastReplayedLsnAt string `json:"lastReplayedLsnAt"`
	ReplicationLag    int    `json:"replicationLag"`
	ReplicationUptime int    `json:"replicationUptime"`
}

// BranchView is one branch in GET /branches. DataStateAt is DLE's compact
// YYYYMMDDhhmmss (UTC) of the head snapshot; Parent is the branch whose
// head is this branch's fork point, or "-".
type BranchView struct {
	Name          string     `json:"name"`
	BaseDataset   string     `json:"baseDataset"`
	Parent        string     `json:"parent"`
	DataStateAt   string     `json:"dataStateAt"`
	SnapshotID    string     `json:"snapshotID"`
	Dataset       string     `json:"dataset"`
	NumSnapshots  int        `json:"numSnapshots"`
	Protected     bool       `json:"protected"`
	ProtectedTill *LocalTime `json:"protectedTill,omitempty"`
	DeleteAt      *LocalTime `json:"deleteAt,omitempty"`
	// Labels are the branch's key=value labels (Thinlab addition).
	Labels map[string]string `json:"labels,omitempty"`
}

// SnapshotDetails is one snapshot of the branch graph (GET
// /branch/snapshot/{id}, GET /branch/{name}/log). Parent and Message are
// "-" when unset; empty lists are null, as in DLE.
type SnapshotDetails struct {
	ID            string     `json:"id"`
	Parent        string     `json:"parent"`
	Child         []string   `json:"child"`
	Branch        []string   `json:"branch"`
	Root          []string   `json:"root"`
	DataStateAt   string     `json:"dataStateAt"`
	Message       string     `json:"message"`
	Dataset       string     `json:"dataset"`
	Clones        []string   `json:"clones"`
	Protected     bool       `json:"protected"`
	ProtectedTill *LocalTime `json:"protectedTill,omitempty"`
	DeleteAt      *LocalTime `json:"deleteAt,omitempty"`

	// Author is who committed the snapshot, CreatedAt when, and Pool
	// where it lives (Thinlab additions).
	Author    string     `json:"author,omitempty"`
	CreatedAt *LocalTime `json:"createdAt,omitempty"`
	Pool      string     `json:"pool,omitempty"`
}

// CreateBranchRequest is the body of POST /branch: SnapshotID wins over
// BaseBranch.
type CreateBranchRequest struct {
	BranchName string `json:"branchName"`
	BaseBranch string `json:"baseBranch"`
	SnapshotID string `json:"snapshotID"`
}

// BranchName is the reply of POST /branch.
type BranchName struct {
	Name string `json:"name"`
}

// CloneSnapshotRequest is the body of POST /branch/snapshot (a commit)
// and POST /snapshot/clone.
type CloneSnapshotRequest struct {
	CloneID string `json:"cloneID"`
	Message string `json:"message"`
}

// CommitResponse is the reply of POST /branch/snapshot.
type CommitResponse struct {
	SnapshotID string `json:"snapshotID"`
}

// Table changes in a Diff.
const (
	TableAdded   = "added"
	TableDropped = "dropped"
	TableChanged = "changed"
)

// Diff is what changed between two states of a database (Thinlab
// addition): GET /snapshots/diff and GET /clone/{id}/diff.
type Diff struct {
	// From and To name what was compared (snapshot IDs, or a clone).
	From     string      `json:"from"`
	To       string      `json:"to"`
	Database string      `json:"database"`
	Tables   []TableDiff `json:"tables"`
	// DDL are the statements that turn From's schema into To's.
	DDL []string `json:"ddl"`
}

// TableDiff is one table that differs. Sizes are bytes (table, indexes
// and TOAST); rows are exact counts, null where the table was too big to
// count cheaply (or is partitioned).
type TableDiff struct {
	Schema        string `json:"schema"`
	Table         string `json:"table"`
	Change        string `json:"change"`
	SizeFrom      int64  `json:"sizeFrom"`
	SizeTo        int64  `json:"sizeTo"`
	RowsFrom      *int64 `json:"rowsFrom"`
	RowsTo        *int64 `json:"rowsTo"`
	SchemaChanged bool   `json:"schemaChanged"`
}

// ShipRequest is the body of POST /snapshots/ship (Thinlab): send
// snapshot ID (with Base, only the changes since that snapshot where the
// pool can) to another agent, which imports it, or into the agent's
// configured object storage (shipping.s3). Exactly one of To and S3.
type ShipRequest struct {
	ID   string      `json:"id"`
	Base string      `json:"base,omitempty"`
	To   *ShipTarget `json:"to,omitempty"`
	S3   *S3Object   `json:"s3,omitempty"`
}

// S3Object names a stream in the agent's shipping.s3 bucket (below its
// prefix).
type S3Object struct {
	Key string `json:"key"`
}

// FetchRequest is the body of POST /snapshots/fetch (Thinlab): import the
// stream at S3.Key of shipping.s3 into Pool (empty: the first pool).
type FetchRequest struct {
	S3   S3Object `json:"s3"`
	Pool string   `json:"pool,omitempty"`
}

// ShipTarget is the receiving agent: its API URL, its verification token
// and the pool to import into (empty: its first pool).
type ShipTarget struct {
	URL   string `json:"url"`
	Token string `json:"token"`
	Pool  string `json:"pool,omitempty"`
}

// ShipResult answers POST /snapshots/ship: the snapshot as the receiving
// agent made it (none for S3), the base the stream was against (empty: a
// full stream) and, for S3, the key and the stream's size.
type ShipResult struct {
	Snapshot *Snapshot `json:"snapshot,omitempty"`
	Base     string    `json:"base,omitempty"`
	Key      string    `json:"key,omitempty"`
	Bytes    int64     `json:"bytes,omitempty"`
}
