package clone

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/agent/storage"
)

// Reset re-creates the clone from another snapshot (or the latest)
// keeping id, port, user and password; it returns at once with status
// RESETTING. A clone in FATAL may be reset too (a retry).
func (m *Manager) Reset(ctx context.Context, id string, r ResetRequest) (Clone, error) {
	snapID := r.SnapshotID
	if r.Latest {
		snapID = ""
	}
	if err := validatePointInTime(r.PointInTime, ""); err != nil {
		return Clone{}, err
	}
	var snap storage.Snapshot
	var err error
	if r.PointInTime != nil {
		if r.SnapshotID != "" || r.Latest {
			return Clone{}, &ValidationError{Field: "snapshot.id", Message: "and a point in time are both set: give pointInTime (or lsn) alone"}
		}
		snap, err = m.resolvePointInTime(ctx, *r.PointInTime, "")
	} else {
		snap, err = m.resolveSnapshot(ctx, snapID)
	}
	if err != nil {
		return Clone{}, err
	}
	m.mu.Lock()
	rec, ok := m.clones[id]
	if !ok {
		m.mu.Unlock()
		return Clone{}, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	if rec.ReplicaOf != "" {
		m.mu.Unlock()
		return Clone{}, &ValidationError{Field: "id", Message: fmt.Sprintf("%q is a replica of clone %q: a replica follows its clone; destroy it and make a new one", id, rec.ReplicaOf)}
	}
	for _, o := range m.clones {
		if o.ReplicaOf == id {
			m.mu.Unlock()
			return Clone{}, fmt.Errorf("%w: clone %q has replica %q, which would follow a server that no longer exists; destroy its replicas first", ErrHasReplicas, id, o.ID)
		}
	}
	if m.closed {
		m.mu.Unlock()
		return Clone{}, errors.New("clone manager is shutting down")
	}
	if (rec.Status != StatusOK && rec.Status != StatusFatal) || rec.busy {
		m.mu.Unlock()
		return Clone{}, fmt.Errorf("%w: clone %q is %s; wait until it is OK", ErrNotReady, id, rec.Status)
	}
	if rec.Port == 0 {
		port, err := m.allocPortLocked()
		if err != nil {
			m.mu.Unlock()
			return Clone{}, err
		}
		rec.Port = port
	}
	if rec.UID == 0 {
		uid, err := m.allocUIDLocked()
		if err != nil {
			m.mu.Unlock()
			return Clone{}, err
		}
		rec.UID = uid
	}
	oldPool := rec.Pool
	m.unlistenLocked(id)
	rec.Hibernated = false
	rec.Status = StatusResetting
	rec.StatusMessage = MessageResetting
	rec.SnapshotID = snap.ID
	rec.Pool = snap.Pool
	rec.LogicalSize = snap.LogicalSize
	rec.PointInTime = r.PointInTime
	rec.opStart = time.Now()
	m.changedLocked()
	spec := *rec
	spec.ExtraConf = maps.Clone(rec.ExtraConf)
	view := m.view(rec)
	m.ops.Add(1)
	m.mu.Unlock()
	_ = m.save() // save logs a failure, and the next change writes the state again
	m.log.Info("resetting clone", "clone", id, "snapshot", snap.ID)
	m.emit(events.CloneReset, spec, events.Info, MessageResetting)
	go func() {
		defer m.ops.Done()
		m.runBuild(spec, oldPool)
	}()
	return view, nil
}
