package physical

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/internal/pgcluster"
	"github.com/thinlab/thinlab/internal/pgtest"
	"github.com/thinlab/thinlab/internal/testenv"
)

// TestWALG: the first copy by WAL-G backup-fetch and a standby fed by
// wal-fetch, from file storage and from a real MinIO (S3).
func TestWALG(t *testing.T) {
	testenv.NeedsSystem(t, "root, PostgreSQL and the backup tools (run make deps)")
	walg := pinnedTool(t, "wal-g")
	t.Run("file", func(t *testing.T) {
		store := filepath.Join(toolDir(t), "walg")
		runAs(t, nil, "mkdir", store)
		testWALG(t, walg, map[string]string{"WALG_FILE_PREFIX": store})
	})
	t.Run("minio", func(t *testing.T) {
		endpoint := startMinIO(t, pinnedTool(t, "minio"))
		createBucket(t, endpoint, "backups")
		testWALG(t, walg, map[string]string{
			"WALG_S3_PREFIX":          "s3://backups/pg",
			"AWS_ACCESS_KEY_ID":       minioUser,
			"AWS_SECRET_ACCESS_KEY":   minioPassword,
			"AWS_ENDPOINT":            endpoint,
			"AWS_REGION":              "us-east-1",
			"AWS_S3_FORCE_PATH_STYLE": "true",
		})
	})
}

func testWALG(t *testing.T, walg string, storageEnv map[string]string) {
	h := newHarness(t, config.ToolWALG, func(h *harness) {
		var env []string
		var exports []string
		for k, v := range storageEnv {
			env = append(env, k+"="+v)
			exports = append(exports, k+"="+shQuote(v))
		}
		// WAL-G v0.2.20 cannot tar a socket: the source's moves out of
		// its data directory.
		sock, err := pgcluster.MkdirTemp("physical-sock-*", pgtest.OSUser(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.RemoveAll(sock) })
		h.src.Cluster.SocketDir = sock
		h.restartSource(map[string]string{
			"archive_mode":    "on",
			"archive_command": "env " + strings.Join(exports, " ") + " " + walg + " wal-push %p",
		})
		// WAL-G v0.2.20, the only one the Go module proxy serves, calls
		// the backup functions PostgreSQL 15 renamed: the source gets
		// the old names as wrappers (non-exclusive backups, as before).
		h.src.Exec(t, "postgres",
			`CREATE FUNCTION public.pg_start_backup(label text, fast boolean, exclusive boolean) RETURNS pg_lsn LANGUAGE sql AS 'SELECT pg_catalog.pg_backup_start(label, fast)'`,
			`CREATE FUNCTION public.pg_stop_backup(exclusive boolean, OUT lsn pg_lsn, OUT labelfile text, OUT spcmapfile text) RETURNS record LANGUAGE sql AS 'SELECT * FROM pg_catalog.pg_backup_stop(true)'`)
		pgEnv := append(slices.Clone(env), "PGHOST="+sock, fmt.Sprintf("PGPORT=%d", h.src.Port), "PGUSER=postgres", "PGDATABASE=postgres")
		runAs(t, pgEnv, walg, "backup-push", h.src.Cluster.DataDir)
		h.cfg.Retrieval.Source = config.Source{}
		h.cfg.Retrieval.Physical.ToolPath = walg
		// The secret reaches the tools through the agent's environment.
		h.cfg.Retrieval.Physical.Env = map[string]string{}
		for k, v := range storageEnv {
			if k == "AWS_SECRET_ACCESS_KEY" {
				t.Setenv("THINLAB_TEST_S3_SECRET", v)
				continue
			}
			h.cfg.Retrieval.Physical.Env[k] = v
		}
		if _, ok := storageEnv["AWS_SECRET_ACCESS_KEY"]; ok {
			h.cfg.Retrieval.Physical.EnvFromAgent = []string{"AWS_SECRET_ACCESS_KEY"}
			t.Setenv("AWS_SECRET_ACCESS_KEY", storageEnv["AWS_SECRET_ACCESS_KEY"])
		}
	})
	if err := h.r.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	h.waitReplayed("initial")
	h.checkCycleShowsNewRows(true)
	if s, ok := storageEnv["AWS_SECRET_ACCESS_KEY"]; ok {
		for _, f := range []string{"postgresql.auto.conf", "thinlab-postgres.log"} {
			raw, _ := os.ReadFile(filepath.Join(h.r.dataDir(), f))
			if strings.Contains(string(raw), s) {
				t.Errorf("%s in the pool's data holds the S3 secret", f)
			}
		}
	}
}

