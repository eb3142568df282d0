package backend

import (
	"context"
	"fmt"
	"strings"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/lvm"
	"github.com/thinlab/thinlab/internal/command"
)

// openLVM opens an LVM thin pool; path is VG/THINPOOL. Clones mount under
// the lvm backend's own mount root (/var/lib/thinlab/lvm/<name>), next to
// main, so clonesDir is refused rather than silently ignored.
func openLVM(ctx context.Context, cfg Config, r command.Runner) (storage.Pool, error) {
	vg, thin, ok := strings.Cut(cfg.Path, "/")
	if !ok || vg == "" || thin == "" || strings.Contains(thin, "/") {
		return nil, fmt.Errorf("pool %s: path %q: for mode lvm give the volume group and thin pool as VG/THINPOOL", cfg.Name, cfg.Path)
	}
	if cfg.ClonesDir != "" {
		return nil, fmt.Errorf("pool %s: clonesDir is not used by mode lvm (clones mount under /var/lib/thinlab/lvm/%s/clones); remove it", cfg.Name, cfg.Name)
	}
	// Without a running udev, device-mapper would wait for it forever.
	return lvm.Open(ctx, lvm.Config{Name: cfg.Name, VG: vg, ThinPool: thin, Owner: cfg.Owner, NoUdev: !lvm.UdevRunning(), Runner: &r, Logger: cfg.Logger})
}
