// Package clone is the clone lifecycle of the agent: create a thin clone of a
// snapshot with its own postgres, port and database user; reset it to
// another snapshot; protect it; destroy it; delete idle clones; and persist
// all of it so that an agent restart (even kill -9) finds every clone again.
// How a clone's postgres process runs lives in agent/runtime; datasets come
// from agent/storage through its Pool interface.
package clone

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// StatusCode is a clone's state, with DLE's values.
type StatusCode string

// Clone states.
const (
	StatusOK        StatusCode = "OK"
	StatusCreating  StatusCode = "CREATING"
	StatusResetting StatusCode = "RESETTING"
	StatusDeleting  StatusCode = "DELETING"
	StatusFatal     StatusCode = "FATAL"
)

// DLE's status messages; on FATAL the message is the error text.
const (
	MessageOK        = "Clone is ready to accept Postgres connections."
	MessageCreating  = "Clone is being created."
	MessageResetting = "Clone is being reset."
	MessageDeleting  = "Clone is being deleted."
)

// Clone is what the API shows about one clone. The password is never part
// of it.
type Clone struct {
	ID         string
	Pool       string
	SnapshotID string
	// Branch is the data branch the clone works on (its commits move that
	// branch); "" for clones made before branches existed, which count as
	// the default branch.
	Branch string

	Status        StatusCode
	StatusMessage string

	// Host and Port are where clients connect (the configured access host
	// and the clone's port from the port pool).
	Host       string
	Port       int
	DBName     string
	Username   string
	Restricted bool

	Protected bool
	// ProtectedTill is when protection ends; zero means no expiry.
	ProtectedTill time.Time

	CreatedAt time.Time
	// DeleteAt is when idle cleanup will remove the clone if it stays idle;
	// zero when it does not apply (protected, or idle cleanup disabled).
	DeleteAt time.Time

	MaxIdleMinutes uint
	// CloningTime is the time from the create (or reset) call to the clone
	// being ready.
	CloningTime time.Duration

	// DiffSize is the space written by the clone; LogicalSize the size of
	// the data it sees (its snapshot's logical size).
	DiffSize    uint64
	LogicalSize uint64

	// ExtraConf are the per-clone postgres settings requested at creation.
	ExtraConf map[string]string
	// Labels are the clone's key=value labels.
	Labels map[string]string
	// UID is the clone's own OS uid (its processes run as it); 0 before
	// one is assigned.
	UID uint32

	// PointInTime is the recovery target the clone was made at (nil: the
	// snapshot's own state).
	PointInTime *PointInTime
	// ReadOnly clones run as hot standbys (in recovery, refusing writes).
	ReadOnly bool
	// ReplicaOf is the clone a replica streams from ("" for clones).
	ReplicaOf string
	// Replicas are the ids of this clone's replicas.
	Replicas []string

	// Hibernated: the clone's postgres is stopped until the next
	// connection to its port (Status stays OK).
	Hibernated bool
}

// ConnString is the DLE-style libpq connection string (no password).
func (c Clone) ConnString() string {
	return fmt.Sprintf("host=%s port=%d user=%s dbname=%s", c.Host, c.Port, c.Username, c.DBName)
}

// CreateRequest asks for a new clone.
type CreateRequest struct {
	// ID is optional (an xid is generated when empty) and must match
	// ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$.
	ID string
	// SnapshotID is optional; the latest snapshot of any pool when empty.
	SnapshotID string
	// Branch is recorded with the clone; the caller resolved it to
	// SnapshotID (the branch's head) or checked that SnapshotID is on it.
	Branch string

	Username   string
	Password   string
	Restricted bool
	// DBName is the database reported in the connection string; "postgres"
	// when empty.
	DBName string

	Protected bool
	// ProtectionDurationMinutes limits protection; nil means the configured
	// lease, 0 means no expiry (capped by the configured maximum).
	ProtectionDurationMinutes *uint

	ExtraConf map[string]string
	// Labels are the clone's key=value labels (sdk/labels rules).
	Labels map[string]string

	// PointInTime, when set, makes a point-in-time clone: the newest
	// "pre" snapshot at or before the target, replayed from the pool's WAL
	// archive up to it and promoted. SnapshotID must then be empty.
	PointInTime *PointInTime
	// ReadOnly makes the clone a hot standby: in recovery, refusing writes,
	// following no server.
	ReadOnly bool
}

// ResetRequest asks to reset a clone to SnapshotID, or to the latest
// snapshot when Latest is set or SnapshotID is empty, or to a point in
// time (PointInTime, with SnapshotID empty and Latest unset).
type ResetRequest struct {
	SnapshotID  string
	Latest      bool
	PointInTime *PointInTime
}

// PointInTime is a recovery target: a time or a WAL position (LSN, in
// PostgreSQL's X/Y form), not both.
type PointInTime struct {
	Time time.Time `json:"time,omitzero"`
	LSN  string    `json:"lsn,omitempty"`
}

// Archive is a pool's WAL archive, for point-in-time clones (physical
// retrieval provides it).
type Archive interface {
	// Base checks target against the archive's window and returns the
	// snapshot a recovery to it starts from; outside the window it fails
	// naming the window.
	Base(ctx context.Context, target PointInTime) (snapshotID string, err error)
	// Recover replays the archive in dataDir (a fresh clone of the base,
	// never started) up to target, promotes it and stops it cleanly. No
	// clone user's process takes part: what it runs never reaches the
	// clone's own postgres.
	Recover(ctx context.Context, dataDir string, target PointInTime) error
}

// Sentinel errors; test with errors.Is.
var (
	ErrNotFound  = errors.New("clone not found")
	ErrExists    = errors.New("clone already exists")
	ErrProtected = errors.New("clone is protected")
	ErrNoPorts   = errors.New("no free port in the port pool")
	// ErrNotReady is returned for operations that need a clone in state OK
	// (or FATAL, for destroy and reset) while it is being created, reset or
	// deleted.
	ErrNotReady = errors.New("clone is not ready")
	// ErrSnapshotNotFound is returned (wrapped in a *ValidationError on field
	// snapshot.id, so errors.Is works for both) when the requested snapshot
	// does not exist.
	ErrSnapshotNotFound = errors.New("snapshot not found")
	// ErrNoSnapshots means the latest snapshot was asked for but no pool has
	// one (retrieval has not run yet).
	ErrNoSnapshots = errors.New("no snapshots yet")
	// ErrHasReplicas refuses a reset of a clone with replicas (they would
	// follow a server that no longer exists).
	ErrHasReplicas = errors.New("clone has replicas")
)

// ValidationError is a bad request field. Field uses the API's JSON naming:
// "id", "snapshot.id", "db.username", "db.password", "extra_conf.<key>",
// "protectionDurationMinutes".
type ValidationError struct {
	Field   string
	Message string
	// Err is an optional sentinel this error also matches (for example
	// ErrSnapshotNotFound).
	Err error
}

func (e *ValidationError) Error() string { return e.Field + ": " + e.Message }

// Unwrap lets errors.Is see the sentinel.
func (e *ValidationError) Unwrap() error { return e.Err }