// pinnedTool finds a program deploy/dev/deps.sh builds into bin/.
func pinnedTool(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			p := filepath.Join(dir, "bin", name)
			if _, err := os.Stat(p); err != nil {
				t.Fatalf("%s is not built: run make deps (%v)", name, err)
			}
			// The tests run it as the postgres OS user: resolve the link
			// into the cache, which that user can read.
			if r, err := filepath.EvalSymlinks(p); err == nil {
				return r
			}
			return p
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("%s is not in PATH and no repository root was found: run make deps", name)
		}
		dir = parent
	}
}

const (
	minioUser     = "thinlab-test"
	minioPassword = "thinlab-test-Secret-42"
)

// startMinIO runs a MinIO server on loopback until the test ends and
// returns its endpoint URL.
func startMinIO(t *testing.T, bin string) string {
	t.Helper()
	data := t.TempDir()
	port, console := pgtest.FreePort(t), pgtest.FreePort(t)
	cmd := exec.Command(bin, "server", data, "--address", fmt.Sprintf("127.0.0.1:%d", port), "--console-address", fmt.Sprintf("127.0.0.1:%d", console), "--quiet")
	cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+minioUser, "MINIO_ROOT_PASSWORD="+minioPassword, "MINIO_BROWSER=off", "MINIO_UPDATE=off")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out tailBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	endpoint := fmt.Sprintf("http://127.0.0.1:%d", port)
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := http.Get(endpoint + "/minio/health/live")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return endpoint
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("MinIO did not become live within a minute: %v: %s", err, out.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// createBucket makes a bucket with a SigV4-signed PUT (no S3 client
// library needed for one call).
func createBucket(t *testing.T, endpoint, bucket string) {
	t.Helper()
	const region, service = "us-east-1", "s3"
	now := time.Now().UTC()
	amzDate, day := now.Format("20060102T150405Z"), now.Format("20060102")
	host := strings.TrimPrefix(endpoint, "http://")
	emptyHash := hex.EncodeToString(sha256Sum(nil))
	canonical := strings.Join([]string{"PUT", "/" + bucket, "",
		"host:" + host + "\nx-amz-content-sha256:" + emptyHash + "\nx-amz-date:" + amzDate + "\n",
		"host;x-amz-content-sha256;x-amz-date", emptyHash}, "\n")
	scope := day + "/" + region + "/" + service + "/aws4_request"
	toSign := "AWS4-HMAC-SHA256\n" + amzDate + "\n" + scope + "\n" + hex.EncodeToString(sha256Sum([]byte(canonical)))
	key := hmacSum([]byte("AWS4"+minioPassword), day)
	for _, part := range []string{region, service, "aws4_request"} {
		key = hmacSum(key, part)
	}
	sig := hex.EncodeToString(hmacSum(key, toSign))
	// MinIO answers 503 for a moment after it is live.
	deadline := time.Now().Add(time.Minute)
	for {
		req, err := http.NewRequestWithContext(context.Background(), http.MethodPut, endpoint+"/"+bucket, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("x-amz-date", amzDate)
		req.Header.Set("x-amz-content-sha256", emptyHash)
		req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential="+minioUser+"/"+scope+", SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature="+sig)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return
		}
		if resp.StatusCode != http.StatusServiceUnavailable || time.Now().After(deadline) {
			t.Fatalf("create bucket %s: %s", bucket, resp.Status)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func sha256Sum(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

func hmacSum(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}
