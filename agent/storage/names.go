package storage

import (
	"fmt"
	"regexp"
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
	if !nameRE.MatchString(name) || containsDotDot(name) {
		return fmt.Errorf("%w: %s %q: use 1-63 letters, digits, '_', '-', '.' or ':' starting with a letter or digit (no '/', '..' or spaces)", ErrInvalidName, kind, name)
	}
	return nil
}

func containsDotDot(s string) bool {
	for i := 0; i+1 < len(s); i++ {
		if s[i] == '.' && s[i+1] == '.' {
			return true
		}
	}
	return false
}

// SnapshotTimeLayout is the compact dataStateAt layout of snapshot IDs.
const SnapshotTimeLayout = "20060102150405"

// SnapshotID builds the DLE-shaped ID for a snapshot of pool at dataStateAt.
func SnapshotID(pool string, dataStateAt time.Time) string {
	return pool + "@snapshot_" + dataStateAt.UTC().Format(SnapshotTimeLayout)
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
