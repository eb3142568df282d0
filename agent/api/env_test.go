package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/agent/api"
	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/retrieval"
	"github.com/thinlab/thinlab/agent/runtime"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/storagetest"
	"github.com/thinlab/thinlab/internal/logtest"
	"github.com/thinlab/thinlab/sdk/agentapi"
)

// token is the API token of every test server (random: the agent
// refuses short tokens).
var token = config.GenerateToken()

const (
	goodPassword = "Vx9-kq2!Lm7#pz4Rw8"
)

// env is a real agent API over a real btrfs loop pool (agent/storage/btrfs) with real postgres
// clones, served on 127.0.0.1 by httptest.
type env struct {
	t      testing.TB
	ctx    context.Context
	pool   storage.Pool
	cfg    *config.Config
	log    *logtest.Buffer
	mgr    *clone.Manager
	srv    *api.Server
	http   *httptest.Server
	client *agentapi.Client
	snaps  []storage.Snapshot
}

// newEnv makes a pool with one snapshot per sql list, a clone manager
// with a private range of ports, and the API server.
func newEnv(t testing.TB, ports int, snapshots ...[]string) *env {
	t.Helper()
	return newEnvOn(t, storage.ModeBtrfs, ports, snapshots...)
}

// newEnvOn is newEnv on a loop pool of the given backend.
func newEnvOn(t testing.TB, mode string, ports int, snapshots ...[]string) *env {
	t.Helper()
	return newEnvWith(t, mode, ports, nil, snapshots...)
}

// newEnvWith is newEnvOn with the retriever retr builds for the
// configuration and the pool (nil: none).
func newEnvWith(t testing.TB, mode string, ports int, retr func(*config.Config, storage.Pool) *retrieval.Retriever, snapshots ...[]string) *env {
	t.Helper()
	return newEnvFull(t, mode, ports, nil, retr, snapshots...)
}

// newEnvTweaked is newEnvOn with tweak applied to the agent's config
// before the clone manager starts.
func newEnvTweaked(t testing.TB, mode string, ports int, tweak func(*config.Config), snapshots ...[]string) *env {
	t.Helper()
	return newEnvFull(t, mode, ports, tweak, nil, snapshots...)
}

