package zfs_test

import (
	"testing"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/storagetest"
)

// TestConformance runs the backend-independent storage.Pool checks on
// real zfs-fuse pools (the daemon is held by TestMain).
func TestConformance(t *testing.T) {
	storagetest.RunConformance(t, storage.ModeZFS, func(t *testing.T) storage.Pool {
		return storagetest.NewLoopPool(t, storage.ModeZFS)
	})
}
