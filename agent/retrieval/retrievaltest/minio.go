package retrievaltest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/retrieval/sigv4"
	"github.com/thinlab/thinlab/internal/pgtest"
)

// MinIOVersion is the MinIO server deploy/dev/deps.sh builds once into
// the tools cache (the same pin the physical retrieval tests use).
const MinIOVersion = "v0.0.0-20260212201848-7aac2a2c5b7c"

// minioBinary finds the pinned MinIO server: bin/minio of the checkout
// (a link deps.sh makes) or the tools cache it links to.
func minioBinary(t *testing.T) string {
	t.Helper()
	cache := os.Getenv("THINLAB_TOOLS_CACHE")
	if cache == "" {
		cache = "/var/cache/thinlab/tools"
	}
	candidates := []string{filepath.Join(cache, "minio-"+MinIOVersion, "minio")}
	if wd, err := os.Getwd(); err == nil {
		for d := wd; d != "/"; d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
				candidates = append(candidates, filepath.Join(d, "bin", "minio"))
				break
			}
		}
	}
	for _, c := range candidates {
		fi, err := os.Stat(c) //nolint:gosec // G703: fixed names under the tools cache and the checkout
		if err == nil && fi.Mode()&0o111 != 0 {
			return c
		}
	}
	t.Fatalf("MinIO %s is not built (looked at %v): run make deps (deploy/dev/deps.sh builds it once into the tools cache)", MinIOVersion, candidates)
	return ""
}

// MinIO is a throwaway MinIO server on loopback.
type MinIO struct {
	Endpoint string
	Creds    sigv4.Credentials
}

// StartMinIO starts a MinIO server with fresh storage; it is killed at
// cleanup.
func StartMinIO(t *testing.T) *MinIO {
	t.Helper()
	bin := minioBinary(t)
	port, console := pgtest.FreePort(t), pgtest.FreePort(t)
	m := &MinIO{Endpoint: fmt.Sprintf("http://127.0.0.1:%d", port), Creds: sigv4.Credentials{AccessKeyID: "thinlabtest", SecretAccessKey: "thinlabtest-secret-0123"}} //nolint:gosec // G101: a throwaway test server's key
	cmd := exec.CommandContext(context.Background(), bin, "server", t.TempDir(), "--quiet",                                                                           //nolint:gosec // G204: the pinned MinIO test server
		"--address", fmt.Sprintf("127.0.0.1:%d", port), "--console-address", fmt.Sprintf("127.0.0.1:%d", console))
	cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+m.Creds.AccessKeyID, "MINIO_ROOT_PASSWORD="+m.Creds.SecretAccessKey, "MINIO_BROWSER=off")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill() // a throwaway server
		_ = cmd.Wait()
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(m.Endpoint + "/minio/health/live")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return m
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("MinIO did not come up: %v\n%s", err, out.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Put stores body at bucket/key (the bucket is created when missing).
func (m *MinIO) Put(t *testing.T, bucket, key string, body []byte) {
	t.Helper()
	m.put(t, "/"+bucket, nil, true)
	m.put(t, "/"+bucket+"/"+key, body, false)
}

func (m *MinIO) put(t *testing.T, path string, body []byte, bucket bool) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, m.Endpoint+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(body)
	sigv4.SignRequest(req, m.Creds, time.Now(), "us-east-1", "s3", hex.EncodeToString(sum[:]))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK && (!bucket || resp.StatusCode != http.StatusConflict) {
		t.Fatalf("PUT %s: %s: %s", path, resp.Status, msg)
	}
}
