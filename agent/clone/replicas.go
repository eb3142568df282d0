package clone

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rs/xid"

	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/agent/storage"
)

// MaxReplicas bounds the replicas of one clone.
const MaxReplicas = 5

// LabelReplicaOf marks the snapshot of a clone that its replicas were made
// from (transient: destroyed with the last of them).
const LabelReplicaOf = "thinlab.replicaOf"

// replicationRole is the role a replica streams from its parent with:
// one per replica, so destroying one revokes only its access.
func replicationRole(replicaID string) string {
	sum := sha256.Sum256([]byte(replicaID))
	return "thinlab_replica_" + hex.EncodeToString(sum[:8])
}

// CreateReplicas makes count hot-standby replicas of clone id, each a
// clone-like postgres on its own port and OS uid that streams from the
// clone (its data starts as a snapshot of the clone's dataset). They log
// in with the clone's user and password, refuse writes, and are destroyed
// with the clone. It returns the replicas, CREATING, at once.
func (m *Manager) CreateReplicas(ctx context.Context, id string, count int) ([]Clone, error) {
	if count < 1 || count > MaxReplicas {
		return nil, &ValidationError{Field: "count", Message: fmt.Sprintf("%d: give 1 to %d replicas", count, MaxReplicas)}
	}
	m.mu.Lock()
	parent, ok := m.clones[id]
	if !ok {
		m.mu.Unlock()
		return nil, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	switch {
	case m.closed:
		m.mu.Unlock()
		return nil, errors.New("clone manager is shutting down")
	case parent.ReplicaOf != "":
		m.mu.Unlock()
		return nil, &ValidationError{Field: "id", Message: fmt.Sprintf("%q is a replica: make replicas of its clone %q", id, parent.ReplicaOf)}
	case parent.ReadOnly:
		m.mu.Unlock()
		return nil, &ValidationError{Field: "id", Message: fmt.Sprintf("%q is a read-only clone (a standby of nothing): replicas stream from a writable clone", id)}
	case parent.Status != StatusOK || parent.busy:
		m.mu.Unlock()
		return nil, fmt.Errorf("%w: clone %q is %s; wait until it is OK", ErrNotReady, id, parent.Status)
	}
	have := 0
	for _, r := range m.clones {
		if r.ReplicaOf == id {
			have++
		}
	}
	if have+count > MaxReplicas {
		m.mu.Unlock()
		return nil, &ValidationError{Field: "count", Message: fmt.Sprintf("clone %q has %d replicas; at most %d", id, have, MaxReplicas)}
	}
	now := m.now()
	var specs []record
	var views []Clone
	for range count {
		rec := &record{
			ID:                id + "-replica-" + xid.New().String()[12:],
			Pool:              parent.Pool,
			Branch:            parent.Branch,
			Status:            StatusCreating,
			StatusMessage:     MessageCreating,
			DBName:            parent.DBName,
			Username:          parent.Username,
			Verifier:          parent.Verifier,
			Restricted:        parent.Restricted,
			CreatedAt:         now,
			LastActivity:      now,
			MaxIdle:           parent.MaxIdle,
			LogicalSize:       parent.LogicalSize,
			ExtraConf:         maps.Clone(parent.ExtraConf),
			HotStandby:        maps.Clone(parent.HotStandby),
			ReplicaOf:         id,
			ReplicaParentPort: parent.Port,
			opStart:           time.Now(),
		}
		pw := make([]byte, 24)
		if _, err := rand.Read(pw); err != nil {
			m.mu.Unlock()
			return nil, err
		}
		rec.ReplicationPassword = base64.RawURLEncoding.EncodeToString(pw)
		var err error
		if rec.Port, err = m.allocPortLocked(); err == nil {
			m.clones[rec.ID] = rec // reserves the port for the next one
			if rec.UID, err = m.allocUIDLocked(); err != nil {
				delete(m.clones, rec.ID)
			}
		}
		if err != nil {
			for _, s := range specs {
				delete(m.clones, s.ID)
			}
			m.mu.Unlock()
			return nil, err
		}
		specs = append(specs, *rec)
		views = append(views, m.view(rec))
	}
	parentSpec := *parent
	m.changedLocked()
	m.ops.Add(1)
	m.mu.Unlock()
	if err := m.save(); err != nil {
		for _, s := range specs {
			m.remove(s.ID)
		}
		m.ops.Done()
		return nil, err
	}
	m.log.Info("creating replicas", "clone", id, "count", count)
	go func() {
		defer m.ops.Done()
		m.buildReplicas(parentSpec, specs)
	}()
	return views, nil
}

// buildReplicas gives each replica its role on the parent, snapshots the
// parent once and builds every replica from that snapshot.
func (m *Manager) buildReplicas(parent record, specs []record) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	base, err := m.replicaBase(ctx, parent, specs)
	if err != nil {
		m.log.Error("replicas failed", "clone", parent.ID, "err", err)
		for _, s := range specs {
			m.emit(events.CloneFailed, s, events.Error, err.Error())
			m.update(s.ID, func(r *record) {
				r.Status, r.StatusMessage, r.Port = StatusFatal, err.Error(), 0
			})
		}
		return
	}
	for _, s := range specs {
		s.SnapshotID = base
		m.update(s.ID, func(r *record) { r.SnapshotID, r.ReplicaBase = base, base })
		s.ReplicaBase = base
		m.emit(events.CloneCreating, s, events.Info, MessageCreating)
		m.runBuild(s, "")
	}
	m.dropReplicaBase(ctx, parent.Pool, base)
}

