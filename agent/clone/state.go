package clone

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// StateFile is the clones' state inside the state directory. It holds the
// SCRAM-SHA-256 verifiers of the clone users' passwords (a reset recreates
// the user with the same credentials), never the passwords, and is written
// 0600 in a 0700 directory.
const StateFile = "clones.json"

// record is one clone as persisted.
type record struct {
	ID            string     `json:"id"`
	Pool          string     `json:"pool"`
	SnapshotID    string     `json:"snapshotId"`
	Branch        string     `json:"branch,omitempty"`
	Status        StatusCode `json:"status"`
	StatusMessage string     `json:"statusMessage"`
	Port          int        `json:"port"`
	Mountpoint    string     `json:"mountpoint,omitempty"`
	DBName        string     `json:"dbName"`
	Username      string     `json:"username"`
	// Verifier is the SCRAM-SHA-256 verifier of the user's password: all
	// a reset needs to give the user the same password again.
	Verifier string `json:"passwordVerifier,omitempty"`
	// Password is only read, from state files written before verifiers
	// (it held the plaintext); restore replaces it with Verifier.
	Password      string    `json:"password,omitempty"`
	Restricted    bool      `json:"restricted"`
	Protected     bool      `json:"protected"`
	ProtectedTill time.Time `json:"protectedTill"`
	// ExpiryWarned: clone.protection_expiring was sent for this
	// protection (persisted: a restart does not send it twice).
	ExpiryWarned bool              `json:"protectionExpiryWarned,omitempty"`
	CreatedAt    time.Time         `json:"createdAt"`
	LastActivity time.Time         `json:"lastActivity"`
	MaxIdle      uint              `json:"maxIdleMinutes"`
	CloningTime  time.Duration     `json:"cloningTime"`
	ExtraConf    map[string]string `json:"extraConf,omitempty"`
	Labels       map[string]string `json:"labels,omitempty"`
	LogicalSize  uint64            `json:"logicalSize"`
	// password is the plaintext, in memory only, while a create (or a
	// restore migrating an old state file) still has it: the readiness
	// check then logs in with it instead of probing the verifier.
	password string
	// Dataset names the clone's dataset (and its runtime directory and
	// cgroup) when it is not ID: a warm clone taken by a create keeps the
	// dataset it was built in under the new clone's id.
	Dataset string `json:"dataset,omitempty"`
	// Hibernated: the clone's postgres is stopped and the agent listens on
	// its port; the first connection starts it again (status stays OK).
	Hibernated bool `json:"hibernated,omitempty"`
	// Warm marks a started clone kept for the next create that fits; it
	// is no user's clone (not listed, no idle deletion, no events).
	Warm bool `json:"warm,omitempty"`
	// UID is the clone's own OS uid (and gid) from provision.cloneUIDs;
	// kept across resets and restarts, freed with the clone.
	UID uint32 `json:"uid,omitempty"`
	// PointInTime is the target the clone was recovered to (kept for a
	// plain reset, which recovers to it again).
	PointInTime *PointInTime `json:"pointInTime,omitempty"`
	// ReadOnly clones run as hot standbys.
	ReadOnly bool `json:"readOnly,omitempty"`
	// HotStandby are settings raised to the values the data's pg_control
	// records (max_connections, ...): a clone of an unpromoted snapshot
	// starts as a hot standby, which refuses lower values than its
	// primary's, and its promotion records them for every later start.
	HotStandby map[string]string `json:"hotStandby,omitempty"`
	// ReplicaOf is the clone a replica streams from; ReplicaBase the
	// snapshot of it the replica was made from (destroyed with the last
	// replica of it); ReplicationPassword the replica's password for its
	// replication role on the parent, written to a passfile outside the
	// data directory at every start (never a -c argument).
	ReplicaOf           string `json:"replicaOf,omitempty"`
	ReplicaParentPort   int    `json:"replicaParentPort,omitempty"`
	ReplicaBase         string `json:"replicaBase,omitempty"`
	ReplicationPassword string `json:"replicationPassword,omitempty"`
	// opStart is when the running create/reset began (not persisted: an
	// interrupted operation restarts its clock).
	opStart time.Time
	// diffSize is refreshed by the background loop.
	diffSize uint64
	// busy marks a restart of the clone's postgres by the background loop;
	// reset and destroy wait for it (ErrNotReady).
	busy bool
}

// dataset is the name of the clone's dataset in its pool.
func (r *record) dataset() string {
	if r.Dataset != "" {
		return r.Dataset
	}
	return r.ID
}

type stateDoc struct {
	Version int       `json:"version"`
	Clones  []*record `json:"clones"`
}

func loadState(dir string) ([]*record, error) {
	raw, err := os.ReadFile(filepath.Join(dir, StateFile)) //nolint:gosec // the configured stateDir
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read clone state: %w", err)
	}
	var doc stateDoc
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("clone state %s is corrupt (%v): move it away to start without clones", filepath.Join(dir, StateFile), err)
	}
	return doc.Clones, nil
}

// writeState replaces the state file atomically: a crash (or kill -9)
// leaves either the old or the new file, never a torn one.
func writeState(dir string, recs []*record) error {
	raw, err := json.MarshalIndent(stateDoc{Version: 1, Clones: recs}, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, StateFile+".tmp-*")
	if err != nil {
		return err
	}
	// After the rename there is nothing left to remove; before it, a
	// leftover temporary file would only be clutter.
	defer func() { _ = os.Remove(tmp.Name()) }()
	if err := writeSynced(tmp, raw); err != nil {
		_ = tmp.Close() // the write error is the one to report
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, StateFile)); err != nil {
		return err
	}
	d, err := os.Open(dir) //nolint:gosec // the configured stateDir
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// writeSynced makes f private to the agent, writes raw and syncs it.
func writeSynced(f *os.File, raw []byte) error {
	if err := f.Chmod(0o600); err != nil {
		return err
	}
	if _, err := f.Write(raw); err != nil {
		return err
	}
	return f.Sync()
}
