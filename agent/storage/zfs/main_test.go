package zfs_test

import (
	"os"
	"testing"

	"github.com/thinlab/thinlab/agent/storage/zfs/zfstest"
)

// The zfs-fuse daemon (if this host needs one) lives for the whole run.
func TestMain(m *testing.M) { os.Exit(zfstest.Main(m)) }
