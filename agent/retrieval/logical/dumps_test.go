package logical

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/retrieval/job"
	"github.com/thinlab/thinlab/agent/retrieval/retrievaltest"
	"github.com/thinlab/thinlab/internal/pgcluster"
	"github.com/thinlab/thinlab/internal/pgtest"
)

// TestRestoreDumpsFromDisk: existing dumps in every supported shape are
// restored, each into its database, without a source: custom, directory
// and plain uncompressed, gzip, bzip2 and zstd. The data state is the
// oldest dump's modification time.
func TestRestoreDumpsFromDisk(t *testing.T) {
	src := retrievaltest.Source(t)
	bin, err := pgcluster.NewestBinDir(config.Default().Provision.PgBinRoot)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pgDump := func(args ...string) {
		t.Helper()
		cmd := exec.CommandContext(t.Context(), filepath.Join(bin, "pg_dump"), append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(src.Port), "-U", "postgres"}, args...)...)
		cmd.Env = append(os.Environ(), "PGPASSWORD="+src.Password)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("pg_dump %v: %v: %s", args, err, out)
		}
	}
	sh := func(name string, args ...string) {
		t.Helper()
		if out, err := exec.CommandContext(t.Context(), name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v: %s", name, args, err, out)
		}
	}
	custom := filepath.Join(dir, "app.dump")
	directory := filepath.Join(dir, "shop.dir")
	plain := filepath.Join(dir, "app.sql")
	pgDump("-Fc", "-f", custom, "app")
	pgDump("-Fd", "-j2", "-f", directory, "shop")
	pgDump("-Fp", "--no-owner", "--no-acl", "-f", plain, "app")
	sh("gzip", "-k", plain)
	sh("bzip2", "-k", plain)
	sh("zstd", "-q", "-k", plain)
	// pg_restore reads a directory dump itself, as the OS user; the
	// other dumps the agent reads and streams.
	u := pgtest.OSUser(t)
	if err := u.ChownR(directory); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	if err := os.Chtimes(plain+".bz2", old, old); err != nil {
		t.Fatal(err)
	}

	p := clonetest.NewPool(t)
	cfg := testConfig(t, config.Source{}, nil)
	cfg.Logical.Dumps = []config.Dump{
		{Path: custom, DBName: "app_c"},
		{Path: directory, DBName: "shop_d"},
		{Path: plain, DBName: "p_plain", Format: config.DumpPlain},
		{Path: plain + ".gz", DBName: "p_gz"},
		{Path: plain + ".bz2", DBName: "p_bz2"},
		{Path: plain + ".zst", DBName: "p_zst"},
	}
	j, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	tg := target(t, p, nil)
	out, err := j.Run(t.Context(), tg)
	if err != nil {
		t.Fatal(err)
	}
	if !out.DataStateAt.Equal(old) {
		t.Fatalf("dataStateAt %v, want the oldest dump's time %v", out.DataStateAt, old)
	}
	if ps := tg.Progress.State(); ps.Unit != job.UnitBytes || ps.Total == 0 || ps.Done != ps.Total {
		t.Fatalf("progress %+v, want all bytes of the dumps done", ps)
	}
	snap, err := p.Snapshot(t.Context(), snapshotOptions(out))
	if err != nil {
		t.Fatal(err)
	}
	for db, q := range map[string]string{
		"app_c":   "SELECT count(*)::text FROM users",
		"shop_d":  "SELECT count(*)::text FROM orders",
		"p_plain": "SELECT count(*)::text FROM users",
		"p_gz":    "SELECT count(*)::text FROM users",
		"p_bz2":   "SELECT count(*)::text FROM users",
		"p_zst":   "SELECT count(*)::text FROM users",
	} {
		want := "1000"
		if db == "shop_d" {
			want = "500"
		}
		if got := retrievaltest.Query(t, p, snap.ID, db, q); got != want {
			t.Errorf("%s: %s = %s, want %s", db, q, got, want)
		}
	}

	// A dump that says it is something else is refused with the reason.
	cfg.Logical.Dumps = []config.Dump{{Path: plain + ".gz", DBName: "x", Format: config.DumpCustom}}
	j2, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := j2.Run(t.Context(), target(t, p, nil)); err == nil || !strings.Contains(err.Error(), "looks like a plain dump") {
		t.Fatalf("mislabelled dump: %v", err)
	}
}

