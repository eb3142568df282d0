package clone

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/storage"
)

// noClonePool is a fake pool that has no clones and fails every Clone.
// It is a fake on purpose: a real pool runs commands, and every exec takes
// syscall.ForkLock, which orders the goroutines for the race detector and
// hides unlocked accesses to the records. With it, restore's rebuilds fail
// at once, without exec and without any lock shared with restore.
type noClonePool struct{ storage.Pool }

var errNoClone = errors.New("this fake pool makes no clones")

func (noClonePool) Name() string    { return "fake" }
func (noClonePool) Mode() string    { return "btrfs" }
func (noClonePool) MainDir() string { return "/nonexistent/fake-pool" }
func (noClonePool) Clones(context.Context) ([]storage.Clone, error) {
	return nil, nil
}

func (noClonePool) Clone(context.Context, string, string) (storage.Clone, error) {
	return storage.Clone{}, errNoClone
}

// TestRestoreAllocatesPortsUnderLock restores a state of several clones
// interrupted in CREATING without a port: restore gives each a port while
// the builds it started before already write the records (a failed build
// gives its port back and saves, which copies every record). Run with
// -race (go test -race -run TestRestoreAllocatesPortsUnderLock
// ./agent/clone/): the race detector fails it when restore changes a
// record or allocates a port without the manager's lock. It needs neither
// root nor a pool.
func TestRestoreAllocatesPortsUnderLock(t *testing.T) {
	const n = 8
	pool := noClonePool{}
	cfg := clonetest.Config(t, pool, n)
	m := &Manager{
		cfg:         cfg,
		log:         slog.New(slog.DiscardHandler),
		now:         time.Now,
		pools:       []storage.Pool{pool},
		poolByName:  map[string]storage.Pool{pool.Name(): pool},
		connectHost: "127.0.0.1",
		clones:      map[string]*record{},
		changed:     make(chan struct{}),
	}
	var recs []*record
	for i := range n {
		recs = append(recs, &record{
			ID: fmt.Sprintf("c%d", i), Pool: pool.Name(), SnapshotID: "fake@snapshot_20260101000000",
			Status: StatusCreating, StatusMessage: MessageCreating, Username: "alice", DBName: "postgres",
			Verifier: "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy", CreatedAt: time.Now(),
		})
	}
	if err := writeState(cfg.StateDir, recs); err != nil {
		t.Fatal(err)
	}
	if err := m.restore(t.Context()); err != nil {
		t.Fatalf("restore: %v", err)
	}
	m.ops.Wait()
	for _, c := range m.List() {
		if c.Status != StatusFatal || c.StatusMessage != "clone snapshot fake@snapshot_20260101000000: "+errNoClone.Error() {
			t.Errorf("clone %s is %s (%s), want FATAL with the fake pool's refusal", c.ID, c.Status, c.StatusMessage)
		}
		if c.Port != 0 {
			t.Errorf("clone %s keeps port %d after its create failed, want 0 (given back)", c.ID, c.Port)
		}
	}
	if got := len(m.List()); got != n {
		t.Errorf("%d clones after restore, want %d", got, n)
	}
}
