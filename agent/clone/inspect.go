package clone

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rs/xid"

	"github.com/thinlab/thinlab/agent/storage"
)

// InspectPrefix starts the IDs of the short-lived clones Inspect makes of
// a snapshot; they show in the clone list while they live.
const InspectPrefix = "thinlab-inspect-"

// InspectClone runs fn on a session in database db of a running clone, as
// the agent's bootstrap superuser over the socket (a session with the
// pinned search_path of pgcluster.Connect).
func (m *Manager) InspectClone(ctx context.Context, id, db string, fn func(context.Context, *pgx.Conn) error) error {
	if !dbNameRE.MatchString(db) {
		return &ValidationError{Field: "db", Message: fmt.Sprintf("%q is not a valid database name", db)}
	}
	if err := m.Awake(ctx, id); err != nil {
		return err
	}
	m.mu.Lock()
	rec, ok := m.clones[id]
	if !ok {
		m.mu.Unlock()
		return fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	if rec.Status != StatusOK {
		m.mu.Unlock()
		return fmt.Errorf("%w: clone %q is %s", ErrNotReady, id, rec.Status)
	}
	dataDir := filepath.Join(rec.Mountpoint, storage.DataSubdir)
	port := rec.Port
	m.mu.Unlock()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := m.socketConnect(dataDir, port)(cctx, db)
	cancel()
	if err != nil {
		return &ValidationError{Field: "db", Message: fmt.Sprintf("cannot connect to database %q of clone %s: %v", db, id, err)}
	}
	defer func() { _ = conn.Close(context.Background()) }() // a failed goodbye loses nothing
	return fn(ctx, conn)
}

// InspectSnapshot makes a short-lived clone of the snapshot (an ordinary
// clone with its own uid, port and isolation, ID InspectPrefix+xid), runs
// fn on database db of it, and destroys it again.
func (m *Manager) InspectSnapshot(ctx context.Context, snapshotID, db string, fn func(context.Context, *pgx.Conn) error) error {
	pw := make([]byte, 24)
	_, _ = rand.Read(pw) // crypto/rand.Read never fails
	cl, err := m.Create(ctx, CreateRequest{
		ID:         InspectPrefix + xid.New().String(),
		SnapshotID: snapshotID,
		Username:   "thinlab_inspect",
		Password:   "Aa1-" + hex.EncodeToString(pw),
	})
	if err != nil {
		return err
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
		defer cancel()
		if _, err := m.Wait(dctx, cl.ID); err != nil && !errors.Is(err, ErrNotFound) {
			m.log.Warn("inspection clone not settled", "clone", cl.ID, "err", err)
		}
		if err := m.Destroy(dctx, cl.ID); err != nil && !errors.Is(err, ErrNotFound) {
			m.log.Error("inspection clone left behind (destroy it by hand)", "clone", cl.ID, "err", err)
			return
		}
		if _, err := m.Wait(dctx, cl.ID); err != nil && !errors.Is(err, ErrNotFound) {
			m.log.Warn("inspection clone not destroyed yet", "clone", cl.ID, "err", err)
		}
	}()
	ready, err := m.Wait(ctx, cl.ID)
	if err != nil {
		return err
	}
	if ready.Status != StatusOK {
		return fmt.Errorf("a clone of snapshot %s to inspect it did not start: %s", snapshotID, ready.StatusMessage)
	}
	return m.InspectClone(ctx, cl.ID, db, fn)
}
