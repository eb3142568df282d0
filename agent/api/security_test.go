package api_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/api"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/sdk/agentapi"
)

// TestSecurity covers issue 8's API findings on one real pool: internal
// failures do not reach callers, /metrics never runs storage commands per
// scrape, and a server without a token refuses everything.
func TestSecurity(t *testing.T) {
	e := newEnv(t, 1, snapA)
	t.Run("InternalErrorHidesCommandAndStderr", func(t *testing.T) { e.t = t; testInternalError(e) })
	t.Run("MetricsFromCache", func(t *testing.T) { e.t = t; testMetricsCache(e) })
	t.Run("BearerToken", func(t *testing.T) { e.t = t; testBearer(e) })
	t.Run("NoTokenConfigured", func(t *testing.T) { e.t = t; testNoToken(e) })
}

// testInternalError makes the pool's real snapshot command fail (a btrfs
// that fails "subvolume snapshot" with a recognisable stderr, found first
// in PATH) and checks that the 500 answer holds only a request id, which
// the log line with the command line and stderr carries too.
func testInternalError(e *env) {
	t := e.t
	real, err := lookPath("btrfs")
	if err != nil {
		t.Fatalf("needs btrfs-progs (make deps installs them): %v", err)
	}
	dir := t.TempDir()
	const marker = "ERROR-MARKER-cannot-snapshot-/secret/host/path"
	script := "#!/bin/sh\nif [ \"$1\" = subvolume ] && [ \"$2\" = snapshot ]; then echo '" + marker + "' >&2; exit 1; fi\nexec " + real + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(dir, "btrfs"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))

	req, _ := http.NewRequestWithContext(e.ctx, http.MethodPost, e.http.URL+"/snapshot", strings.NewReader(`{}`))
	req.Header.Set(agentapi.VerificationTokenHeader, token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, resp)
	if resp.StatusCode != http.StatusInternalServerError {
		t.Fatalf("POST /snapshot with a failing btrfs: want 500, got %d %s", resp.StatusCode, body)
	}
	id := resp.Header.Get(api.RequestIDHeader)
	if id == "" {
		t.Fatalf("no %s header on the 500 answer", api.RequestIDHeader)
	}
	m := decodeMap(t, body)
	if m["code"] != agentapi.CodeInternal || m["message"] != "internal error, request id "+id {
		t.Fatalf("500 body: want code %s and message %q, got %s", agentapi.CodeInternal, "internal error, request id "+id, body)
	}
	for _, leak := range []string{"ERROR-MARKER", "/secret/host/path", "subvolume", "btrfs", e.pool.MainDir()} {
		if strings.Contains(string(body), leak) {
			t.Errorf("the 500 answer shows %q: %s", leak, body)
		}
	}
	// The operator finds the cause in the log by the request id.
	var line string
	for l := range strings.SplitSeq(e.log.String(), "\n") {
		if strings.Contains(l, "request_id="+id) && strings.Contains(l, "API request failed") {
			line = l
		}
	}
	if !strings.Contains(line, marker) || !strings.Contains(line, "subvolume snapshot") {
		t.Fatalf("the log line of request %s should hold the command and its stderr, got %q", id, line)
	}
	// Every answer has an id, not only errors.
	hr, err := http.Get(e.http.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, hr)
	if hr.Header.Get(api.RequestIDHeader) == "" || hr.Header.Get(api.RequestIDHeader) == id {
		t.Fatalf("healthz: want a fresh %s, got %q", api.RequestIDHeader, hr.Header.Get(api.RequestIDHeader))
	}
}

// countingPool counts the storage reads metrics make.
type countingPool struct {
	storage.Pool
	reads atomic.Int64
}

func (p *countingPool) Snapshots(ctx context.Context) ([]storage.Snapshot, error) {
	p.reads.Add(1)
	return p.Pool.Snapshots(ctx)
}

func (p *countingPool) Usage(ctx context.Context) (storage.Usage, error) {
	p.reads.Add(1)
	return p.Pool.Usage(ctx)
}

