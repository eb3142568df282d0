package tunnele2e

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/events"
	agenttunnel "github.com/thinlab/thinlab/agent/tunnel"
	"github.com/thinlab/thinlab/internal/logtest"
	"github.com/thinlab/thinlab/internal/tlstest"
	"github.com/thinlab/thinlab/platform/hub"
	"github.com/thinlab/thinlab/sdk/agentapi"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

// Test timing: short heartbeats and backoff so that losses and reconnects
// happen quickly (the production values are in sdk/tunnel).
const (
	testHeartbeat = 300 * time.Millisecond
	enrollToken   = "enroll-token-7c1f9e2a55d04b3b"
	agentAPIToken = "agent-verification-token-3f8a9b1c2d4e5f60718293a4"
)

var testBackoff = agenttunnel.Backoff{Min: 20 * time.Millisecond, Max: 300 * time.Millisecond}

// platformDB is the platform's database side as the hub sees it: issued
// credentials and stored events (deduplicated by id, as the platform
// must). It outlives platform restarts.
type platformDB struct {
	mu          sync.Mutex
	creds       map[string]hub.AgentIdentity // credential -> identity
	events      map[string]tunnel.Event
	deliveries  map[string]int // raw deliveries per event id
	facts       []tunnel.AgentFacts
	disconnects int
}

func newPlatformDB() *platformDB {
	return &platformDB{creds: map[string]hub.AgentIdentity{}, events: map[string]tunnel.Event{}, deliveries: map[string]int{}}
}

func (db *platformDB) authenticate(_ context.Context, r *http.Request) (hub.AgentIdentity, error) {
	h := r.Header.Get("Authorization")
	cred, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		return hub.AgentIdentity{}, errors.New("no bearer credential")
	}
	db.mu.Lock()
	defer db.mu.Unlock()
	id, ok := db.creds[cred]
	if !ok {
		return hub.AgentIdentity{}, errors.New("unknown credential")
	}
	return id, nil
}

func (db *platformDB) enroll(w http.ResponseWriter, r *http.Request) {
	var req tunnel.EnrollRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Token != enrollToken {
		http.Error(w, "refused", http.StatusUnauthorized)
		return
	}
	var b [16]byte
	_, _ = rand.Read(b[:])
	cred := "cred-" + hex.EncodeToString(b[:])
	db.mu.Lock()
	id := hub.AgentIdentity{AgentID: "agent-" + hex.EncodeToString(b[:4]), OrgID: "org-1"}
	db.creds[cred] = id
	db.facts = append(db.facts, req.Facts)
	db.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(tunnel.EnrollResponse{AgentID: id.AgentID, OrganizationID: id.OrgID, Name: req.Facts.Name, Credential: cred})
}

func (db *platformDB) storeEvents(_ context.Context, _ string, evs []tunnel.Event) error {
	db.mu.Lock()
	defer db.mu.Unlock()
	for _, e := range evs {
		db.deliveries[e.ID]++
		db.events[e.ID] = e
	}
	return nil
}

func (db *platformDB) stored() int {
	db.mu.Lock()
	defer db.mu.Unlock()
	return len(db.events)
}

func (db *platformDB) revokeAll() {
	db.mu.Lock()
	defer db.mu.Unlock()
	clear(db.creds)
}

// platform is one running platform replica: the hub behind a TLS server
// whose certificate is signed by the test CA.
type platform struct {
	db   *platformDB
	hub  *hub.Hub
	srv  *httptest.Server
	tls  tlstest.Files
	URL  string
	addr string
	logs *logtest.Buffer
}

