package btrfs_test

import (
	"testing"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/storagetest"
)

func TestConformance(t *testing.T) {
	storagetest.RunConformance(t, storage.ModeBtrfs, func(t *testing.T) storage.Pool {
		return storagetest.NewLoopPool(t, storage.ModeBtrfs)
	})
}
