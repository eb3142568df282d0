package btrfs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/ship"
	"github.com/thinlab/thinlab/agent/storage/sidecar"
	"github.com/thinlab/thinlab/internal/command"
)

// removeAnchor deletes the received subvolume kept for snapshot name, if
// any (DestroySnapshot).
func (p *Pool) removeAnchor(name string) {
	anchor := filepath.Join(p.snapDir, receivedPrefix+name)
	if _, err := os.Lstat(anchor); err == nil {
		p.removeReceiving(anchor)
	}
}

// receivingPrefix names the directory (in Path/snapshots) a stream is
// received into; Scan skips dot-prefixed names and Open removes them.
const receivingPrefix = ".receiving-"

// receivedPrefix names the directory (Path/snapshots/.received-<name>)
// that keeps the received subvolume a snapshot was made of: it carries
// the received UUID by which `btrfs receive` finds the base of the next
// incremental stream. DestroySnapshot removes it with its snapshot.
const receivedPrefix = ".received-"

var _ storage.Shipper = (*Pool)(nil)

// ShipFormat implements storage.Shipper: btrfs send streams.
func (p *Pool) ShipFormat() string { return storage.ShipBtrfs }

// Incremental implements storage.Shipper: `btrfs send -p`.
func (p *Pool) Incremental() bool { return true }

// SendSnapshot implements storage.Shipper with `btrfs send [-p base]`.
func (p *Pool) SendSnapshot(ctx context.Context, id, baseID string, w io.Writer) error {
	name, err := p.layout.SnapshotName(id)
	if err != nil {
		return err
	}
	dir := filepath.Join(p.snapDir, name)
	if !isSubvolume(dir) {
		return fmt.Errorf("%w: snapshot %s", storage.ErrNotFound, id)
	}
	args := []string{"-q", "send"}
	if baseID != "" {
		baseName, err := p.layout.SnapshotName(baseID)
		if err != nil {
			return err
		}
		base := filepath.Join(p.snapDir, baseName)
		if !isSubvolume(base) {
			return fmt.Errorf("%w: base snapshot %s", storage.ErrNotFound, baseID)
		}
		args = append(args, "-p", base)
	}
	args = append(args, dir)
	if _, err := p.cfg.Runner.RunCmd(ctx, command.Cmd{Name: "btrfs", Args: args, Stdout: w}); err != nil {
		return fmt.Errorf("send snapshot %s: %w", id, err)
	}
	return nil
}

