// Package storage is the copy-on-write pool layer of the agent: one main
// dataset holding a PostgreSQL data directory, read-only snapshots of it with
// metadata, and writable clones of those snapshots. Backends (zfs, lvm,
// btrfs, reflink) live in sub-folders and implement Pool. This package knows
// datasets, not clones' postgres or retrieval; it imports nothing else of
// the agent.
package storage

import (
	"context"
	"errors"
	"io"
	"maps"
	"time"
)

// Modes, as reported in the DLE API's pool "mode" field.
const (
	ModeZFS     = "zfs"
	ModeLVM     = "lvm"
	ModeBtrfs   = "btrfs"
	ModeReflink = "reflink"
)

// DataSubdir is the directory inside every dataset (main or clone) that
// holds PGDATA. Keeping PGDATA one level below the dataset root leaves room
// for filesystem artefacts (lost+found) and sidecar metadata.
const DataSubdir = "pgdata"

// Sentinel errors; backends wrap them with details, callers test with
// errors.Is.
var (
	ErrNotFound      = errors.New("not found")
	ErrExists        = errors.New("already exists")
	ErrHasDependents = errors.New("has dependent clones")
	ErrInvalidName   = errors.New("invalid name")
	ErrNoSpace       = errors.New("no space left in pool")
)

// Owner is the numeric OS user and group that owns the root of main and of
// each clone (the postgres OS user), so that postgres, which refuses to run
// as root, can use the data directory. One type for every backend.
type Owner struct {
	UID, GID int
}

// Snapshot is a read-only point-in-time image of the main dataset.
type Snapshot struct {
	// ID keeps DLE's shape on every backend: <pool>@snapshot_<YYYYMMDDhhmmss>
	// (the suffix is DataStateAt in UTC).
	ID          string
	Pool        string
	CreatedAt   time.Time
	DataStateAt time.Time
	Message     string
	Labels      map[string]string
	// PhysicalSize is the space the snapshot holds exclusively (bytes);
	// LogicalSize the size of the data it references.
	PhysicalSize uint64
	LogicalSize  uint64
	// Clones are the names of clones created from this snapshot.
	Clones []string
}

// Clone is a writable dataset made from a snapshot.
type Clone struct {
	Name       string
	SnapshotID string
	// Mountpoint is the dataset's root, owned by the configured owner;
	// PGDATA is Mountpoint/DataSubdir.
	Mountpoint string
	CreatedAt  time.Time
	// UsedBytes is the space written by this clone (not shared with its
	// snapshot).
	UsedBytes uint64
}

// Usage is the pool's space accounting in bytes.
type Usage struct {
	Size            uint64
	Free            uint64
	Used            uint64
	DataSize        uint64 // referenced by the main dataset
	UsedBySnapshots uint64
	UsedByClones    uint64
	CompressRatio   float64 // 1.0 where the backend does not compress
}

// SnapshotOptions describe a new snapshot. A zero DataStateAt means now.
type SnapshotOptions struct {
	DataStateAt time.Time
	Message     string
	Labels      map[string]string
	// Source, when set, names a clone whose current state is snapshotted
	// instead of the main dataset (a branch commit). The snapshot is an
	// ordinary snapshot of the pool: listed, cloned and destroyed like the
	// others, and independent of the clone (destroying the clone keeps it).
	Source string
}

// LabelSource is the label every snapshot of a clone carries (set by the
// backends from SnapshotOptions.Source): the clone it was taken of. Such
// snapshots belong to branches, not to the pool's line of data refreshes:
// retention and "the latest snapshot" leave them out.
const LabelSource = "thinlab.source"

// WithSourceLabel returns o with LabelSource set when o.Source is.
func (o SnapshotOptions) WithSourceLabel() SnapshotOptions {
	if o.Source == "" {
		return o
	}
	labels := make(map[string]string, len(o.Labels)+1)
	maps.Copy(labels, o.Labels)
	labels[LabelSource] = o.Source
	o.Labels = labels
	return o
}

// OfClone reports whether s was taken of a clone (a branch commit) rather
// than of the main dataset.
func (s Snapshot) OfClone() bool { return s.Labels[LabelSource] != "" }

// AtomicSnapshotter is implemented by every backend: AtomicSnapshots
// reports whether a snapshot of a dataset in use is taken at one instant
// (ZFS, btrfs, LVM thin), so that a running postgres in it is
// crash-consistent and recovers like after a power loss. A pool that
// copies file by file (XFS reflink) answers false: its caller must stop
// the writer first.
type AtomicSnapshotter interface {
	AtomicSnapshots() bool
}

