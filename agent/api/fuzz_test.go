package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/api"
	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/sdk/agentapi"
)

// emptyPool is a pool with no data and no snapshots: every request that
// passes decoding and validation stops at "no such snapshot/clone", so the
// fuzzer exercises the real handlers without starting postgres.
type emptyPool struct{ dir string }

var errFuzzPool = errors.New("fuzz pool: no storage")

func (p emptyPool) Name() string    { return "fuzz" }
func (p emptyPool) Mode() string    { return storage.ModeBtrfs }
func (p emptyPool) MainDir() string { return p.dir }
func (p emptyPool) Snapshot(context.Context, storage.SnapshotOptions) (storage.Snapshot, error) {
	return storage.Snapshot{}, errFuzzPool
}
func (p emptyPool) Snapshots(context.Context) ([]storage.Snapshot, error) { return nil, nil }
func (p emptyPool) GetSnapshot(context.Context, string) (storage.Snapshot, error) {
	return storage.Snapshot{}, storage.ErrNotFound
}
func (p emptyPool) DestroySnapshot(context.Context, string, bool) error { return storage.ErrNotFound }
func (p emptyPool) Clone(context.Context, string, string) (storage.Clone, error) {
	return storage.Clone{}, errFuzzPool
}
func (p emptyPool) Clones(context.Context) ([]storage.Clone, error) { return nil, nil }
func (p emptyPool) DestroyClone(context.Context, string) error      { return storage.ErrNotFound }
func (p emptyPool) Usage(context.Context) (storage.Usage, error)    { return storage.Usage{}, nil }

// fuzzRoutes are the routes whose bodies, path IDs and queries the agent
// decodes and validates.
var fuzzRoutes = []struct{ method, path string }{
	{http.MethodPost, "/clone"},
	{http.MethodPost, "/clone/{id}/reset"},
	{http.MethodPatch, "/clone/{id}"},
	{http.MethodGet, "/clone/{id}"},
	{http.MethodDelete, "/clone/{id}"},
	{http.MethodPost, "/snapshot"},
	{http.MethodPatch, "/snapshot/{id}"},
	{http.MethodGet, "/snapshot/{id}"},
	{http.MethodDelete, "/snapshot/{id}"},
	{http.MethodGet, "/snapshots"},
	{http.MethodPost, "/full-refresh"},
}

// FuzzRequests sends fuzzed bodies, IDs and query strings through the
// real router and handlers (token check, JSON decoding, the clone
// manager's validation, snapshot policy) over an empty pool. No input may
// panic or produce a 500: every refusal is a 4xx with DLE's error body.
func FuzzRequests(f *testing.F) {
	tok := config.GenerateToken()
	cfg := config.Default()
	cfg.Pools = []config.Pool{{Name: "fuzz", Mode: storage.ModeBtrfs, Path: "/nonexistent"}}
	cfg.Server.VerificationToken = tok
	cfg.StateDir = f.TempDir()
	pool := emptyPool{dir: f.TempDir()}
	log := slog.New(slog.DiscardHandler)
	m, err := clone.NewManager(f.Context(), clone.Options{Config: cfg, Pools: []storage.Pool{pool}, Logger: log, CheckInterval: -1})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() {
		if err := m.Close(); err != nil {
			f.Errorf("close the clone manager: %v", err)
		}
	})
	srv := api.New(api.Options{Config: cfg, Clones: m, Pools: []storage.Pool{pool}, Logger: log, SweepInterval: -1, MetricsInterval: -1, StartedAt: time.Now()})
	f.Cleanup(srv.Close)
	h := srv.Handler()

	for _, s := range []struct {
		route     uint8
		id, query string
		body      string
	}{
		{0, "", "", `{"id":"c1","db":{"username":"alice","password":"Vx9-kq2!Lm7#pz4Rw8","restricted":true,"db_name":"app"},"snapshot":{"id":"fuzz@snapshot_20240102030405"},"extra_conf":{"work_mem":"8MB"}}`},
		{0, "", "", `{"db":{"username":"alice","password":"weak"}}`},
		{0, "", "", `{"id":"../x","db":{"username":"a;b","password":""},"extra_conf":{"shared_preload_libraries":"x"}}`},
		{0, "", "", `{"protectionDurationMinutes":-1,"db":null}`},
		{1, "c1", "", `{"snapshotID":"fuzz@snapshot_20240102030405","latest":true}`},
		{2, "c1", "", `{"protected":true,"protectionDurationMinutes":18446744073709551615}`},
		{3, "%2e%2e", "", ``},
		{5, "", "", `{"poolName":"nope"}`},
		{6, "fuzz@snapshot_20240102030405", "", `{"protected":true,"deleteAt":"2024-01-02T03:04:05Z"}`},
		{6, "fuzz@snapshot_20240102030405", "", `{"deleteAt":"0000-01-01T00:00:00+23:59"}`},
		{8, "fuzz@snapshot_20240102030405", "force=maybe", ``},
		{9, "", "branch=dev&dataset=x", ``},
		{10, "", "", `{}`},
	} {
		f.Add(s.route, s.id, s.query, []byte(s.body))
	}
	f.Fuzz(func(t *testing.T, route uint8, id, query string, body []byte) {
		rt := fuzzRoutes[int(route)%len(fuzzRoutes)]
		path := strings.ReplaceAll(rt.path, "{id}", id)
		if query != "" {
			path += "?" + query
		}
		req, err := http.NewRequestWithContext(t.Context(), rt.method, "http://agent"+path, bytes.NewReader(body))
		if err != nil {
			return // not a URL a client could send
		}
		req.Header.Set(agentapi.VerificationTokenHeader, tok)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code >= http.StatusInternalServerError {
			t.Fatalf("%s %s with body %q: %d %s", rt.method, path, body, w.Code, w.Body)
		}
		if w.Code >= http.StatusBadRequest && w.Code != http.StatusMethodNotAllowed {
			var e agentapi.ErrorBody
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Code == "" || e.Message == "" {
				t.Fatalf("%s %s: %d answer is not DLE's error body: %s", rt.method, path, w.Code, w.Body)
			}
		}
		// Nothing the fuzzer sends can create a clone over an empty pool.
		if n := len(m.List()); n != 0 {
			t.Fatalf("%s %s with body %q left %d clone records", rt.method, path, body, n)
		}
	})
}
