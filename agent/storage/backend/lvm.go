package backend

import (
	"context"
	"fmt"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/command"
)

// openLVM: the LVM thin backend is not part of this build yet.
func openLVM(_ context.Context, cfg Config, _ command.Runner) (storage.Pool, error) {
	return nil, fmt.Errorf("pool %s: mode lvm: the lvm backend is not built in this version of Thinlab; use zfs, btrfs or reflink", cfg.Name)
}
