package clone

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	passwordvalidator "github.com/wagslane/go-password-validator"

	"github.com/thinlab/thinlab/agent/runtime"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/sdk/labels"
)

// MinPasswordEntropy is DLE's minimum password strength (bits, as computed
// by go-password-validator).
const MinPasswordEntropy = 60

var cloneIDRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

var dbNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$-]{0,62}$`)

func validateID(id string) error {
	if len(id) > 63 || !cloneIDRE.MatchString(id) || strings.Contains(id, "..") {
		return &ValidationError{Field: "id", Message: fmt.Sprintf("%q is not a valid clone id: use up to 63 letters, digits, '_', '.' or '-', starting with a letter or digit", id)}
	}
	if strings.HasPrefix(id, WarmPrefix) {
		return &ValidationError{Field: "id", Message: fmt.Sprintf("%q starts with %q, which names the agent's warm clones: choose another id", id, WarmPrefix)}
	}
	return nil
}

func validateLabels(set map[string]string) error {
	if err := labels.Validate("labels", set); err != nil {
		return &ValidationError{Field: "labels", Message: strings.TrimPrefix(err.Error(), "labels: ")}
	}
	return nil
}

func validatePassword(pw string) error {
	if pw == "" {
		return &ValidationError{Field: "db.password", Message: "is required: give a password for the clone's database user"}
	}
	if err := passwordvalidator.Validate(pw, MinPasswordEntropy); err != nil {
		return &ValidationError{Field: "db.password", Message: err.Error()}
	}
	return nil
}

// normalizeExtraConf validates the per-clone settings and returns them
// with one pair of surrounding quotes taken off each value: DLE's CLI
// passes --extra-config statement_timeout='1s' on with the quotes, and
// statement_timeout=1s must mean the same.
func normalizeExtraConf(conf map[string]string) (map[string]string, error) {
	out := make(map[string]string, len(conf))
	for _, k := range slices.Sorted(maps.Keys(conf)) {
		v := unquoteSetting(conf[k])
		if err := runtime.ValidateSetting(k, v); err != nil {
			return nil, &ValidationError{Field: "extra_conf." + k, Message: err.Error()}
		}
		out[k] = v
	}
	return out, nil
}

// unquoteSetting takes one pair of matching single or double quotes off
// v (a doubled quote inside a single-quoted value is one quote, as in
// postgresql.conf).
func unquoteSetting(v string) string {
	t := strings.TrimSpace(v)
	if len(t) < 2 {
		return v
	}
	switch q := t[0]; {
	case q == '\'' && t[len(t)-1] == '\'':
		return strings.ReplaceAll(t[1:len(t)-1], "''", "'")
	case q == '"' && t[len(t)-1] == '"':
		return t[1 : len(t)-1]
	}
	return v
}

// resolveSnapshot finds the snapshot (and its pool) for id, or the newest
// snapshot of any pool when id is empty.
func (m *Manager) resolveSnapshot(ctx context.Context, id string) (storage.Snapshot, error) {
	if id == "" {
		var latest storage.Snapshot
		found := false
		for _, p := range m.pools {
			snaps, err := p.Snapshots(ctx)
			if err != nil {
				return storage.Snapshot{}, fmt.Errorf("list snapshots of pool %s: %w", p.Name(), err)
			}
			// Snapshots of clones belong to branches: "the latest" is the
			// newest data refresh.
			for _, s := range snaps {
				if s.OfClone() {
					continue
				}
				if !found || s.DataStateAt.After(latest.DataStateAt) {
					latest, found = s, true
				}
				break
			}
		}
		if !found {
			return storage.Snapshot{}, fmt.Errorf("%w: no pool has a snapshot (run a data refresh first)", ErrNoSnapshots)
		}
		return latest, nil
	}
	poolName, _, err := storage.ParseSnapshotID(id)
	if err != nil {
		return storage.Snapshot{}, &ValidationError{Field: "snapshot.id", Message: fmt.Sprintf("%q is not a snapshot id (want <pool>@snapshot_<YYYYMMDDhhmmss>; list them with GET /snapshots)", id), Err: ErrSnapshotNotFound}
	}
	p, ok := m.poolByName[poolName]
	if !ok {
		return storage.Snapshot{}, &ValidationError{Field: "snapshot.id", Message: fmt.Sprintf("snapshot %q not found: there is no pool %q", id, poolName), Err: ErrSnapshotNotFound}
	}
	s, err := p.GetSnapshot(ctx, id)
	if errors.Is(err, storage.ErrNotFound) {
		return storage.Snapshot{}, &ValidationError{Field: "snapshot.id", Message: fmt.Sprintf("snapshot %q not found (list snapshots with GET /snapshots)", id), Err: ErrSnapshotNotFound}
	}
	if err != nil {
		return storage.Snapshot{}, fmt.Errorf("get snapshot %s: %w", id, err)
	}
	return s, nil
}
