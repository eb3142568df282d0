package server

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/internal/pgcluster"
	"github.com/thinlab/thinlab/internal/testenv"
	"github.com/thinlab/thinlab/internal/version"
)

// TestEmbeddedDatabase starts the server with no database URL: it must run
// its own PostgreSQL under dataDir/pg, answer /healthz, and stop it again.
func TestEmbeddedDatabase(t *testing.T) {
	testenv.NeedsRoot(t, "root and PostgreSQL (the embedded cluster runs as its own OS user)")
	dir, err := os.MkdirTemp("", "platform-embedded-*")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// The cluster runs as the embedded database's own OS user, which the
	// first New creates when it is missing.
	var cluster *pgcluster.Cluster
	t.Cleanup(func() {
		if cluster != nil {
			cluster.Kill()
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
	})

	cfg := DefaultConfig()
	cfg.DataDir = dir
	cfg.Listen = "127.0.0.1:0"
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	for round := 1; round <= 2; round++ { // the second start reuses the cluster
		srv, err := New(ctx, cfg, Options{})
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if cluster == nil {
			u, err := pgcluster.LookupUser(cfg.Database.OSUser)
			if err != nil {
				t.Fatalf("the embedded database's OS user %s: %v", cfg.Database.OSUser, err)
			}
			cluster = &pgcluster.Cluster{DataDir: filepath.Join(dir, "pg", "data"), User: u}
		}
		if !cluster.Running() {
			t.Fatal("embedded cluster not running")
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		sctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- srv.Serve(sctx, ln) }()
		resp, err := http.Get("http://" + ln.Addr().String() + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		var body map[string]string
		derr := json.NewDecoder(resp.Body).Decode(&body)
		_ = resp.Body.Close() // read to the end already
		if derr != nil {
			t.Fatalf("healthz body: %v", derr)
		}
		if resp.StatusCode != http.StatusOK || body["status"] != "ok" || body["version"] != version.Version {
			t.Fatalf("healthz: %d %v, want 200 with status ok and version %q", resp.StatusCode, body, version.Version)
		}
		stop()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if err := srv.Close(); err != nil {
			t.Fatal(err)
		}
		if cluster.Running() {
			t.Fatal("embedded cluster still running after Close")
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "pg", "run")); err != nil {
		t.Fatal(err)
	}
}

func TestEmbeddedDatabaseUnreachableDataDir(t *testing.T) {
	testenv.NeedsRoot(t, "root, to run PostgreSQL as the postgres user")
	dir := t.TempDir() // 0700 root: the postgres user cannot enter it
	cfg := DefaultConfig()
	cfg.DataDir = filepath.Join(dir, "platform")
	_, err := New(t.Context(), cfg, Options{})
	if err == nil || !strings.Contains(err.Error(), "chmod o+x") {
		t.Fatalf("error %v, want advice to chmod o+x", err)
	}
}