// TestRestoreDumpsFromMinIO: a plain gzip dump and a directory-format
// dump stored in a real MinIO bucket are restored: the gzip one streamed
// through the agent, the directory one fetched into the pool's dump
// directory (gone afterwards). Credentials come from the configured
// environment variables.
func TestRestoreDumpsFromMinIO(t *testing.T) {
	src := retrievaltest.Source(t)
	m := retrievaltest.StartMinIO(t)
	bin, err := pgcluster.NewestBinDir(config.Default().Provision.PgBinRoot)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pgDump := func(args ...string) {
		t.Helper()
		cmd := exec.CommandContext(t.Context(), filepath.Join(bin, "pg_dump"), append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(src.Port), "-U", "postgres"}, args...)...)
		cmd.Env = append(os.Environ(), "PGPASSWORD="+src.Password)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("pg_dump %v: %v: %s", args, err, out)
		}
	}
	plain := filepath.Join(dir, "app.sql")
	pgDump("-Fp", "--no-owner", "--no-acl", "-f", plain, "app")
	if out, err := exec.CommandContext(t.Context(), "gzip", plain).CombinedOutput(); err != nil {
		t.Fatalf("gzip: %v: %s", err, out)
	}
	gz, err := os.ReadFile(plain + ".gz")
	if err != nil {
		t.Fatal(err)
	}
	m.Put(t, "dumps", "nightly/app.sql.gz", gz)
	shopDir := filepath.Join(dir, "shop.dir")
	pgDump("-Fd", "-f", shopDir, "shop")
	files, err := os.ReadDir(shopDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(shopDir, f.Name()))
		if err != nil {
			t.Fatal(err)
		}
		m.Put(t, "dumps", "nightly/shop/"+f.Name(), b)
	}

	t.Setenv("THINLAB_TEST_S3_ID", m.Creds.AccessKeyID)
	t.Setenv("THINLAB_TEST_S3_SECRET", m.Creds.SecretAccessKey)
	p := clonetest.NewPool(t)
	cfg := testConfig(t, config.Source{}, nil)
	cfg.Logical.S3 = config.S3{Endpoint: m.Endpoint, AccessKeyIDEnv: "THINLAB_TEST_S3_ID", SecretAccessKeyEnv: "THINLAB_TEST_S3_SECRET"}
	cfg.Logical.Dumps = []config.Dump{
		{Path: "s3://dumps/nightly/app.sql.gz", DBName: "app"},
		{Path: "s3://dumps/nightly/shop/", DBName: "shop"},
	}
	j, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	var dumpDirSeen bool
	j.onStart = func(name string, _ int) {
		if _, err := os.Stat(filepath.Join(p.MainDir(), dumpDirName)); err == nil && name == "pg_restore" {
			dumpDirSeen = true
		}
	}
	_, snap, err := fill(t, j, p)
	if err != nil {
		t.Fatal(err)
	}
	if !dumpDirSeen {
		t.Fatal("the directory dump was not restored from the pool's dump directory")
	}
	if _, err := os.Stat(filepath.Join(p.MainDir(), dumpDirName)); !os.IsNotExist(err) {
		t.Fatalf("the dump directory is still there: %v", err)
	}
	if got := retrievaltest.Query(t, p, snap.ID, "app", "SELECT count(*)::text FROM users"); got != "1000" {
		t.Fatalf("app users %s", got)
	}
	if got := retrievaltest.Query(t, p, snap.ID, "shop", "SELECT count(*)::text FROM orders"); got != "500" {
		t.Fatalf("shop orders %s", got)
	}

	// Wrong credentials: the refresh fails with S3's answer.
	t.Setenv("THINLAB_TEST_S3_SECRET", "wrong")
	if _, _, err := fill(t, j, p); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("wrong S3 secret: %v", err)
	}
}