// newEnvFull is newEnvOn with a config tweak and a retriever (nil: none).
func newEnvFull(t testing.TB, mode string, ports int, tweak func(*config.Config), retr func(*config.Config, storage.Pool) *retrieval.Retriever, snapshots ...[]string) *env {
	t.Helper()
	// Not t.Context(): that ends before the cleanups below, and the
	// manager built on ctx must still work while they close it.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	p := storagetest.NewLoopPool(t, mode)
	e := &env{t: t, ctx: ctx, pool: p, log: &logtest.Buffer{}}
	for _, sql := range snapshots {
		e.snaps = append(e.snaps, clonetest.Fill(t, p, sql...))
	}
	cfg := clonetest.Config(t, p, ports)
	cfg.Server.VerificationToken = token
	cfg.Cloning.ProtectionLeaseDurationMinutes = 60
	cfg.Cloning.ProtectionMaxDurationMinutes = 120
	if tweak != nil {
		tweak(cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	e.cfg = cfg
	logger := e.log.Logger()
	m, err := clone.NewManager(ctx, clone.Options{Config: cfg, Pools: []storage.Pool{p}, Logger: logger, CheckInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	e.mgr = m
	var r *retrieval.Retriever
	if retr != nil {
		r = retr(cfg, p)
	}
	e.srv = api.New(api.Options{Config: cfg, Clones: m, Pools: []storage.Pool{p}, Logger: logger, Version: "test", InstanceID: "inst1", StartedAt: time.Now(), SweepInterval: -1, Retrieval: r})
	e.http = httptest.NewServer(e.srv.Handler())
	e.client = &agentapi.Client{BaseURL: e.http.URL, Token: token, PollInterval: 200 * time.Millisecond}
	// Cleanups run last-in first-out: server, manager, then the clones'
	// processes and datasets, then (registered first) the pool.
	t.Cleanup(func() {
		clonetest.KillClones(p)
		for _, secret := range []string{token, goodPassword} {
			if strings.Contains(e.log.String(), secret) {
				t.Errorf("a secret appears in the log")
			}
		}
	})
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("close the clone manager: %v", err)
		}
	})
	t.Cleanup(func() { e.http.Close(); e.srv.Close() })
	return e
}

// raw sends a request and returns status and body. tok "" sends no token
// header.
func (e *env) raw(method, path, tok string, body string) (int, []byte) {
	e.t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(e.ctx, method, e.http.URL+path, r)
	if err != nil {
		e.t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set(agentapi.VerificationTokenHeader, tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.StatusCode, readAll(e.t, resp)
}

// wantError checks an error answer's status, code and that its message
// (and detail, when given) say what is wrong.
func (e *env) wantError(err error, status int, code, detail, msgPart string) {
	e.t.Helper()
	ae, ok := err.(*agentapi.APIError)
	if !ok {
		e.t.Fatalf("want *APIError %d, got %v", status, err)
	}
	if ae.StatusCode != status || ae.Code != code {
		e.t.Fatalf("got %d %s (%s), want %d %s", ae.StatusCode, ae.Code, ae.Message, status, code)
	}
	if detail != "" && ae.Detail != detail {
		e.t.Fatalf("detail %q, want %q (message %q)", ae.Detail, detail, ae.Message)
	}
	if !strings.Contains(ae.Message, msgPart) {
		e.t.Fatalf("message %q does not contain %q", ae.Message, msgPart)
	}
}

func (e *env) createReq(id, snapshotID string) agentapi.CreateCloneRequest {
	r := agentapi.CreateCloneRequest{ID: id, DB: &agentapi.DatabaseRequest{Username: "alice", Password: goodPassword}}
	if snapshotID != "" {
		r.Snapshot = &agentapi.SnapshotCloneField{ID: snapshotID}
	}
	return r
}

// createOK creates a clone through the API and waits until it is OK.
func (e *env) createOK(r agentapi.CreateCloneRequest) *agentapi.Clone {
	e.t.Helper()
	c, err := e.client.CreateClone(e.ctx, r)
	if err != nil {
		e.t.Fatalf("create %s: %v", r.ID, err)
	}
	c, err = e.client.WaitClone(e.ctx, c.ID)
	if err != nil {
		e.t.Fatalf("wait %s: %v", r.ID, err)
	}
	return c
}

func (e *env) destroy(id string) {
	e.t.Helper()
	if err := e.client.DestroyClone(e.ctx, id); err != nil {
		e.t.Fatalf("destroy %s: %v", id, err)
	}
	if err := e.client.WaitCloneDestroyed(e.ctx, id); err != nil {
		e.t.Fatalf("destroy %s: %v", id, err)
	}
}

// query logs in to the clone over TCP with the clone's user and password
// (as psql would) and returns one text value.
func query(ctx context.Context, t testing.TB, c *agentapi.Clone, password, sql string) string {
	t.Helper()
	s, err := tryQuery(ctx, c, password, sql)
	if err != nil {
		t.Fatalf("clone %s: %v", c.ID, err)
	}
	return s
}

func tryQuery(ctx context.Context, c *agentapi.Clone, password, sql string) (string, error) {
	cc, err := pgx.ParseConfig(c.DB.ConnStr + " sslmode=disable connect_timeout=10")
	if err != nil {
		return "", err
	}
	cc.Password = password
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return "", err
	}
	// The query's answer is the result; a failed goodbye changes nothing.
	defer func() { _ = conn.Close(ctx) }()
	var s string
	if err := conn.QueryRow(ctx, sql).Scan(&s); err != nil {
		return "", fmt.Errorf("%s: %w", sql, err)
	}
	return s, nil
}

// assertNothingLeft checks that no clone is listed, the pool has no clone
// dataset and no postgres runs in the pool.
func (e *env) assertNothingLeft() {
	e.t.Helper()
	list, err := e.client.Clones(e.ctx)
	if err != nil || len(list) != 0 {
		e.t.Errorf("clones still listed: %d %v", len(list), err)
	}
	pc, err := e.pool.Clones(e.ctx)
	if err != nil || len(pc) != 0 {
		e.t.Errorf("pool still has clones: %v %v", pc, err)
	}
	procs, _ := runtime.Postmasters()
	for _, p := range procs {
		if strings.HasPrefix(p.DataDir, filepath.Dir(e.pool.MainDir())+"/") {
			e.t.Errorf("postgres %d still runs in %s", p.PID, p.DataDir)
		}
	}
}

func decodeMap(t testing.TB, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("not a JSON object: %v: %s", err, b)
	}
	return m
}
