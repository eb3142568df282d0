package api_test

import (
	"github.com/jackc/pgx/v5"

	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/api"
	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/logtest"
)

// fakeClones is an in-memory fake of api.Clones. The JSON shapes the API
// answers with depend only on what the engine reports, not on how it made
// the clones, so a fake lets the shape test run as any user, without root,
// a pool or postgres. The real engine behind the same routes is covered by
// TestAPI.
type fakeClones struct {
	pool storage.Pool
	mu   sync.Mutex
	m    map[string]clone.Clone
}

func (f *fakeClones) List() []clone.Clone {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]clone.Clone, 0, len(f.m))
	for _, c := range f.m {
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b clone.Clone) int { return strings.Compare(a.ID, b.ID) })
	return out
}

func (f *fakeClones) Get(id string) (clone.Clone, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.m[id]
	if !ok {
		return clone.Clone{}, fmt.Errorf("%w: %q", clone.ErrNotFound, id)
	}
	return c, nil
}

func (f *fakeClones) Wait(_ context.Context, id string) (clone.Clone, error) { return f.Get(id) }

// Create registers the clone as CREATING, as the engine answers at once.
func (f *fakeClones) Create(_ context.Context, r clone.CreateRequest) (clone.Clone, error) {
	snap := r.SnapshotID
	if snap == "" {
		snap = fakeSnapshots[0].ID
	}
	c := clone.Clone{
		ID: r.ID, Pool: f.pool.Name(), SnapshotID: snap, Status: clone.StatusCreating, StatusMessage: clone.MessageCreating,
		Host: "127.0.0.1", Port: 6001, DBName: r.DBName, Username: r.Username, CreatedAt: time.Now(),
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.m[c.ID]; ok {
		return clone.Clone{}, fmt.Errorf("%w: %q", clone.ErrExists, c.ID)
	}
	f.m[c.ID] = c
	return c, nil
}

func (f *fakeClones) Reset(context.Context, string, clone.ResetRequest) (clone.Clone, error) {
	return clone.Clone{}, fmt.Errorf("%w: the fake engine does not reset", clone.ErrNotReady)
}

func (f *fakeClones) CreateReplicas(context.Context, string, int) ([]clone.Clone, error) {
	return nil, fmt.Errorf("%w: the fake engine makes no replicas", clone.ErrNotReady)
}

func (f *fakeClones) Destroy(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.m[id]; !ok {
		return fmt.Errorf("%w: %q", clone.ErrNotFound, id)
	}
	delete(f.m, id)
	return nil
}

func (f *fakeClones) SetLabels(id string, set map[string]string) (clone.Clone, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.m[id]
	if !ok {
		return clone.Clone{}, fmt.Errorf("%w: %q", clone.ErrNotFound, id)
	}
	c.Labels = set
	f.m[id] = c
	return c, nil
}

func (f *fakeClones) UpdateProtection(id string, protected bool, _ *uint) (clone.Clone, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.m[id]
	if !ok {
		return clone.Clone{}, fmt.Errorf("%w: %q", clone.ErrNotFound, id)
	}
	c.Protected = protected
	f.m[id] = c
	return c, nil
}

func (f *fakeClones) ExpectedCloningTime() time.Duration { return 2 * time.Second }

func (f *fakeClones) InspectClone(context.Context, string, string, func(context.Context, *pgx.Conn) error) error {
	return fmt.Errorf("%w: the fake engine runs no postgres", clone.ErrNotReady)
}

func (f *fakeClones) InspectSnapshot(context.Context, string, string, func(context.Context, *pgx.Conn) error) error {
	return fmt.Errorf("%w: the fake engine runs no postgres", clone.ErrNotReady)
}

func (f *fakeClones) SnapshotClone(context.Context, string, storage.SnapshotOptions) (storage.Snapshot, error) {
	return storage.Snapshot{}, fmt.Errorf("%w: the fake engine does not snapshot clones", clone.ErrNotReady)
}

func (f *fakeClones) Pool(name string) (storage.Pool, bool) {
	return f.pool, name == f.pool.Name()
}

// fakeSnapshots are the fake pool's snapshots, newest first (as pools
// list them).
var fakeSnapshots = []storage.Snapshot{
	{ID: "fake@snapshot_20260102000000", Pool: "fake", CreatedAt: time.Date(2026, 1, 2, 0, 0, 5, 0, time.UTC), DataStateAt: time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC), PhysicalSize: 4096, LogicalSize: 1 << 20},
	{ID: "fake@snapshot_20260101000000", Pool: "fake", CreatedAt: time.Date(2026, 1, 1, 0, 0, 5, 0, time.UTC), DataStateAt: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), PhysicalSize: 8192, LogicalSize: 1 << 20},
}

