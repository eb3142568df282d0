package reflink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/ship"
	"github.com/thinlab/thinlab/agent/storage/sidecar"
)

var _ storage.Shipper = (*Pool)(nil)

// ShipFormat implements storage.Shipper: a tar of the snapshot's tree.
func (p *Pool) ShipFormat() string { return storage.ShipTar }

// Incremental implements storage.Shipper: a reflink tree knows no
// difference to another one, every stream is full.
func (p *Pool) Incremental() bool { return false }

// SendSnapshot implements storage.Shipper (baseID is ignored: full).
func (p *Pool) SendSnapshot(ctx context.Context, id, _ string, w io.Writer) error {
	name, err := p.layout.SnapshotName(id)
	if err != nil {
		return err
	}
	dir := filepath.Join(p.snapDir, name)
	if !isDir(dir) {
		return fmt.Errorf("%w: snapshot %s", storage.ErrNotFound, id)
	}
	if err := ship.WriteTree(ctx, dir, w); err != nil {
		return fmt.Errorf("send snapshot %s: %w", id, err)
	}
	return nil
}

// ReceiveSnapshot implements storage.Shipper: the tree is unpacked by
// ship.ReadTree (which refuses entries reaching outside it) into a
// dot-prefixed temporary directory, renamed into place once verified.
// Files are owned by the pool's Owner (the sender's uids mean nothing
// here).
func (p *Pool) ReceiveSnapshot(ctx context.Context, m storage.ShippedSnapshot, r io.Reader, verify func() error) (storage.Snapshot, error) {
	id := p.cfg.Name + "@" + m.Name
	if _, err := p.layout.SnapshotName(id); err != nil {
		return storage.Snapshot{}, err
	}
	meta := sidecar.SnapshotMeta{ID: id, CreatedAt: m.CreatedAt, DataStateAt: m.DataStateAt, Message: m.Message, Labels: m.Labels}
	if err := meta.Validate(); err != nil {
		return storage.Snapshot{}, err
	}
	dst := filepath.Join(p.snapDir, m.Name)

	p.mu.Lock()
	if _, err := os.Lstat(dst); err == nil || p.snapping[m.Name] {
		p.mu.Unlock()
		return storage.Snapshot{}, fmt.Errorf("%w: snapshot %s", storage.ErrExists, id)
	}
	p.snapping[m.Name] = true
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.snapping, m.Name)
		p.mu.Unlock()
	}()

	tmp := filepath.Join(p.snapDir, creatingPrefix+m.Name+"-"+randomSuffix())
	if err := os.Mkdir(tmp, 0o755); err != nil { //nolint:gosec // 0755 like main: Path/snapshots (0700) guards it
		return storage.Snapshot{}, classify(err)
	}
	fail := func(err error) (storage.Snapshot, error) {
		if rerr := os.RemoveAll(tmp); rerr != nil {
			p.log.Error("cleanup of failed receive", "path", tmp, "err", rerr)
		}
		return storage.Snapshot{}, fmt.Errorf("receive snapshot %s: %w", id, err)
	}
	if err := ship.ReadTree(ctx, r, tmp, p.cfg.Owner); err != nil {
		if errors.Is(err, ship.ErrHostileEntry) {
			return fail(err)
		}
		if verr := verify(); verr != nil {
			return fail(verr)
		}
		return fail(classify(err))
	}
	if err := verify(); err != nil {
		return fail(err)
	}
	if err := sidecar.Write(dst+".json", meta); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		_ = os.Remove(dst + ".json") // best effort: a sidecar without its directory is ignored
		return fail(err)
	}
	p.log.Info("snapshot received", "id", id)
	return p.GetSnapshot(ctx, id)
}