// testMetricsCache scrapes /metrics 300 times, concurrently: the pool is
// read only by RefreshMetrics, never by a scrape.
func testMetricsCache(e *env) {
	t := e.t
	cp := &countingPool{Pool: e.pool}
	srv := api.New(api.Options{Config: e.cfg, Clones: e.mgr, Pools: []storage.Pool{cp}, Logger: e.log.Logger(), SweepInterval: -1, MetricsInterval: -1})
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() { hs.Close(); srv.Close() })

	srv.RefreshMetrics(e.ctx)
	afterRefresh := cp.reads.Load()
	if afterRefresh != 2 {
		t.Fatalf("one refresh of one pool: want 2 storage reads (snapshots, usage), got %d", afterRefresh)
	}
	errs := make(chan string, 300)
	for range 10 {
		go func() {
			for range 30 {
				req, _ := http.NewRequestWithContext(e.ctx, http.MethodGet, hs.URL+"/metrics", nil)
				req.Header.Set("Authorization", "Bearer "+token)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					errs <- err.Error()
					continue
				}
				b, rerr := io.ReadAll(resp.Body)
				if cerr := resp.Body.Close(); rerr == nil {
					rerr = cerr
				}
				if rerr != nil {
					errs <- "scrape: read the answer: " + rerr.Error()
					continue
				}
				if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `thinlab_agent_snapshots{pool="`+e.pool.Name()+`"} 1`) {
					errs <- "scrape: " + resp.Status + " " + string(b)
					continue
				}
				errs <- ""
			}
		}()
	}
	for range 300 {
		if msg := <-errs; msg != "" {
			t.Fatal(msg)
		}
	}
	if got := cp.reads.Load(); got != afterRefresh {
		t.Fatalf("300 scrapes read the pool %d times: want 0 (metrics come from the cache)", got-afterRefresh)
	}

	// The background loop refreshes the cache on its own.
	cp2 := &countingPool{Pool: e.pool}
	srv2 := api.New(api.Options{Config: e.cfg, Clones: e.mgr, Pools: []storage.Pool{cp2}, Logger: e.log.Logger(), SweepInterval: -1, MetricsInterval: 20 * time.Millisecond})
	t.Cleanup(srv2.Close)
	for cp2.reads.Load() < 4 {
		select {
		case <-e.ctx.Done():
			t.Fatal("the metrics loop never refreshed twice")
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// testBearer: Prometheus sends the token as Authorization: Bearer.
func testBearer(e *env) {
	t := e.t
	for _, tc := range []struct {
		header string
		want   int
	}{
		{"Bearer " + token, http.StatusOK},
		{"bearer " + token, http.StatusOK},
		{"Bearer wrong", http.StatusUnauthorized},
		{"Basic " + token, http.StatusUnauthorized},
		{"Bearer ", http.StatusUnauthorized},
	} {
		req, _ := http.NewRequestWithContext(e.ctx, http.MethodGet, e.http.URL+"/metrics", nil)
		req.Header.Set("Authorization", tc.header)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
		if resp.StatusCode != tc.want {
			t.Errorf("GET /metrics with Authorization %q: want %d, got %d", strings.SplitN(tc.header, " ", 2)[0]+" ...", tc.want, resp.StatusCode)
		}
	}
}

// testNoToken: a server whose config has no token (built in code, past
// validation) refuses every authenticated route instead of serving them
// to anyone, as DLE and Thinlab did before.
func testNoToken(e *env) {
	t := e.t
	cfg := *e.cfg
	cfg.Server.VerificationToken = ""
	srv := api.New(api.Options{Config: &cfg, Clones: e.mgr, Pools: []storage.Pool{e.pool}, Logger: e.log.Logger(), SweepInterval: -1, MetricsInterval: -1})
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() { hs.Close(); srv.Close() })
	for _, tok := range []string{"", "anything"} {
		for _, path := range []string{"/status", "/clones", "/metrics", "/snapshots"} {
			req, _ := http.NewRequestWithContext(e.ctx, http.MethodGet, hs.URL+path, nil)
			if tok != "" {
				req.Header.Set(agentapi.VerificationTokenHeader, tok)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			readAll(t, resp)
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("GET %s on a server without a token (sent %q): want 401, got %d", path, tok, resp.StatusCode)
			}
		}
	}
	// insecureNoAuth (allowed on loopback only by validation) opens them.
	cfg.Server.InsecureNoAuth = true
	if err := cfg.ValidateServer(); err != nil {
		t.Fatal(err)
	}
	srv2 := api.New(api.Options{Config: &cfg, Clones: e.mgr, Pools: []storage.Pool{e.pool}, Logger: e.log.Logger(), SweepInterval: -1, MetricsInterval: -1})
	hs2 := httptest.NewServer(srv2.Handler())
	t.Cleanup(func() { hs2.Close(); srv2.Close() })
	if _, err := (&agentapi.Client{BaseURL: hs2.URL}).Status(e.ctx); err != nil {
		t.Fatalf("insecureNoAuth: /status without a token: %v", err)
	}
}

// readAll reads and closes the answer's body.
func readAll(t testing.TB, resp *http.Response) []byte {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if cerr := resp.Body.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("read the answer to %s %s: %v", resp.Request.Method, resp.Request.URL.Path, err)
	}
	return b
}

func lookPath(name string) (string, error) { return exec.LookPath(name) }
