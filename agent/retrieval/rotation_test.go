package retrieval

import (
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/agent/retrieval/retrievaltest"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/logtest"
)

// newest is the pool holding the newest snapshot (the one new clones use).
func newest(t *testing.T, pools ...storage.Pool) string {
	t.Helper()
	var best storage.Snapshot
	for _, p := range pools {
		snaps, err := p.Snapshots(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if len(snaps) > 0 && snaps[0].DataStateAt.After(best.DataStateAt) {
			best = snaps[0]
		}
	}
	return best.Pool
}

// TestPoolRotation: with retrieval.pools [a, b] real logical refreshes
// rotate: the second fills b while a clone on a's snapshot stays up and
// keeps answering with a's data; the newest snapshot (active pool) moves
// to b. The third finds a (the only idle pool) with a clone and is
// skipped with an alert and a refresh.skipped event naming the pool; with
// busyPool.forceAfterRetries 1 the fourth fills a anyway, and the clone
// still answers.
func TestPoolRotation(t *testing.T) {
	src := retrievaltest.Source(t)
	t.Setenv("THINLAB_TEST_SOURCE_PW", src.Password)
	a, b := clonetest.NewPool(t), clonetest.NewPool(t)
	cfg := config.Default()
	cfg.Pools = []config.Pool{{Name: a.Name(), Mode: a.Mode(), Path: a.MainDir()}, {Name: b.Name(), Mode: b.Mode(), Path: b.MainDir()}}
	cfg.StateDir = t.TempDir()
	cfg.Server.VerificationToken = config.GenerateToken()
	cfg.Retrieval = config.Retrieval{Mode: "logical", Jobs: 2, Databases: []string{"app"},
		Source:   config.Source{Host: "127.0.0.1", Port: src.Port, Username: "postgres", PasswordEnv: "THINLAB_TEST_SOURCE_PW", SSLMode: "disable"},
		Pools:    []string{a.Name(), b.Name()},
		BusyPool: config.BusyPool{ForceAfterRetries: 1}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	bus := events.NewBus()
	var mu sync.Mutex
	var skippedEvents []events.Event
	bus.Subscribe(func(e events.Event) {
		if e.Kind == events.RefreshSkipped {
			mu.Lock()
			skippedEvents = append(skippedEvents, e)
			mu.Unlock()
		}
	})
	r, err := New(Options{Config: cfg, Pools: []storage.Pool{a, b}, Logger: (&logtest.Buffer{}).Logger(), Events: bus})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() }) // nothing runs by then
	ctx := t.Context()

	first, err := r.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if first.Pool != a.Name() || newest(t, a, b) != a.Name() {
		t.Fatalf("first refresh filled %s, want %s", first.Pool, a.Name())
	}
	conn := retrievaltest.StartClone(t, a, first.Snapshot.ID, "app")
	answer := func() string {
		t.Helper()
		var n string
		if err := conn.QueryRow(ctx, "SELECT count(*)::text FROM users").Scan(&n); err != nil {
			t.Fatalf("the clone on the old pool stopped answering: %v", err)
		}
		return n
	}
	if got := answer(); got != "1000" {
		t.Fatalf("clone answers %s", got)
	}
	src.Exec(t, "app", "INSERT INTO users (email) VALUES ('new@example.com')")

	second, err := r.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if second.Pool != b.Name() || newest(t, a, b) != b.Name() {
		t.Fatalf("second refresh filled %s (newest in %s), want %s", second.Pool, newest(t, a, b), b.Name())
	}
	if got := answer(); got != "1000" {
		t.Fatalf("the clone on the old pool answers %s after the refresh, want its own 1000", got)
	}
	if got := retrievaltest.Query(t, b, second.Snapshot.ID, "app", "SELECT count(*)::text FROM users"); got != "1001" {
		t.Fatalf("new snapshot has %s users, want 1001", got)
	}

	if _, err := r.Refresh(ctx); !errors.Is(err, ErrAllPoolsBusy) {
		t.Fatalf("third refresh with a clone on the only idle pool: %v, want ErrAllPoolsBusy", err)
	}
	st := r.Status()
	if al := st.Alerts[AlertRefreshSkipped]; al.Count != 1 || !strings.Contains(al.Message, a.Name()) || !strings.Contains(al.Message, "refreshed anyway at the next attempt") || st.Status != StatusFinished {
		t.Fatalf("status after the skip %+v", st)
	}
	mu.Lock()
	if len(skippedEvents) != 1 || skippedEvents[0].Pool != a.Name() {
		t.Fatalf("refresh.skipped events %+v", skippedEvents)
	}
	mu.Unlock()

	fourth, err := r.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if fourth.Pool != a.Name() || newest(t, a, b) != a.Name() {
		t.Fatalf("forced refresh filled %s, want %s", fourth.Pool, a.Name())
	}
	if got := answer(); got != "1000" {
		t.Fatalf("the clone answers %s after its pool was refreshed, want its own 1000", got)
	}
}
