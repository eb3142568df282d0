package storage

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
)

// nameRE is what a pool, clone or label-free dataset name may look like:
// it must start with a letter or digit and contain no '/', '..', spaces or
// shell metacharacters, so it is safe in any backend's command line and path.
var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.:-]{0,62}$`)

// snapshotIDRE is DLE's snapshot-ID check restricted to Thinlab's pool shape.
var snapshotIDRE = regexp.MustCompile(`^([a-zA-Z0-9][a-zA-Z0-9_.:-]*)@(snapshot_[0-9]{14}(?:[._][0-9]+)?)$`)

// ValidateName checks a pool or clone name. kind names the field in the
// error ("clone name", "pool name").
func ValidateName(kind, name string) error {
	if name == "" {
		return fmt.Errorf("%w: %s is empty", ErrInvalidName, kind)
	}
	if !nameRE.MatchString(name) || strings.Contains(name, "..") {
		return fmt.Errorf("%w: %s %q: use 1-63 letters, digits, '_', '-', '.' or ':' starting with a letter or digit (no '/', '..' or spaces)", ErrInvalidName, kind, name)
	}
	return nil
}

// SnapshotTimeLayout is the compact dataStateAt layout of snapshot IDs.
const SnapshotTimeLayout = "20060102150405"

// SnapshotID builds the DLE-shaped ID for a snapshot of pool at dataStateAt.
func SnapshotID(pool string, dataStateAt time.Time) string {
	return pool + "@snapshot_" + dataStateAt.UTC().Format(SnapshotTimeLayout)
}

// NewSnapshotID names a new snapshot of pool whose data is as of
// dataStateAt (now when zero). It returns the ID, the snapshot's name (the
// part after '@') and dataStateAt in UTC truncated to the second the ID
// keeps, which is the DataStateAt to record.
func NewSnapshotID(pool string, dataStateAt time.Time) (id, name string, at time.Time, err error) {
	at = dataStateAt
	if at.IsZero() {
		at = time.Now()
	}
	at = at.UTC().Truncate(time.Second)
	id = SnapshotID(pool, at)
	_, name, err = ParseSnapshotID(id)
	if err != nil {
		return "", "", time.Time{}, fmt.Errorf("snapshot dataStateAt %s is out of range (years 1000-9999): %w", at.Format(time.RFC3339), err)
	}
	return id, name, at, nil
}

// SortSnapshots orders newest DataStateAt first (ID as tie-break, so the
// order is stable), the order Pool.Snapshots returns.
func SortSnapshots(s []Snapshot) {
	slices.SortFunc(s, func(a, b Snapshot) int {
		if c := b.DataStateAt.Compare(a.DataStateAt); c != 0 {
			return c
		}
		return strings.Compare(b.ID, a.ID)
	})
}

// ParseSnapshotID splits id into pool and snapshot name (the part after '@'),
// rejecting anything that is not a Thinlab snapshot ID.
func ParseSnapshotID(id string) (pool, name string, err error) {
	m := snapshotIDRE.FindStringSubmatch(id)
	if m == nil {
		return "", "", fmt.Errorf("%w: snapshot id %q: want <pool>@snapshot_<YYYYMMDDhhmmss>", ErrInvalidName, id)
	}
	return m[1], m[2], nil
}
