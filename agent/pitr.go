package agent

import (
	"context"

	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/retrieval/physical"
)

// archive is the clone manager's view of a pool's WAL archive: the pool's
// physical retrieval, when it has an archive (nil otherwise, and before
// retrieval started).
func (a *Agent) archive(pool string) clone.Archive {
	r := a.retrievalRef.Load()
	if r == nil {
		return nil
	}
	pr, ok := r.Physical(pool)
	if !ok {
		return nil
	}
	return PhysicalArchive{R: pr}
}

// PhysicalArchive adapts physical retrieval to clone.Archive.
type PhysicalArchive struct{ R *physical.Retriever }

// Base implements clone.Archive.
func (p PhysicalArchive) Base(ctx context.Context, t clone.PointInTime) (string, error) {
	b, err := p.R.ArchiveWindow(ctx).CheckTarget(physical.Target{Time: t.Time, LSN: t.LSN})
	return b.SnapshotID, err
}

// Recover implements clone.Archive.
func (p PhysicalArchive) Recover(ctx context.Context, dataDir string, t clone.PointInTime) error {
	return p.R.RecoverTo(ctx, dataDir, physical.Target{Time: t.Time, LSN: t.LSN})
}

var _ clone.Archive = PhysicalArchive{}
