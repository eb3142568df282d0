package storage

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// SyncFS flushes the filesystem that holds dir (syncfs(2)), so that what
// was written there is on disk before a snapshot takes it. Unlike sync(2)
// it leaves the host's other filesystems alone: on a shared host a global
// sync waits for everyone's writes. A filesystem that cannot syncfs gets
// sync(2).
func SyncFS(dir string) error {
	f, err := os.Open(dir) //nolint:gosec // G304: the caller's pool directory
	if err != nil {
		return fmt.Errorf("syncfs: %w", err)
	}
	defer func() { _ = f.Close() }() // opened read-only to name the filesystem
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		unix.Sync()
	}
	return nil
}