// fakePool is an in-memory pool with fakeSnapshots, for the same reason
// as fakeClones; the methods the shape test does not reach are left to
// the embedded nil interface (a call panics, and the test fails).
type fakePool struct{ storage.Pool }

func (fakePool) Name() string    { return "fake" }
func (fakePool) Mode() string    { return storage.ModeBtrfs }
func (fakePool) MainDir() string { return "/nonexistent/fake-pool" }
func (fakePool) Snapshots(context.Context) ([]storage.Snapshot, error) {
	return slices.Clone(fakeSnapshots), nil
}

func (fakePool) GetSnapshot(_ context.Context, id string) (storage.Snapshot, error) {
	for _, s := range fakeSnapshots {
		if s.ID == id {
			return s, nil
		}
	}
	return storage.Snapshot{}, fmt.Errorf("%w: snapshot %s", storage.ErrNotFound, id)
}

func (fakePool) Clones(context.Context) ([]storage.Clone, error) { return nil, nil }

func (fakePool) Usage(context.Context) (storage.Usage, error) {
	return storage.Usage{Size: 8 << 30, Free: 7 << 30, Used: 1 << 30, DataSize: 1 << 20, CompressRatio: 1}, nil
}

// newFakeEnv serves the real API over fakeClones and fakePool, with one
// clone (id) that is OK on the older snapshot.
func newFakeEnv(t *testing.T, id string) *env {
	t.Helper()
	pool := fakePool{}
	clones := &fakeClones{pool: pool, m: map[string]clone.Clone{
		id: {
			ID: id, Pool: pool.Name(), SnapshotID: fakeSnapshots[1].ID, Status: clone.StatusOK, StatusMessage: clone.MessageOK,
			Host: "127.0.0.1", Port: 6000, DBName: "postgres", Username: "alice",
			CreatedAt: time.Now(), MaxIdleMinutes: 120, CloningTime: time.Second, LogicalSize: 1 << 20,
		},
	}}
	cfg := config.Default()
	cfg.StateDir = t.TempDir()
	cfg.Server.VerificationToken = token
	cfg.Pools = []config.Pool{{Name: pool.Name(), Mode: pool.Mode(), Path: pool.MainDir()}}
	cfg.Cloning.ProtectionLeaseDurationMinutes = 60
	cfg.Cloning.ProtectionMaxDurationMinutes = 120
	e := &env{t: t, ctx: t.Context(), pool: pool, cfg: cfg, log: &logtest.Buffer{}, snaps: []storage.Snapshot{fakeSnapshots[1], fakeSnapshots[0]}}
	e.srv = api.New(api.Options{Config: cfg, Clones: clones, Pools: []storage.Pool{pool}, Logger: e.log.Logger(), Version: "test", InstanceID: "inst1", StartedAt: time.Now(), SweepInterval: -1, MetricsInterval: -1})
	e.http = httptest.NewServer(e.srv.Handler())
	t.Cleanup(func() { e.http.Close(); e.srv.Close() })
	return e
}

// TestDLEShapes compares the field names of every answer with DLE's over
// the fake engine: it needs neither root nor a pool.
func TestDLEShapes(t *testing.T) {
	e := newFakeEnv(t, "shape")
	testDLEShapes(e, "shape")

	// The raw create answer: 201, CREATING, no address checked yet.
	code, body := e.raw("POST", "/clone", token, `{"id":"new","protected":false,"db":{"username":"alice","password":"`+goodPassword+`","db_name":"postgres"},"snapshot":{"id":"`+fakeSnapshots[1].ID+`"}}`)
	if code != http.StatusCreated {
		t.Fatalf("POST /clone: status %d (%s), want 201", code, body)
	}
	m := decodeMap(t, body)
	checkClone(t, m, false)
	if st := m["status"].(map[string]any); st["code"] != "CREATING" || st["message"] != "Clone is being created." {
		t.Fatalf("POST /clone: status %v, want CREATING with DLE's message", st)
	}
}
