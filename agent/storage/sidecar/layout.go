package sidecar

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/thinlab/thinlab/agent/storage"
)

// CleanPaths checks a pool's name, Path and ClonesDir as configured and
// returns both paths cleaned, ClonesDir defaulting to Path/clones. mode
// names the backend in errors; pathHint says what Path should be.
func CleanPaths(mode, pool, path, clonesDir, pathHint string) (string, string, error) {
	if err := storage.ValidateName("pool name", pool); err != nil {
		return "", "", err
	}
	if path == "" {
		return "", "", fmt.Errorf("%s pool %s: path is empty: set it to %s", mode, pool, pathHint)
	}
	if !filepath.IsAbs(path) {
		return "", "", fmt.Errorf("%s pool %s: path %q must be an absolute path", mode, pool, path)
	}
	path = filepath.Clean(path)
	if clonesDir == "" {
		clonesDir = filepath.Join(path, "clones")
	}
	if !filepath.IsAbs(clonesDir) {
		return "", "", fmt.Errorf("%s pool %s: clonesDir %q must be an absolute path", mode, pool, clonesDir)
	}
	return path, filepath.Clean(clonesDir), nil
}

// Layout is where a pool keeps its snapshots and clones, each a directory
// Dir with its sidecar Dir.json.
type Layout struct {
	// Mode names the backend in errors ("btrfs", "reflink"); Pool is the
	// pool's name, the prefix of snapshot IDs.
	Mode string
	Pool string
	// SnapshotsDir is Path/snapshots.
	SnapshotsDir string
	ClonesDir    string
	// IsDataset tells a snapshot or clone (a subvolume, a directory) from
	// anything else found there.
	IsDataset func(path string) bool
	Log       *slog.Logger
}

// SnapshotName maps a Thinlab snapshot ID to the snapshot's directory
// name in SnapshotsDir.
func (l Layout) SnapshotName(id string) (string, error) {
	pool, name, err := storage.ParseSnapshotID(id)
	if err != nil {
		return "", err
	}
	if pool != l.Pool {
		return "", fmt.Errorf("%w: snapshot %s belongs to pool %q, not %q", storage.ErrNotFound, id, pool, l.Pool)
	}
	return name, nil
}

// SnapshotEntry is a snapshot found by Scan.
type SnapshotEntry struct {
	Name string // snapshot_<ts>
	Dir  string
	Meta SnapshotMeta
}

// CloneEntry is a clone found by Scan.
type CloneEntry struct {
	Dir  string
	Meta CloneMeta
}

// Scan reads the pool's snapshots and clones from the filesystem: the
// datasets that exist, with their sidecars' metadata. Dot-prefixed names
// (a backend's temporary names) are skipped.
func (l Layout) Scan() ([]SnapshotEntry, []CloneEntry, error) {
	var snaps []SnapshotEntry
	entries, err := os.ReadDir(l.SnapshotsDir)
	if err != nil {
		return nil, nil, fmt.Errorf("%s pool %s: read snapshots: %w", l.Mode, l.Pool, err)
	}
	for _, e := range entries {
		name := e.Name()
		if strings.Contains(name, ".json") || strings.HasPrefix(name, ".") || !e.IsDir() {
			continue
		}
		id := l.Pool + "@" + name
		if _, _, err := storage.ParseSnapshotID(id); err != nil {
			continue // not ours (made by hand)
		}
		dir := filepath.Join(l.SnapshotsDir, name)
		if !l.IsDataset(dir) {
			continue
		}
		s := SnapshotEntry{Name: name, Dir: dir}
		if err := Read(dir+".json", &s.Meta); err != nil && !errors.Is(err, fs.ErrNotExist) {
			l.Log.Warn("unreadable snapshot metadata", "path", dir+".json", "err", err)
		}
		s.Meta.ID = id
		if s.Meta.DataStateAt.IsZero() {
			s.Meta.DataStateAt = timeFromName(name)
		}
		if s.Meta.CreatedAt.IsZero() {
			s.Meta.CreatedAt = modTime(dir)
		}
		snaps = append(snaps, s)
	}

	var clones []CloneEntry
	entries, err = os.ReadDir(l.ClonesDir)
	if err != nil {
		return nil, nil, fmt.Errorf("%s pool %s: read clones: %w", l.Mode, l.Pool, err)
	}
	for _, e := range entries {
		name := e.Name()
		if strings.Contains(name, ".json") || !e.IsDir() || storage.ValidateName("clone name", name) != nil {
			continue
		}
		dir := filepath.Join(l.ClonesDir, name)
		if !l.IsDataset(dir) {
			continue
		}
		c := CloneEntry{Dir: dir}
		if err := Read(dir+".json", &c.Meta); err != nil {
			// Without its sidecar the clone's snapshot is unknown; it
			// still shows up so that it can be destroyed.
			l.Log.Warn("clone without metadata", "path", dir+".json", "err", err)
		}
		c.Meta.Name = name
		if c.Meta.CreatedAt.IsZero() {
			c.Meta.CreatedAt = modTime(dir)
		}
		clones = append(clones, c)
	}
	return snaps, clones, nil
}

// Snapshots turns scanned entries into storage.Snapshots, newest first,
// with their dependent clones; size gives a snapshot directory's exclusive
// and referenced bytes.
func (l Layout) Snapshots(snaps []SnapshotEntry, clones []CloneEntry, size func(dir string) (exclusive, referenced uint64)) []storage.Snapshot {
	out := make([]storage.Snapshot, 0, len(snaps))
	for _, s := range snaps {
		exclusive, referenced := size(s.Dir)
		out = append(out, storage.Snapshot{
			ID:           s.Meta.ID,
			Pool:         l.Pool,
			CreatedAt:    s.Meta.CreatedAt,
			DataStateAt:  s.Meta.DataStateAt,
			Message:      s.Meta.Message,
			Labels:       s.Meta.Labels,
			PhysicalSize: exclusive,
			LogicalSize:  referenced,
			Clones:       Dependents(clones, s.Meta.ID),
		})
	}
	storage.SortSnapshots(out)
	return out
}

// Dependents names the clones made from snapshot id.
func Dependents(clones []CloneEntry, id string) []string {
	var out []string
	for _, c := range clones {
		if c.Meta.SnapshotID == id {
			out = append(out, c.Meta.Name)
		}
	}
	return out
}

// Clones turns scanned entries into storage.Clones, oldest first; used
// gives the bytes a clone directory wrote.
func Clones(clones []CloneEntry, used func(dir string) uint64) []storage.Clone {
	out := make([]storage.Clone, 0, len(clones))
	for _, c := range clones {
		out = append(out, storage.Clone{
			Name:       c.Meta.Name,
			SnapshotID: c.Meta.SnapshotID,
			Mountpoint: c.Dir,
			CreatedAt:  c.Meta.CreatedAt,
			UsedBytes:  used(c.Dir),
		})
	}
	slices.SortStableFunc(out, func(a, b storage.Clone) int { return a.CreatedAt.Compare(b.CreatedAt) })
	return out
}

// timeFromName reads the dataStateAt encoded in a snapshot name.
func timeFromName(name string) time.Time {
	digits := strings.TrimPrefix(name, "snapshot_")
	t, err := time.Parse(storage.SnapshotTimeLayout, digits[:min(len(digits), 14)])
	if err != nil {
		return time.Time{}
	}
	return t.UTC()
}

func modTime(path string) time.Time {
	st, err := os.Stat(path)
	if err != nil {
		return time.Time{}
	}
	return st.ModTime().UTC()
}
