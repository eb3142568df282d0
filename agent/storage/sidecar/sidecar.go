// Package sidecar is the metadata of the backends whose datasets are plain
// directories or subvolumes (btrfs, reflink): the filesystem has no user
// properties, so each snapshot and clone has a JSON file next to it, and a
// fresh process rebuilds the pool's picture from the directories and these
// files.
//
// The dataset is the source of truth: a sidecar without its dataset is
// ignored, a dataset without a sidecar gets metadata derived from its name
// and modification time.
package sidecar

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/thinlab/thinlab/agent/storage"
)

// The sidecar files are part of the on-disk format: renaming a field loses
// the metadata of existing pools.

// SnapshotMeta is Path/snapshots/<snapshot>.json.
type SnapshotMeta struct {
	ID          string            `json:"id"`
	CreatedAt   time.Time         `json:"createdAt"`
	DataStateAt time.Time         `json:"dataStateAt"`
	Message     string            `json:"message,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
}

// MaxSize bounds a snapshot's message and labels, like the ZFS backend's
// property limit, so that every backend accepts the same input.
const MaxSize = 4096

// Validate checks the message and labels a caller gave.
func (m SnapshotMeta) Validate() error {
	for k := range m.Labels {
		if k == "" {
			return fmt.Errorf("%w: snapshot labels: a label key is empty; give every label a name", storage.ErrInvalidName)
		}
	}
	raw, _ := json.Marshal(m.Message)
	if len(raw) > MaxSize {
		return fmt.Errorf("%w: snapshot message is %d bytes encoded; keep it under %d", storage.ErrInvalidName, len(raw), MaxSize)
	}
	raw, _ = json.Marshal(m.Labels)
	if len(raw) > MaxSize {
		return fmt.Errorf("%w: snapshot labels are %d bytes as JSON; keep them under %d", storage.ErrInvalidName, len(raw), MaxSize)
	}
	return nil
}

// CloneMeta is ClonesDir/<clone>.json.
type CloneMeta struct {
	Name       string    `json:"name"`
	SnapshotID string    `json:"snapshotId"`
	CreatedAt  time.Time `json:"createdAt"`
}

// Write writes v as JSON to path atomically (temp file, fsync, rename),
// so a reader never sees half a file. A full filesystem is ErrNoSpace.
func Write(path string, v any) error {
	raw, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return writeErr(path, err)
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
		err = os.Chmod(tmp, 0o644) //nolint:gosec // G302: metadata, not a secret; 0644 like the datasets it describes
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp) // best effort: the backends delete leftover temps when they open the pool
		return writeErr(path, err)
	}
	return nil
}

func writeErr(path string, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: write metadata %s: %v", storage.ErrNoSpace, path, err)
	}
	return fmt.Errorf("write metadata %s: %w", path, err)
}

// RemoveTemps deletes the temp files a crash left in dir.
func RemoveTemps(dir string) {
	tmps, _ := filepath.Glob(filepath.Join(dir, "*.json.tmp*"))
	for _, t := range tmps {
		_ = os.Remove(t) // best effort: tried again at the next open, and Read never looks at temps
	}
}

// Read decodes the sidecar at path into v.
func Read(path string, v any) error {
	raw, err := os.ReadFile(path) //nolint:gosec // G304: a sidecar inside the configured pool
	if err != nil {
		return err
	}
	return json.Unmarshal(raw, v)
}
