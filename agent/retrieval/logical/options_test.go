package logical

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/retrieval/job"
	"github.com/thinlab/thinlab/agent/retrieval/retrievaltest"
	"github.com/thinlab/thinlab/internal/logtest"
)

// TestDirectoryFormatWithFilters: format directory restores two
// databases at once with pg_dump/pg_restore --jobs 2 through a dump
// directory on the pool that is gone before the snapshot; table and schema
// filters and extra options (exclude one table's data) shape what arrives;
// dataStateAt is the dump's start; progress counts the restored tables.
func TestDirectoryFormatWithFilters(t *testing.T) {
	src := retrievaltest.Source(t)
	src.Exec(t, "app",
		"CREATE SCHEMA audit",
		"CREATE TABLE audit.log AS SELECT g AS id FROM generate_series(1, 10) g",
		"CREATE TABLE sessions AS SELECT g AS id FROM generate_series(1, 10) g",
		"CREATE TABLE events AS SELECT g AS id FROM generate_series(1, 20) g")
	p := clonetest.NewPool(t)
	t.Setenv("THINLAB_TEST_SOURCE_PW", src.Password)
	cfg := testConfig(t, config.Source{Host: "127.0.0.1", Port: src.Port, Username: "postgres", PasswordEnv: "THINLAB_TEST_SOURCE_PW"}, []string{"app", "shop"})
	cfg.Logical = config.Logical{
		Format:            config.FormatDirectory,
		ParallelDatabases: 2,
		ExcludeSchemas:    []string{"audit"},
		ExcludeTables:     []string{"public.sessions"},
		DumpOptions:       []string{"--exclude-table-data=public.events"},
		RestoreOptions:    []string{"--no-comments"},
	}
	log := &logtest.Buffer{}
	j, err := New(cfg, log.Logger())
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	started := map[string]int{}
	sawDumpDir := false
	j.onStart = func(name string, _ int) {
		mu.Lock()
		defer mu.Unlock()
		started[name]++
		if _, err := os.Stat(filepath.Join(p.MainDir(), dumpDirName)); err == nil {
			sawDumpDir = true
		}
	}
	tg := target(t, p, log)
	before := time.Now().UTC().Truncate(time.Second)
	out, err := j.Run(t.Context(), tg)
	if err != nil {
		t.Fatal(err)
	}
	if out.DataStateAt.Before(before) || out.DataStateAt.After(time.Now()) || out.Bytes == 0 {
		t.Fatalf("outcome %+v (run started %v)", out, before)
	}
	if started["pg_dump"] != 2 || started["pg_restore"] != 2 || !sawDumpDir {
		t.Fatalf("processes started %v, dump directory seen %v", started, sawDumpDir)
	}
	if _, err := os.Stat(filepath.Join(p.MainDir(), dumpDirName)); !os.IsNotExist(err) {
		t.Fatalf("the dump directory is still there after the run: %v", err)
	}
	if ps := tg.Progress.State(); ps.Unit != job.UnitRelations || ps.Total == 0 || ps.Done != ps.Total {
		t.Fatalf("progress %+v, want every counted table done", ps)
	}
	if !strings.Contains(log.String(), "--jobs=2") {
		t.Fatalf("pg_dump/pg_restore not run with --jobs=2:\n%s", log)
	}
	snap, err := p.Snapshot(t.Context(), snapshotOptions(out))
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []struct{ db, sql, want string }{
		{"app", "SELECT count(*)::text FROM users", "1000"},
		{"app", "SELECT count(*)::text FROM pg_namespace WHERE nspname = 'audit'", "0"},
		{"app", "SELECT count(*)::text FROM pg_tables WHERE tablename = 'sessions'", "0"},
		{"app", "SELECT count(*)::text FROM events", "0"}, // the table, not its data
		{"shop", "SELECT count(*)::text FROM orders", "500"},
	} {
		if got := retrievaltest.Query(t, p, snap.ID, q.db, q.sql); got != q.want {
			t.Errorf("%s: %s = %s, want %s", q.db, q.sql, got, q.want)
		}
	}
}

// TestIncludeTables: only the included table arrives (piped format).
func TestIncludeTables(t *testing.T) {
	src := retrievaltest.Source(t)
	src.Exec(t, "app", "CREATE TABLE other AS SELECT 1 AS x")
	p := clonetest.NewPool(t)
	t.Setenv("THINLAB_TEST_SOURCE_PW", src.Password)
	cfg := testConfig(t, config.Source{Host: "127.0.0.1", Port: src.Port, Username: "postgres", PasswordEnv: "THINLAB_TEST_SOURCE_PW"}, []string{"app"})
	cfg.Logical.IncludeTables = []string{"public.users"}
	j, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, snap, err := fill(t, j, p)
	if err != nil {
		t.Fatal(err)
	}
	if got := retrievaltest.Query(t, p, snap.ID, "app", "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'"); got != "users" {
		t.Fatalf("tables copied: %s, want users only", got)
	}
	if got := retrievaltest.Query(t, p, snap.ID, "app", "SELECT count(*)::text FROM users"); got != "1000" {
		t.Fatalf("users rows %s", got)
	}
}
