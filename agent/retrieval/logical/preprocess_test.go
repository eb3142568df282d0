package logical

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/retrieval/preprocess"
	"github.com/thinlab/thinlab/agent/retrieval/retrievaltest"
	"github.com/thinlab/thinlab/internal/logtest"
	"github.com/thinlab/thinlab/internal/pgtest"
)

// writeFiles writes name→content under dir, readable (and, for .sh,
// executable) by everyone, so the unprivileged OS user can run scripts.
func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".sh") {
			mode = 0o755
		}
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	// t.TempDir's parent is private to root: open both for the OS user.
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// waitFor is SQL that records its arrival and waits (bounded) until other
// has arrived: two files doing this for each other only finish when they
// run at the same time. Arrivals are committed rows (not sessions, which
// end when the faster file is done), so neither can miss the other.
func waitFor(self, other string) string {
	return fmt.Sprintf(`SET statement_timeout = '60s';
INSERT INTO arrived (name) VALUES ('%s');
DO $$ BEGIN
  WHILE NOT EXISTS (SELECT FROM arrived WHERE name = '%s') LOOP
    PERFORM pg_sleep(0.05);
  END LOOP;
END $$;
`, self, other)
}

// TestPreprocessMasksBeforeSnapshot: SQL groups run in name order, the
// files of one group in parallel (each waits for the other's session),
// then a script runs as the unprivileged OS user; the snapshot holds the
// masked values and the source is unchanged.
func TestPreprocessMasksBeforeSnapshot(t *testing.T) {
	src := retrievaltest.Source(t)
	p := clonetest.NewPool(t)
	t.Setenv("THINLAB_TEST_SOURCE_PW", src.Password)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"00-first.sql":          "CREATE TABLE steps (step text, at timestamptz DEFAULT clock_timestamp());\nCREATE TABLE arrived (name text);\nINSERT INTO steps (step) VALUES ('top');\n",
		"10-mask/a-users.sql":   waitFor("mask-a", "mask-b") + "UPDATE users SET email = 'user' || id || '@masked.invalid';\nINSERT INTO steps (step) VALUES ('mask-a');\n",
		"10-mask/b-other.sql":   waitFor("mask-b", "mask-a") + "INSERT INTO steps (step) VALUES ('mask-b');\n",
		"20-after/check.sql":    "INSERT INTO steps (step) SELECT 'after:' || count(*) FROM steps;\n",
		"10-mask/notes.txt":     "not SQL: ignored",
		"scripts/record-uid.sh": "#!/bin/sh\nset -e\npsql -X -q -v ON_ERROR_STOP=1 -c \"INSERT INTO steps (step) VALUES ('script uid $(id -u) db $PGDATABASE')\"\n",
	})
	cfg := testConfig(t, config.Source{Host: "127.0.0.1", Port: src.Port, Username: "postgres", PasswordEnv: "THINLAB_TEST_SOURCE_PW"}, []string{"app"})
	cfg.Preprocess = config.Preprocess{SQLDir: dir, DBName: "app", Scripts: []string{filepath.Join(dir, "scripts/record-uid.sh")}}
	log := &logtest.Buffer{}
	j, err := New(cfg, log.Logger())
	if err != nil {
		t.Fatal(err)
	}
	_, snap, err := fill(t, j, p)
	if err != nil {
		t.Fatal(err)
	}
	u := pgtest.OSUser(t)
	want := fmt.Sprintf("top,mask-a|mask-b,after:3,script uid %d db app", u.UID)
	got := retrievaltest.Query(t, p, snap.ID, "app", `SELECT string_agg(CASE WHEN step LIKE 'mask-%' THEN 'mask' ELSE step END, ',' ORDER BY at) FROM steps`)
	if strings.ReplaceAll(want, "mask-a|mask-b", "mask,mask") != got {
		t.Fatalf("steps ran as %q, want %q", got, want)
	}
	if got := retrievaltest.Query(t, p, snap.ID, "app", "SELECT count(*)::text FROM users WHERE email NOT LIKE '%@masked.invalid'"); got != "0" {
		t.Fatalf("%s unmasked emails in the snapshot", got)
	}
	var n int
	conn := src.Connect(t, "app")
	if err := conn.QueryRow(t.Context(), "SELECT count(*) FROM users WHERE email LIKE '%@example.com'").Scan(&n); err != nil || n != 1000 {
		t.Fatalf("source changed: %d original emails (%v)", n, err)
	}
}

// TestPreprocessScriptFails: a failing script fails the run with its
// output; the postgres is stopped and the pool's existing snapshot stays
// intact.
func TestPreprocessScriptFails(t *testing.T) {
	src := retrievaltest.Source(t)
	p := clonetest.NewPool(t)
	t.Setenv("THINLAB_TEST_SOURCE_PW", src.Password)
	old := clonetest.Fill(t, p, "CREATE TABLE old_data AS SELECT 7 AS v")
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"fail.sh": "#!/bin/sh\necho 'masking rule 3 has no column ssn' >&2\nexit 3\n"})
	cfg := testConfig(t, config.Source{Host: "127.0.0.1", Port: src.Port, Username: "postgres", PasswordEnv: "THINLAB_TEST_SOURCE_PW"}, []string{"app"})
	cfg.Preprocess = config.Preprocess{Scripts: []string{filepath.Join(dir, "fail.sh")}}
	log := &logtest.Buffer{}
	j, err := New(cfg, log.Logger())
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = fill(t, j, p)
	var se *preprocess.StepError
	if !errors.As(err, &se) || !strings.Contains(err.Error(), "masking rule 3 has no column ssn") || !strings.Contains(err.Error(), "fail.sh") {
		t.Fatalf("run error %v, want the failing step with its output", err)
	}
	if !strings.Contains(log.String(), "masking rule 3 has no column ssn") {
		t.Fatalf("the step's output is not in the log:\n%s", log)
	}
	if mainRunning(t, p) {
		t.Fatal("the pool's postgres still runs after a failed pre-processing step")
	}
	snaps, err := p.Snapshots(t.Context())
	if err != nil || len(snaps) != 1 || snaps[0].ID != old.ID {
		t.Fatalf("snapshots after the failure %v (%v), want only %s", snaps, err, old.ID)
	}
	if got := retrievaltest.Query(t, p, old.ID, "postgres", "SELECT v::text FROM old_data"); got != "7" {
		t.Fatalf("the previous snapshot changed: %s", got)
	}
}