// ReceiveSnapshot implements storage.Shipper. `btrfs receive` runs
// chrooted (-C) into a fresh directory of its own, so a hostile stream
// writes nowhere else; the result must be exactly one read-only subvolume
// of the announced name, which is then renamed into Path/snapshots.
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
	if _, err := os.Lstat(dst); err == nil || p.receiving[m.Name] {
		p.mu.Unlock()
		return storage.Snapshot{}, fmt.Errorf("%w: snapshot %s", storage.ErrExists, id)
	}
	if p.receiving == nil {
		p.receiving = map[string]bool{}
	}
	p.receiving[m.Name] = true
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.receiving, m.Name)
		p.mu.Unlock()
	}()

	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	tmp := filepath.Join(p.snapDir, receivingPrefix+m.Name+"-"+hex.EncodeToString(suffix))
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return storage.Snapshot{}, classify(err)
	}
	published := false
	defer func() {
		if !published {
			p.removeReceiving(tmp)
		}
	}()
	if _, err := p.cfg.Runner.RunCmd(ctx, command.Cmd{Name: "btrfs", Args: []string{"-q", "receive", "-C", tmp}, Stdin: r}); err != nil {
		if verr := verify(); verr != nil {
			return storage.Snapshot{}, fmt.Errorf("receive snapshot %s: %w", id, verr)
		}
		return storage.Snapshot{}, fmt.Errorf("receive snapshot %s: %w", id, classify(err))
	}
	if err := verify(); err != nil {
		return storage.Snapshot{}, fmt.Errorf("receive snapshot %s: %w", id, err)
	}
	entries, err := os.ReadDir(tmp)
	if err != nil {
		return storage.Snapshot{}, err
	}
	got := filepath.Join(tmp, m.Name)
	if len(entries) != 1 || entries[0].Name() != m.Name || !isSubvolume(got) {
		return storage.Snapshot{}, fmt.Errorf("receive snapshot %s: the stream did not hold exactly one subvolume named %s", id, m.Name)
	}
	if err := p.checkDataOwner(got); err != nil {
		return storage.Snapshot{}, fmt.Errorf("receive snapshot %s: %w", id, err)
	}
	out, err := p.cfg.Runner.Run(ctx, "btrfs", "property", "get", "-ts", got, "ro")
	if err != nil {
		return storage.Snapshot{}, fmt.Errorf("receive snapshot %s: %w", id, err)
	}
	if strings.TrimSpace(string(out)) != "ro=true" {
		return storage.Snapshot{}, fmt.Errorf("receive snapshot %s: the received subvolume is not read-only (incomplete stream)", id)
	}

	// A read-only subvolume cannot be moved to another directory, and
	// making it writable for the move would drop its received UUID, by
	// which the next incremental stream finds its base. So the received
	// subvolume stays where it is (its directory renamed to the anchor
	// name) and the snapshot is a read-only snapshot of it: one metadata
	// operation, no data copied.
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := os.Lstat(dst); err == nil {
		return storage.Snapshot{}, fmt.Errorf("%w: snapshot %s", storage.ErrExists, id)
	}
	if err := sidecar.Write(dst+".json", meta); err != nil {
		return storage.Snapshot{}, fmt.Errorf("snapshot %s: %w", id, err)
	}
	if err := p.btrfs(ctx, "subvolume", "snapshot", "-r", got, dst); err != nil {
		p.undo(dst)
		return storage.Snapshot{}, fmt.Errorf("publish snapshot %s: %w", id, err)
	}
	published = true
	anchor := filepath.Join(p.snapDir, receivedPrefix+m.Name)
	if err := os.Rename(tmp, anchor); err != nil {
		// Only later incremental streams onto this snapshot need it.
		p.log.Warn("received subvolume not kept: incremental streams based on this snapshot will fail", "path", tmp, "err", err)
		p.removeReceiving(tmp)
	}
	p.log.Info("snapshot received", "id", id, "base", m.Base)
	var snaps []sidecar.SnapshotEntry
	snaps = append(snaps, sidecar.SnapshotEntry{Name: m.Name, Dir: dst, Meta: meta})
	_, clones, err := p.layout.Scan()
	if err != nil {
		return storage.Snapshot{}, err
	}
	list, err := p.snapshots(ctx, snaps, clones)
	if err != nil {
		return storage.Snapshot{}, err
	}
	return list[0], nil
}

// checkDataOwner refuses a received PostgreSQL data directory owned by
// another uid than the pool's owner: btrfs streams keep numeric owners,
// and a clone of it could not start (postgres refuses a data directory
// it does not own), so it is better refused here with the reason.
func (p *Pool) checkDataOwner(dir string) error {
	o := p.cfg.Owner
	if o == nil {
		return nil
	}
	data := filepath.Join(dir, storage.DataSubdir)
	if _, err := os.Lstat(filepath.Join(data, "PG_VERSION")); err != nil {
		return nil // not a data directory: nothing to start
	}
	var st unix.Stat_t
	if err := unix.Lstat(data, &st); err != nil {
		return err
	}
	if int(st.Uid) != o.UID {
		return fmt.Errorf("%w: its data directory belongs to uid %d on the sender, and this pool's owner (provision.osUser) is uid %d: give the postgres OS user the same uid and gid on both hosts", ship.ErrNotShippable, st.Uid, o.UID)
	}
	return nil
}

// removeReceiving deletes a receive directory and whatever subvolumes a
// stream made in it. It runs on a fresh context: the caller's may be what
// failed.
func (p *Pool) removeReceiving(dir string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		sub := filepath.Join(dir, e.Name())
		if isSubvolume(sub) {
			// A half-received subvolume is writable; a complete one is
			// read-only and is deleted all the same.
			if err := p.btrfs(ctx, "subvolume", "delete", sub); err != nil {
				p.log.Error("cleanup of received subvolume", "path", sub, "err", err)
			}
		}
	}
	if err := os.RemoveAll(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		p.log.Error("cleanup of receive directory", "path", dir, "err", err)
	}
}

// removeReceiveLeftovers deletes what receives a crash interrupted left,
// and anchors whose snapshot is gone.
func (p *Pool) removeReceiveLeftovers() {
	entries, err := os.ReadDir(p.snapDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		orphan := strings.HasPrefix(e.Name(), receivedPrefix) && !isSubvolume(filepath.Join(p.snapDir, strings.TrimPrefix(e.Name(), receivedPrefix)))
		if strings.HasPrefix(e.Name(), receivingPrefix) || orphan {
			dir := filepath.Join(p.snapDir, e.Name())
			p.log.Warn("removing leftover of an interrupted snapshot receive", "path", dir)
			p.removeReceiving(dir)
		}
	}
}