// replicaBase makes the replicas' roles on the parent and a snapshot of
// the parent's dataset right after a checkpoint (an atomic snapshot of a
// running server is a valid base: the replica replays from that
// checkpoint and then streams).
func (m *Manager) replicaBase(ctx context.Context, parent record, specs []record) (string, error) {
	pool, ok := m.poolByName[parent.Pool]
	if !ok {
		return "", fmt.Errorf("pool %q is not configured", parent.Pool)
	}
	dataDir := filepath.Join(parent.Mountpoint, storage.DataSubdir)
	conn, err := m.socketConnect(dataDir, parent.Port)(ctx, "postgres")
	if err != nil {
		if conn, err = m.socketConnect(dataDir, parent.Port)(ctx, "template1"); err != nil {
			return "", fmt.Errorf("connect to clone %s: %w", parent.ID, err)
		}
	}
	defer func() { _ = conn.Close(context.Background()) }() // a failed goodbye loses nothing
	for _, s := range specs {
		verifier, err := scramVerifier(s.ReplicationPassword)
		if err != nil {
			return "", err
		}
		role := pgx.Identifier{replicationRole(s.ID)}.Sanitize()
		lit := "'" + strings.ReplaceAll(verifier, "'", "''") + "'"
		if _, err := conn.Exec(ctx, "CREATE ROLE "+role+" LOGIN REPLICATION PASSWORD "+lit); err != nil {
			return "", fmt.Errorf("create the replication role of replica %s on clone %s: %w", s.ID, parent.ID, err)
		}
	}
	if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
		return "", fmt.Errorf("checkpoint on clone %s: %w", parent.ID, err)
	}
	// Snapshot ids have second precision: another base of the same second
	// takes an earlier one.
	at := time.Now().UTC()
	for attempt := range 30 {
		snap, err := pool.Snapshot(ctx, storage.SnapshotOptions{
			Source:      parent.ID,
			DataStateAt: at.Add(-time.Duration(attempt) * time.Second),
			Message:     "replica base of clone " + parent.ID,
			Labels:      map[string]string{storage.LabelTransient: "true", LabelReplicaOf: parent.ID},
		})
		if errors.Is(err, storage.ErrExists) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("snapshot clone %s for its replicas: %w", parent.ID, err)
		}
		return snap.ID, nil
	}
	return "", fmt.Errorf("snapshot clone %s for its replicas: no free snapshot id", parent.ID)
}

// prepareReplica readies a replica's fresh dataset before its first
// start: standby.signal (as provision.osUser, the owner on disk, before
// the idmapped mount), and before every start the passfile.
func (m *Manager) prepareReplica(spec record, dataDir string, fresh bool) error {
	if fresh {
		if err := writeStandbySignal(m.osUser.UID, dataDir); err != nil {
			return err
		}
	}
	line := fmt.Sprintf("*:*:*:%s:%s\n", replicationRole(spec.ID), spec.ReplicationPassword)
	_, err := m.rt.WriteRunFile(m.instance(spec, dataDir), filepath.Base(m.replicaPassfile(spec.ID)), line)
	return err
}

// dropReplicaBase destroys a replicas' base snapshot once no replica uses
// it (a refusal while some do is expected).
func (m *Manager) dropReplicaBase(ctx context.Context, poolName, base string) {
	pool, ok := m.poolByName[poolName]
	if !ok || base == "" {
		return
	}
	if err := pool.DestroySnapshot(ctx, base, false); err != nil && !errors.Is(err, storage.ErrHasDependents) && !errors.Is(err, storage.ErrNotFound) {
		m.log.Warn("removing a replica base snapshot failed", "snapshot", base, "err", err)
	}
}

// dropReplicationRole revokes a destroyed replica's access to its parent
// (best effort: the parent may be gone or stopped).
func (m *Manager) dropReplicationRole(ctx context.Context, spec record) {
	m.mu.Lock()
	parent, ok := m.clones[spec.ReplicaOf]
	var p record
	if ok {
		p = *parent
	}
	m.mu.Unlock()
	if !ok || p.Mountpoint == "" || p.Status != StatusOK {
		return
	}
	conn, err := m.socketConnect(filepath.Join(p.Mountpoint, storage.DataSubdir), p.Port)(ctx, "postgres")
	if err != nil {
		return
	}
	defer func() { _ = conn.Close(context.Background()) }() // a failed goodbye loses nothing
	if _, err := conn.Exec(ctx, "DROP ROLE IF EXISTS "+pgx.Identifier{replicationRole(spec.ID)}.Sanitize()); err != nil {
		m.log.Warn("dropping a replica's replication role failed", "replica", spec.ID, "clone", p.ID, "err", err)
	}
}
