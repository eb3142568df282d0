package clone

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/agent/runtime"
	"github.com/thinlab/thinlab/agent/storage"
)

// Destroy deletes a clone: status DELETING at once, then gone. A protected
// clone gives ErrProtected; one being created or reset ErrNotReady.
func (m *Manager) Destroy(ctx context.Context, id string) error {
	m.mu.Lock()
	rec, ok := m.clones[id]
	if !ok {
		m.mu.Unlock()
		return fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	if m.protectedNow(rec, m.now()) {
		m.mu.Unlock()
		return fmt.Errorf("%w: %q cannot be destroyed; remove its protection first", ErrProtected, id)
	}
	if transitional(rec.Status) || rec.busy {
		m.mu.Unlock()
		return fmt.Errorf("%w: clone %q is %s", ErrNotReady, id, rec.Status)
	}
	// Replicas go with their clone (first: they stream from it).
	var replicas []*record
	for _, o := range m.clones {
		if o.ReplicaOf == id {
			if transitional(o.Status) || o.busy {
				m.mu.Unlock()
				return fmt.Errorf("%w: replica %q of clone %q is %s", ErrNotReady, o.ID, id, o.Status)
			}
			replicas = append(replicas, o)
		}
	}
	var specs []record
	for _, r := range append(replicas, rec) {
		// A hibernated clone's port is the agent's until now.
		m.unlistenLocked(r.ID)
		r.Hibernated = false
		r.Status = StatusDeleting
		r.StatusMessage = MessageDeleting
		specs = append(specs, *r)
	}
	m.changedLocked()
	m.ops.Add(1)
	m.mu.Unlock()
	_ = m.save() // save logs a failure, and the next change writes the state again
	m.log.Info("destroying clone", "clone", id, "replicas", len(replicas))
	go func() {
		defer m.ops.Done()
		for _, s := range specs {
			m.runDestroy(s)
		}
	}()
	return nil
}

func (m *Manager) runDestroy(spec record) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := m.teardown(ctx, spec.Pool, spec.dataset(), spec.Mountpoint, spec.UID); err != nil {
		m.log.Error("destroy clone failed", "clone", spec.ID, "err", err)
		m.emit(events.CloneFailed, spec, events.Error, "delete failed: "+err.Error())
		m.update(spec.ID, func(r *record) {
			r.Status = StatusFatal
			r.StatusMessage = "delete failed: " + err.Error()
		})
		return
	}
	if spec.ReplicaOf != "" {
		m.dropReplicationRole(ctx, spec)
		m.dropReplicaBase(ctx, spec.Pool, spec.ReplicaBase)
	}
	// Announced before the clone leaves the list: whoever sees it gone
	// has the event already.
	m.emit(events.CloneDestroyed, spec, events.Info, "")
	m.remove(spec.ID)
	m.log.Info("clone destroyed", "clone", spec.ID)
}

// teardown stops postgres in the clone's dataset (and every process of the
// clone's OS user uid), removes its idmapped mount and destroys the dataset
// (if they exist). mount may be empty: the dataset is then found by name.
func (m *Manager) teardown(ctx context.Context, poolName, id, mount string, uid uint32) error {
	pool, ok := m.poolByName[poolName]
	if !ok {
		return fmt.Errorf("pool %q is not configured", poolName)
	}
	exists := false
	if clones, err := pool.Clones(ctx); err == nil {
		for _, c := range clones {
			if c.Name == id {
				exists, mount = true, c.Mountpoint
			}
		}
	} else {
		return fmt.Errorf("list clones of pool %s: %w", poolName, err)
	}
	if mount != "" {
		inst := runtime.Instance{Name: id, DataDir: filepath.Join(mount, storage.DataSubdir), Mount: mount, User: cloneUser(uid)}
		if err := m.rt.Stop(ctx, inst, "immediate"); err != nil {
			m.log.Warn("stopping clone postgres failed; killing it", "clone", id, "err", err)
			m.rt.Kill(inst)
		}
		if err := m.rt.Release(inst); err != nil {
			return fmt.Errorf("release clone %s: %w", id, err)
		}
	}
	if !exists {
		return nil
	}
	var err error
	for attempt := range 5 {
		if err = pool.DestroyClone(ctx, id); err == nil || errors.Is(err, storage.ErrNotFound) {
			return nil
		}
		time.Sleep(time.Duration(attempt+1) * 100 * time.Millisecond)
	}
	return fmt.Errorf("destroy dataset of clone %s: %w", id, err)
}
