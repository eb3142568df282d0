package zfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/command"
)

// CreateFilePool creates a zpool named name on a sparse image file of size
// bytes, mounted at mountDir: a whole ZFS pool without a spare disk, for
// tests, benchmarks and the demo. ZFS takes a file as a vdev directly, so
// no loop device is involved. On failure nothing is left behind.
func CreateFilePool(ctx context.Context, r command.Runner, name, image string, size int64, mountDir string) error {
	if err := storage.ValidateName("zpool name", name); err != nil {
		return err
	}
	if !filepath.IsAbs(image) || !filepath.IsAbs(mountDir) {
		return fmt.Errorf("zpool %s: image %q and mount directory %q must be absolute paths", name, image, mountDir)
	}
	if size < 64<<20 {
		return fmt.Errorf("zpool %s: size %d bytes is too small; ZFS needs at least 64 MiB", name, size)
	}
	f, err := os.OpenFile(image, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600) //nolint:gosec // G304: the image path its caller (test, demo) chose; O_EXCL never reuses a file
	if err != nil {
		return fmt.Errorf("zpool %s: image file: %w", name, err)
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(image) // best effort: the error returned is the one that matters
		return fmt.Errorf("zpool %s: image file: %w", name, err)
	}
	if err := os.MkdirAll(mountDir, 0o755); err != nil { //nolint:gosec // 0755: the postgres OS user traverses it to reach PGDATA
		_ = os.Remove(image) // as above
		return fmt.Errorf("zpool %s: mount directory: %w", name, err)
	}
	// cachefile=none: a throwaway pool is never re-imported by the next
	// daemon, so one left behind by a crash cannot block its name later.
	if _, err := r.Run(ctx, "zpool", "create", "-o", "cachefile=none", "-m", mountDir, name, image); err != nil {
		_ = os.Remove(image) // as above
		return fmt.Errorf("zpool %s: %w", name, classify(err))
	}
	// The pool's root directory is reached by the postgres user on the way
	// to PGDATA.
	if err := os.Chmod(mountDir, 0o755); err != nil { //nolint:gosec // 0755: the postgres OS user traverses it to reach PGDATA
		if derr := DestroyPool(context.Background(), r, name); derr != nil {
			return fmt.Errorf("zpool %s: chmod %s: %w (and destroying the pool failed: %v; image %s is left)", name, mountDir, err, derr, image)
		}
		_ = os.Remove(image) // as above
		return fmt.Errorf("zpool %s: chmod %s: %w", name, mountDir, err)
	}
	return nil
}

// DestroyPool destroys a whole zpool, retrying while it is busy (zfs-fuse
// needs a moment after unmounting; the last attempts force the unmount).
// A pool that does not exist is not an error.
func DestroyPool(ctx context.Context, r command.Runner, name string) error {
	if err := storage.ValidateName("zpool name", name); err != nil {
		return err
	}
	var err error
	for i := range 10 {
		if i > 0 {
			select {
			case <-ctx.Done():
				return fmt.Errorf("zpool destroy %s: %w (last error: %v)", name, ctx.Err(), err)
			case <-time.After(time.Duration(i) * 200 * time.Millisecond):
			}
		}
		args := []string{"destroy", name}
		if i >= 3 {
			args = []string{"destroy", "-f", name}
		}
		_, err = r.Run(ctx, "zpool", args...)
		if err == nil {
			return nil
		}
		var ce *command.Error
		if errors.As(err, &ce) && strings.Contains(ce.Stderr, "no such pool") {
			return nil
		}
	}
	return fmt.Errorf("zpool destroy %s: %w", name, err)
}
