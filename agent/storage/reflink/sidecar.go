package reflink

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/thinlab/thinlab/agent/storage"
)

// The sidecar files are part of the on-disk format: renaming a field loses
// the metadata of existing pools.

// snapshotMeta is Path/snapshots/<snapshot>.json (same format as the btrfs backend).
type snapshotMeta struct {
	ID          string            `json:"id"`
	CreatedAt   time.Time         `json:"createdAt"`
	DataStateAt time.Time         `json:"dataStateAt"`
	Message     string            `json:"message,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
}

// maxSidecar bounds a snapshot's message and labels, like the ZFS
// backend's property limit, so that every backend accepts the same input.
const maxSidecar = 4096

func (m snapshotMeta) validate() error {
	for k := range m.Labels {
		if k == "" {
			return fmt.Errorf("%w: snapshot labels: a label key is empty; give every label a name", storage.ErrInvalidName)
		}
	}
	raw, _ := json.Marshal(m.Message)
	if len(raw) > maxSidecar {
		return fmt.Errorf("%w: snapshot message is %d bytes encoded; keep it under %d", storage.ErrInvalidName, len(raw), maxSidecar)
	}
	raw, _ = json.Marshal(m.Labels)
	if len(raw) > maxSidecar {
		return fmt.Errorf("%w: snapshot labels are %d bytes as JSON; keep them under %d", storage.ErrInvalidName, len(raw), maxSidecar)
	}
	return nil
}

// cloneMeta is ClonesDir/<clone>.json.
type cloneMeta struct {
	Name       string    `json:"name"`
	SnapshotID string    `json:"snapshotId"`
	CreatedAt  time.Time `json:"createdAt"`
}

// writeSidecar writes v as JSON to path atomically (temp file, fsync,
// rename), so a reader never sees half a file.
func writeSidecar(path string, v any) error {
	raw, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return sidecarErr(path, err)
	}
	tmp := f.Name()
	_, err = f.Write(append(raw, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o644)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return sidecarErr(path, err)
	}
	return nil
}

func sidecarErr(path string, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: write metadata %s: %v", storage.ErrNoSpace, path, err)
	}
	return fmt.Errorf("write metadata %s: %w", path, err)
}

func readSidecar(path string, v any) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(raw, v)
}

type snapshotEntry struct {
	name string // snapshot_<ts>
	dir  string
	meta snapshotMeta
}

type cloneEntry struct {
	dir  string
	meta cloneMeta
}

// scan reads the pool's snapshots and clones from the filesystem: the
// subvolumes that exist, with their sidecars' metadata.
func (p *Pool) scan() ([]snapshotEntry, []cloneEntry, error) {
	var snaps []snapshotEntry
	entries, err := os.ReadDir(p.snapDir)
	if err != nil {
		return nil, nil, fmt.Errorf("reflink pool %s: read snapshots: %w", p.cfg.Name, err)
	}
	for _, e := range entries {
		name := e.Name()
		if strings.Contains(name, ".json") || strings.HasPrefix(name, ".") || !e.IsDir() {
			continue
		}
		id := p.cfg.Name + "@" + name
		if _, _, err := storage.ParseSnapshotID(id); err != nil {
			continue // not ours (made by hand)
		}
		dir := filepath.Join(p.snapDir, name)
		if !isDir(dir) {
			continue
		}
		s := snapshotEntry{name: name, dir: dir}
		if err := readSidecar(dir+".json", &s.meta); err != nil && !errors.Is(err, fs.ErrNotExist) {
			p.log.Warn("unreadable snapshot metadata", "path", dir+".json", "err", err)
		}
		s.meta.ID = id
		if s.meta.DataStateAt.IsZero() {
			s.meta.DataStateAt = timeFromName(name)
		}
		if s.meta.CreatedAt.IsZero() {
			s.meta.CreatedAt = modTime(dir)
		}
		snaps = append(snaps, s)
	}

	var clones []cloneEntry
	entries, err = os.ReadDir(p.cfg.ClonesDir)
	if err != nil {
		return nil, nil, fmt.Errorf("reflink pool %s: read clones: %w", p.cfg.Name, err)
	}
	for _, e := range entries {
		name := e.Name()
		if strings.Contains(name, ".json") || !e.IsDir() || storage.ValidateName("clone name", name) != nil {
			continue
		}
		dir := filepath.Join(p.cfg.ClonesDir, name)
		if !isDir(dir) {
			continue
		}
		c := cloneEntry{dir: dir}
		if err := readSidecar(dir+".json", &c.meta); err != nil {
			// Without its sidecar the clone's snapshot is unknown; it
			// still shows up so that it can be destroyed.
			p.log.Warn("clone without metadata", "path", dir+".json", "err", err)
		}
		c.meta.Name = name
		if c.meta.CreatedAt.IsZero() {
			c.meta.CreatedAt = modTime(dir)
		}
		clones = append(clones, c)
	}
	return snaps, clones, nil
}

// snapshots turns scanned entries into storage.Snapshots, newest first,
// with sizes and dependent clones.
func (p *Pool) snapshots(snaps []snapshotEntry, clones []cloneEntry) []storage.Snapshot {
	out := make([]storage.Snapshot, 0, len(snaps))
	for _, s := range snaps {
		u, _ := p.sizes.measure(s.dir) // a snapshot removed meanwhile measures 0
		snap := storage.Snapshot{
			ID:           s.meta.ID,
			Pool:         p.cfg.Name,
			CreatedAt:    s.meta.CreatedAt,
			DataStateAt:  s.meta.DataStateAt,
			Message:      s.meta.Message,
			Labels:       s.meta.Labels,
			PhysicalSize: u.exclusive,
			LogicalSize:  u.referenced,
		}
		for _, c := range clones {
			if c.meta.SnapshotID == snap.ID {
				snap.Clones = append(snap.Clones, c.meta.Name)
			}
		}
		out = append(out, snap)
	}
	sortSnapshots(out)
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

// sortSnapshots orders newest DataStateAt first (ID as tie-break, so the
// order is stable).
func sortSnapshots(s []storage.Snapshot) {
	sort.Slice(s, func(i, j int) bool {
		if !s[i].DataStateAt.Equal(s[j].DataStateAt) {
			return s[i].DataStateAt.After(s[j].DataStateAt)
		}
		return s[i].ID > s[j].ID
	})
}