// SnapshotsAreAtomic reports AtomicSnapshots of p, false for a pool that
// does not say.
func SnapshotsAreAtomic(p Pool) bool {
	a, ok := p.(AtomicSnapshotter)
	return ok && a.AtomicSnapshots()
}

// Pool is one copy-on-write pool. Implementations are safe for concurrent
// use and keep all metadata with the data, so that a fresh process can
// rebuild the whole picture from the pool alone.
type Pool interface {
	// Name is the pool's name, the prefix of its snapshot IDs.
	Name() string
	// Mode is one of the Mode* constants.
	Mode() string
	// MainDir is the mountpoint of the main dataset that retrieval fills;
	// PGDATA is MainDir()/DataSubdir.
	MainDir() string

	// Snapshot takes a read-only snapshot of the main dataset. It fails
	// with ErrExists when a snapshot with the same ID exists.
	Snapshot(ctx context.Context, opt SnapshotOptions) (Snapshot, error)
	// Snapshots lists snapshots, newest DataStateAt first.
	Snapshots(ctx context.Context) ([]Snapshot, error)
	// GetSnapshot returns one snapshot or ErrNotFound.
	GetSnapshot(ctx context.Context, id string) (Snapshot, error)
	// DestroySnapshot deletes a snapshot. With clones depending on it, it
	// fails with ErrHasDependents unless force is set, which destroys those
	// clones first.
	DestroySnapshot(ctx context.Context, id string, force bool) error

	// Clone creates a writable clone of a snapshot named name (validated
	// with ValidateName). On failure nothing is left behind.
	Clone(ctx context.Context, snapshotID, name string) (Clone, error)
	// Clones lists clones, oldest first.
	Clones(ctx context.Context) ([]Clone, error)
	// DestroyClone removes a clone and its mountpoint; ErrNotFound if absent.
	DestroyClone(ctx context.Context, name string) error

	// Usage reports space accounting.
	Usage(ctx context.Context) (Usage, error)
}

// CloneSnapshotter is a Pool that can also snapshot one of its clones: the
// new snapshot holds the clone's current data and is listed, cloned and
// destroyed like a snapshot of main, independent of the clone (which may
// be destroyed right after). Physical retrieval needs it: it promotes the
// standby's data in a temporary clone and snapshots that, while main keeps
// replaying, and destroys the temporary clone and the snapshot it was
// made from right after: that snapshot must then be destroyable too (ZFS
// keeps it, out of view, while the new snapshot depends on it). Every
// backend implements it (storagetest.RunConformance checks it).
type CloneSnapshotter interface {
	SnapshotClone(ctx context.Context, clone string, opt SnapshotOptions) (Snapshot, error)
}

// Native snapshot stream formats (Shipper.ShipFormat). A stream of one
// format is received only by a pool of the same format.
const (
	ShipBtrfs = "btrfs-send"
	ShipTar   = "tar"
)

// ShippedSnapshot is what a received snapshot is made of besides its data:
// its name in the pool (snapshot_<ts>, the sender's name, so that an
// incremental stream finds its base by name) and its metadata.
type ShippedSnapshot struct {
	Name        string
	CreatedAt   time.Time
	DataStateAt time.Time
	Message     string
	Labels      map[string]string
	// Base, when set, names the snapshot (snapshot_<ts>) the stream is a
	// difference against; the receiving pool must hold it.
	Base string
}

// Shipper is a Pool that can write one of its snapshots as a stream and
// make a snapshot from such a stream (agent/storage/ship frames it with
// the metadata and a checksum). Optional, like CloneSnapshotter.
type Shipper interface {
	// ShipFormat is one of the Ship* constants.
	ShipFormat() string
	// Incremental reports whether SendSnapshot can send the changes
	// since a base snapshot only.
	Incremental() bool
	// SendSnapshot writes the native stream of snapshot id to w; with
	// baseID (Incremental pools only), the changes since that snapshot.
	SendSnapshot(ctx context.Context, id, baseID string, w io.Writer) error
	// ReceiveSnapshot makes snapshot m from the native stream r under a
	// temporary name. When r is consumed it calls verify (which checks
	// the stream's end and checksum) and publishes the snapshot only if
	// verify and everything else succeeded; on any error nothing of it
	// is left. An existing snapshot of that name is ErrExists.
	ReceiveSnapshot(ctx context.Context, m ShippedSnapshot, r io.Reader, verify func() error) (Snapshot, error)
}