// startPlatform starts a replica on addr ("" for a fresh port).
func startPlatform(t testing.TB, db *platformDB, files tlstest.Files, addr string, configure ...func(*hub.Options)) *platform {
	t.Helper()
	p := &platform{db: db, tls: files, logs: &logtest.Buffer{}}
	opt := hub.Options{
		Authenticate: db.authenticate,
		OnEvents:     db.storeEvents,
		OnConnect: func(_ context.Context, _ hub.AgentIdentity, f tunnel.AgentFacts) {
			db.mu.Lock()
			db.facts = append(db.facts, f)
			db.mu.Unlock()
		},
		OnDisconnect:      func(hub.AgentIdentity) { db.mu.Lock(); db.disconnects++; db.mu.Unlock() },
		Logger:            p.logs.Logger(),
		HeartbeatInterval: testHeartbeat,
		RequireTLS:        true,
	}
	for _, f := range configure {
		f(&opt)
	}
	h, err := hub.New(opt)
	if err != nil {
		t.Fatal(err)
	}
	p.hub = h
	mux := http.NewServeMux()
	mux.Handle(tunnel.TunnelPath, h)
	mux.Handle(hub.RelayPath, h.RelayHandler())
	mux.HandleFunc("POST "+tunnel.EnrollPath, db.enroll)
	srv := httptest.NewUnstartedServer(mux)
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var l net.Listener
	// The port of a stopped replica may linger briefly in the kernel.
	for i := range 50 {
		l, err = net.Listen("tcp", addr)
		if err == nil || i == 49 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	_ = srv.Listener.Close() // replaced by ours on a fixed address
	srv.Listener = l
	cert, err := tls.LoadX509KeyPair(files.Cert, files.Key)
	if err != nil {
		t.Fatal(err)
	}
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	p.srv = srv
	p.addr = l.Addr().String()
	p.URL = "https://" + p.addr
	t.Cleanup(p.stop)
	return p
}

// stop ends every session and the server (idempotent).
func (p *platform) stop() {
	p.hub.Close()
	p.srv.Close()
}

// echoAPI stands for the agent's API: it requires the agent's token and
// answers with what it saw.
func echoAPI() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(agentapi.VerificationTokenHeader) != agentAPIToken {
			http.Error(w, "Check your verification token.", http.StatusUnauthorized)
			return
		}
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"path": r.URL.Path, "method": r.Method, "body": string(body)})
	})
}

// agentSide is one running agent tunnel client.
type agentSide struct {
	client *agenttunnel.Client
	bus    *events.Bus
	logs   *logtest.Buffer
	cancel context.CancelFunc
	done   chan struct{}
}

type agentConfig struct {
	url      string
	stateDir string
	caFile   string
	target   agenttunnel.CloneTarget
	token    string // enrollToken when empty
	proxy    func(*http.Request) (*url.URL, error)
}

func startAgent(t testing.TB, cfg agentConfig) *agentSide {
	t.Helper()
	a := &agentSide{bus: events.NewBus(), logs: &logtest.Buffer{}, done: make(chan struct{})}
	c, err := agenttunnel.New(agenttunnel.Options{
		URL:               cfg.url,
		CAFile:            cfg.caFile,
		EnrollToken:       cmp.Or(cfg.token, enrollToken),
		StateDir:          cfg.stateDir,
		API:               echoAPI(),
		APIToken:          agentAPIToken,
		CloneTarget:       cfg.target,
		Facts:             func() tunnel.AgentFacts { return tunnel.AgentFacts{Name: "test-agent", Version: "test"} },
		Events:            a.bus,
		Logger:            a.logs.Logger(),
		Proxy:             cfg.proxy,
		Backoff:           testBackoff,
		HeartbeatInterval: testHeartbeat,
		FactsInterval:     testHeartbeat,
	})
	if err != nil {
		t.Fatal(err)
	}
	a.client = c
	ctx, cancel := context.WithCancel(context.Background()) // ended by stop (cleanup or the test)
	a.cancel = cancel
	go func() {
		defer close(a.done)
		_ = c.Run(ctx) // returns nil when ctx ends
	}()
	t.Cleanup(a.stop)
	return a
}

// stop ends the client and waits for it (idempotent).
func (a *agentSide) stop() {
	a.cancel()
	<-a.done
	_ = a.client.Close() // the journal's file is synced after each append
}

// waitFor polls cond until it holds or a generous bound passes (the bound
// only keeps a broken test from hanging; no timing is asserted).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// agentID is the id the platform gave the (only) enrolled agent.
func (db *platformDB) agentID(t testing.TB) string {
	t.Helper()
	db.mu.Lock()
	defer db.mu.Unlock()
	for _, id := range db.creds {
		return id.AgentID
	}
	t.Fatal("no agent enrolled")
	return ""
}

func connected(p *platform, id string) bool {
	_, _, ok := p.hub.Connected(id)
	return ok
}
