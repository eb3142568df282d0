package tunnele2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/yamux"
	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/agent/events"
	agenttunnel "github.com/thinlab/thinlab/agent/tunnel"
	"github.com/thinlab/thinlab/internal/pgtest"
	"github.com/thinlab/thinlab/internal/tlstest"
	"github.com/thinlab/thinlab/platform/hub"
	"github.com/thinlab/thinlab/sdk/agentapi"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

// callAPI sends GET path to the agent through the platform's hub, with a
// caller-supplied token that the agent must replace by its own.
func callAPI(t *testing.T, p *platform, agentID, path string) (int, map[string]string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, "http://ignored"+path, strings.NewReader("ping"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(agentapi.VerificationTokenHeader, "forged-by-caller")
	resp, err := p.hub.Do(agentID, req)
	if err != nil {
		t.Fatalf("API call through the tunnel: %v", err)
	}
	defer func() { _ = resp.Body.Close() }()
	var got map[string]string
	_ = json.NewDecoder(resp.Body).Decode(&got)
	return resp.StatusCode, got
}

func TestEnrollConnectAndCallAPIThroughTunnel(t *testing.T) {
	files := tlstest.New(t)
	db := newPlatformDB()
	p := startPlatform(t, db, files, "")
	state := t.TempDir()
	a := startAgent(t, agentConfig{url: p.URL, stateDir: state, caFile: files.CA})

	waitFor(t, "enrollment", func() bool { db.mu.Lock(); defer db.mu.Unlock(); return len(db.creds) == 1 })
	id := db.agentID(t)
	waitFor(t, "the session", func() bool { return connected(p, id) })

	// Several calls reuse the kept-alive stream; each is authenticated by
	// the agent's own token, not the caller's.
	for i := range 3 {
		code, got := callAPI(t, p, id, "/status/"+strconv.Itoa(i))
		if code != http.StatusOK || got["path"] != "/status/"+strconv.Itoa(i) || got["body"] != "ping" {
			t.Fatalf("call %d: %d %v", i, code, got)
		}
	}
	since, beat, ok := p.hub.Connected(id)
	if !ok || since.IsZero() || beat.Before(since) {
		t.Fatalf("Connected = %v %v %v", since, beat, ok)
	}
	// Facts came at enrollment, on connect and as periodic updates.
	waitFor(t, "a facts update", func() bool { db.mu.Lock(); defer db.mu.Unlock(); return len(db.facts) >= 3 })
	db.mu.Lock()
	for _, f := range db.facts {
		if f.Name != "test-agent" || f.Version != "test" {
			t.Errorf("facts %+v", f)
		}
	}
	db.mu.Unlock()

	fi, err := os.Stat(filepath.Join(state, tunnel.CredentialFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("credential file mode %v, want 0600", fi.Mode().Perm())
	}
	cred, err := agenttunnel.LoadCredential(state)
	if err != nil || cred.AgentID != id {
		t.Fatalf("credential file: %+v %v", cred, err)
	}
	for _, secret := range []string{enrollToken, cred.Credential, agentAPIToken} {
		if strings.Contains(a.logs.String(), secret) || strings.Contains(p.logs.String(), secret) {
			t.Fatalf("a secret reached the logs:\n%s\n%s", a.logs.String(), p.logs.String())
		}
	}

	// Revocation: the credential is refused from now on and Disconnect
	// closes the session at once; the agent cannot come back.
	db.revokeAll()
	p.hub.Disconnect(id)
	if connected(p, id) {
		t.Fatal("still connected after Disconnect")
	}
	waitFor(t, "the agent to see its credential refused", func() bool {
		return strings.Contains(a.logs.String(), "refused this agent's credential")
	})
	if connected(p, id) {
		t.Fatal("a revoked agent connected again")
	}
}

// rawSession speaks the protocol by hand (sdk/tunnel and yamux, as the
// agent does) with the given credential.
func rawSession(t *testing.T, p *platform, cred string) *yamux.Session {
	t.Helper()
	dialer := websocket.Dialer{TLSClientConfig: p.srv.Client().Transport.(*http.Transport).TLSClientConfig}
	hdr := http.Header{"Authorization": {"Bearer " + cred}, tunnel.VersionHeader: {"1"}}
	ws, resp, err := dialer.DialContext(t.Context(), "wss://"+p.addr+tunnel.TunnelPath, hdr)
	if resp != nil {
		_ = resp.Body.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	mux, err := yamux.Client(tunnel.NewConn(ws), tunnel.YamuxConfig(testHeartbeat, io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = mux.Close() })
	ctrl, err := mux.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if err := tunnel.Open(ctrl, tunnel.StreamHeader{Kind: tunnel.KindControl}); err != nil {
		t.Fatal(err)
	}
	if err := tunnel.WriteLine(ctrl, tunnel.Hello{V: tunnel.ProtocolVersion, Facts: tunnel.AgentFacts{Name: "raw"}}); err != nil {
		t.Fatal(err)
	}
	var w tunnel.Welcome
	if err := tunnel.ReadLine(ctrl, &w); err != nil {
		t.Fatal(err)
	}
	return mux
}

func TestNewerConnectionReplacesOlder(t *testing.T) {
	files := tlstest.New(t)
	db := newPlatformDB()
	p := startPlatform(t, db, files, "")
	state := t.TempDir()
	startAgent(t, agentConfig{url: p.URL, stateDir: state, caFile: files.CA})
	waitFor(t, "enrollment", func() bool { db.mu.Lock(); defer db.mu.Unlock(); return len(db.creds) == 1 })
	id := db.agentID(t)
	waitFor(t, "the session", func() bool { return connected(p, id) })
	first, _, _ := p.hub.Connected(id)

	// A second connection with the same credential takes over...
	cred, err := agenttunnel.LoadCredential(state)
	if err != nil {
		t.Fatal(err)
	}
	raw := rawSession(t, p, cred.Credential)
	if since, _, ok := p.hub.Connected(id); !ok || !since.After(first) {
		t.Fatalf("the newer connection did not replace the older: since %v (first %v) ok %v", since, first, ok)
	}
	// ...until the agent, cut off, reconnects and replaces it in turn.
	<-raw.CloseChan()
	waitFor(t, "the agent's session", func() bool { return connected(p, id) })
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.disconnects != 0 {
		t.Fatalf("OnDisconnect called %d times for replaced sessions, want 0", db.disconnects)
	}
}

func TestTCPStreamOnlyToLiveClonePorts(t *testing.T) {
	pg := pgtest.Start(t)
	files := tlstest.New(t)
	db := newPlatformDB()
	p := startPlatform(t, db, files, "")
	// Only the postgres port is a "live clone".
	other := pgtest.FreePort(t)
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(other)) // something listening that is no clone
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	startAgent(t, agentConfig{url: p.URL, stateDir: t.TempDir(), caFile: files.CA, target: func(port int) bool { return port == pg.Port }})
	waitFor(t, "enrollment", func() bool { db.mu.Lock(); defer db.mu.Unlock(); return len(db.creds) == 1 })
	id := db.agentID(t)
	waitFor(t, "the session", func() bool { return connected(p, id) })

	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=%s dbname=postgres sslmode=disable", pg.Port, pg.Password))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DialFunc = func(ctx context.Context, _, _ string) (net.Conn, error) { return p.hub.DialClone(ctx, id, pg.Port) }
	conn, err := pgx.ConnectConfig(t.Context(), cfg)
	if err != nil {
		t.Fatalf("postgres through the tunnel: %v", err)
	}
	defer func() { _ = conn.Close(context.Background()) }() // the test's session
	var n int
	if err := conn.QueryRow(t.Context(), "SELECT count(*) FROM generate_series(1, 100000)").Scan(&n); err != nil || n != 100000 {
		t.Fatalf("query through the tunnel: %d %v", n, err)
	}

	for _, port := range []int{other, 22, 0, 70000} {
		c, err := p.hub.DialClone(t.Context(), id, port)
		var refused *tunnel.RefusedError
		if !errors.As(err, &refused) {
			if c != nil {
				_ = c.Close()
			}
			t.Fatalf("port %d: err = %v, want a refusal", port, err)
		}
		if !strings.Contains(refused.Reason, "not the port of a live clone") {
			t.Fatalf("port %d: reason %q", port, refused.Reason)
		}
	}
}

func TestEventsBufferedWhileDisconnectedAreDeliveredOnce(t *testing.T) {
	files := tlstest.New(t)
	db := newPlatformDB()
	p := startPlatform(t, db, files, "")
	addr := p.addr
	state := t.TempDir()
	a := startAgent(t, agentConfig{url: p.URL, stateDir: state, caFile: files.CA})
	waitFor(t, "enrollment", func() bool { db.mu.Lock(); defer db.mu.Unlock(); return len(db.creds) == 1 })
	id := db.agentID(t)
	waitFor(t, "the session", func() bool { return connected(p, id) })

	emit := func(bus *events.Bus, prefix string, n int) {
		for i := range n {
			bus.Emit(events.Event{ID: fmt.Sprintf("%s-%03d", prefix, i), Kind: events.CloneReady, Clone: prefix})
		}
	}
	pending := func(c *agenttunnel.Client) int {
		evs, _, err := c.Journal().Pending(1000)
		if err != nil {
			t.Fatal(err)
		}
		return len(evs)
	}

	// Connected: delivered and acked.
	emit(a.bus, "a", 150) // more than one batch
	waitFor(t, "the first events stored", func() bool { return db.stored() == 150 })
	waitFor(t, "the first events acked", func() bool { return pending(a.client) == 0 })

	// The platform goes away mid-stream: events go to the journal.
	p.stop()
	waitFor(t, "the agent to notice", func() bool { return !a.client.Connected() })
	emit(a.bus, "b", 40)
	waitFor(t, "the journal to hold the events", func() bool { return pending(a.client) == 40 })

	// The agent is stopped right after more events (still queued, not yet
	// journalled: stopping must keep them) and started again from the
	// same journal; more events arrive while still disconnected.
	emit(a.bus, "q", 5)
	a.stop()
	a2 := startAgent(t, agentConfig{url: p.URL, stateDir: state, caFile: files.CA})
	emit(a2.bus, "c", 10)
	waitFor(t, "the new journal to hold all", func() bool { return pending(a2.client) == 55 })

	// The platform comes back on the same address.
	p2 := startPlatform(t, db, files, addr)
	waitFor(t, "all events stored", func() bool { return db.stored() == 205 })
	waitFor(t, "all acked", func() bool { return pending(a2.client) == 0 })
	waitFor(t, "the session", func() bool { return connected(p2, id) })

	db.mu.Lock()
	defer db.mu.Unlock()
	for evID, n := range db.deliveries {
		if n != 1 {
			t.Errorf("event %s delivered %d times", evID, n)
		}
	}
	if db.events["b-039"].Clone != "b" || db.events["c-009"].Kind != string(events.CloneReady) {
		t.Fatalf("events not stored as sent: %+v %+v", db.events["b-039"], db.events["c-009"])
	}
}

// freezer forwards TCP to a target until frozen: then it stops moving
// bytes in both directions without closing anything, like a peer that
// vanished without a FIN (power loss, a dropped route).
type freezer struct {
	l      net.Listener
	frozen atomic.Bool
	stop   chan struct{}
	mu     sync.Mutex
	conns  []net.Conn
}

func startFreezer(t *testing.T, target string) *freezer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{l: l, stop: make(chan struct{})}
	t.Cleanup(func() {
		_ = l.Close()
		close(f.stop)
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, c := range f.conns {
			_ = c.Close()
		}
	})
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			f.mu.Lock()
			f.conns = append(f.conns, c, u)
			f.mu.Unlock()
			go f.copy(u, c)
			go f.copy(c, u)
		}
	}()
	return f
}

func (f *freezer) copy(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if f.frozen.Load() {
			<-f.stop // a frozen link never moves again
			return
		}
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func TestHubNoticesSilentlyLostAgent(t *testing.T) {
	files := tlstest.New(t)
	db := newPlatformDB()
	p := startPlatform(t, db, files, "")
	fz := startFreezer(t, p.addr)
	// The agent reaches the platform through the freezer; its certificate
	// is for 127.0.0.1, which the freezer's address also is.
	a := startAgent(t, agentConfig{url: "https://" + fz.l.Addr().String(), stateDir: t.TempDir(), caFile: files.CA})
	waitFor(t, "enrollment", func() bool { db.mu.Lock(); defer db.mu.Unlock(); return len(db.creds) == 1 })
	id := db.agentID(t)
	waitFor(t, "the session", func() bool { return connected(p, id) })

	fz.frozen.Store(true)
	// Nothing is closed: only unanswered heartbeats can tell.
	waitFor(t, "the hub to mark the agent disconnected", func() bool { return !connected(p, id) })
	waitFor(t, "OnDisconnect", func() bool { db.mu.Lock(); defer db.mu.Unlock(); return db.disconnects == 1 })
	waitFor(t, "the agent to notice the lost platform", func() bool { return !a.client.Connected() })
	if !strings.Contains(p.logs.String(), "stopped answering heartbeats") {
		t.Fatalf("hub log does not say why:\n%s", p.logs.String())
	}
}

// connectProxy is a small HTTP CONNECT proxy like the ones in front of
// customers' hosts.
type connectProxy struct {
	mu      sync.Mutex
	tunnels []string // CONNECT targets
}

func (cp *connectProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodConnect {
		http.Error(w, "CONNECT only", http.StatusMethodNotAllowed)
		return
	}
	up, err := net.Dial("tcp", r.Host) //nolint:gosec // G704: the test's proxy dials what the test's agent asks for, on loopback
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		_ = up.Close()
		http.Error(w, "no hijacking", http.StatusInternalServerError)
		return
	}
	w.WriteHeader(http.StatusOK)
	c, brw, err := hj.Hijack()
	if err != nil {
		_ = up.Close()
		return
	}
	cp.mu.Lock()
	cp.tunnels = append(cp.tunnels, r.Host)
	cp.mu.Unlock()
	go func() {
		if n := brw.Reader.Buffered(); n > 0 {
			b, _ := brw.Peek(n)
			_, _ = up.Write(b)
		}
		_, _ = io.Copy(up, c)
		_ = up.Close()
	}()
	_, _ = io.Copy(c, up)
	_ = c.Close()
}

func TestTunnelThroughConnectProxy(t *testing.T) {
	files := tlstest.New(t)
	db := newPlatformDB()
	p := startPlatform(t, db, files, "")
	cp := &connectProxy{}
	proxy := httptest.NewServer(cp)
	t.Cleanup(proxy.Close)
	proxyURL, err := url.Parse(proxy.URL)
	if err != nil {
		t.Fatal(err)
	}
	// http.ProxyFromEnvironment never proxies loopback, where the test
	// platform is, so the test sets the proxy function itself.
	startAgent(t, agentConfig{url: p.URL, stateDir: t.TempDir(), caFile: files.CA, proxy: http.ProxyURL(proxyURL)})
	waitFor(t, "enrollment", func() bool { db.mu.Lock(); defer db.mu.Unlock(); return len(db.creds) == 1 })
	id := db.agentID(t)
	waitFor(t, "the session", func() bool { return connected(p, id) })
	if code, got := callAPI(t, p, id, "/status"); code != http.StatusOK || got["path"] != "/status" {
		t.Fatalf("API through proxy and tunnel: %d %v", code, got)
	}
	cp.mu.Lock()
	defer cp.mu.Unlock()
	// One CONNECT for enrollment, one for the websocket.
	if len(cp.tunnels) < 2 {
		t.Fatalf("proxy saw CONNECT to %v, want enrollment and tunnel", cp.tunnels)
	}
	for _, target := range cp.tunnels {
		if target != p.addr {
			t.Fatalf("CONNECT to %s, want %s", target, p.addr)
		}
	}
}

func TestPlainOrUnverifiedPlatformRefused(t *testing.T) {
	for _, raw := range []string{"http://platform.example.com", "ws://10.1.2.3:8080", "ftp://127.0.0.1"} {
		if _, err := agenttunnel.New(agenttunnel.Options{URL: raw, StateDir: t.TempDir()}); err == nil {
			t.Errorf("%s accepted without TLS", raw)
		}
	}
	if _, err := agenttunnel.ParseEndpoint("http://platform.example.com", "", true); err != nil {
		t.Errorf("platform.insecure did not allow plain http: %v", err)
	}
	if _, err := agenttunnel.ParseEndpoint("http://127.0.0.1:8080", "", false); err != nil {
		t.Errorf("plain http on loopback refused: %v", err)
	}

	// A platform whose certificate the agent cannot verify (no caFile,
	// the test CA is not in the system roots) is never talked to: no
	// enrollment token leaves the agent.
	files := tlstest.New(t)
	db := newPlatformDB()
	p := startPlatform(t, db, files, "")
	a := startAgent(t, agentConfig{url: p.URL, stateDir: t.TempDir()})
	waitFor(t, "a certificate error", func() bool { return strings.Contains(a.logs.String(), "certificate") })
	db.mu.Lock()
	defer db.mu.Unlock()
	if len(db.creds) != 0 {
		t.Fatal("the agent enrolled with an unverified platform")
	}
}

func TestForgedCredentialRefused(t *testing.T) {
	files := tlstest.New(t)
	db := newPlatformDB()
	p := startPlatform(t, db, files, "")

	// A raw websocket with a made-up credential: 401, no session.
	dialer := websocket.Dialer{TLSClientConfig: p.srv.Client().Transport.(*http.Transport).TLSClientConfig}
	hdr := http.Header{"Authorization": {"Bearer cred-forged"}, tunnel.VersionHeader: {"1"}}
	ws, resp, err := dialer.DialContext(t.Context(), "wss://"+p.addr+tunnel.TunnelPath, hdr)
	if ws != nil {
		_ = ws.Close()
	}
	if resp != nil {
		_ = resp.Body.Close()
	}
	if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("forged credential: err %v, resp %v; want 401", err, resp)
	}

	// An agent whose credential file holds a forged credential never
	// gets a session.
	state := t.TempDir()
	forged := `{"platformUrl":"` + p.URL + `","agentId":"agent-x","credential":"cred-forged"}`
	if err := os.WriteFile(filepath.Join(state, tunnel.CredentialFile), []byte(forged), 0o600); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, agentConfig{url: p.URL, stateDir: state, caFile: files.CA})
	waitFor(t, "the refusal", func() bool { return strings.Contains(a.logs.String(), "refused this agent's credential") })
	if connected(p, "agent-x") {
		t.Fatal("a forged credential got a session")
	}
	if strings.Contains(a.logs.String(), "cred-forged") {
		t.Fatal("the credential reached the agent's log")
	}
}

func TestUnknownProtocolVersionRefused(t *testing.T) {
	r := bufio.NewReader(strings.NewReader(`{"v":2,"kind":"api"}` + "\n"))
	var h tunnel.StreamHeader
	if err := tunnel.ReadLineBuffered(r, &h); err == nil || !strings.Contains(err.Error(), "version 2") {
		t.Fatalf("unknown version: %v", err)
	}
}

// A platform that requires TLS refuses a plain websocket, even from an
// agent that would allow it (loopback), before looking at the credential.
func TestPlainTunnelRefusedWhenPlatformRequiresTLS(t *testing.T) {
	db := newPlatformDB()
	var authenticated atomic.Int32
	h, err := hub.New(hub.Options{
		Authenticate: func(ctx context.Context, r *http.Request) (hub.AgentIdentity, error) {
			authenticated.Add(1)
			return db.authenticate(ctx, r)
		},
		RequireTLS:        true,
		HeartbeatInterval: testHeartbeat,
	})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(tunnel.TunnelPath, h)
	mux.HandleFunc("POST "+tunnel.EnrollPath, db.enroll)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	t.Cleanup(h.Close)

	a := startAgent(t, agentConfig{url: srv.URL, stateDir: t.TempDir()})
	waitFor(t, "the refusal", func() bool { return strings.Contains(a.logs.String(), "403") })
	id := db.agentID(t) // enrollment is the platform's other endpoint
	if _, _, ok := h.Connected(id); ok {
		t.Fatal("a plain tunnel got a session")
	}
	if authenticated.Load() != 0 {
		t.Fatal("the credential was checked on a plain connection")
	}
}

// An agent may open one events stream and nothing that is the
// platform's to open.
func TestHubRefusesStreamsAnAgentMayNotOpen(t *testing.T) {
	files := tlstest.New(t)
	db := newPlatformDB()
	db.creds["cred-raw"] = hub.AgentIdentity{AgentID: "agent-raw", OrgID: "org-1"}
	p := startPlatform(t, db, files, "")
	mux := rawSession(t, p, "cred-raw")
	open := func(h tunnel.StreamHeader) error {
		st, err := mux.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		return tunnel.Open(st, h)
	}
	for _, h := range []tunnel.StreamHeader{{Kind: tunnel.KindAPI}, {Kind: tunnel.KindTCP, Port: 5432}, {Kind: tunnel.KindControl}, {Kind: "shell"}} {
		if _, ok := errors.AsType[*tunnel.RefusedError](open(h)); !ok {
			t.Errorf("agent-opened %q stream not refused", h.Kind)
		}
	}
	if err := open(tunnel.StreamHeader{Kind: tunnel.KindEvents}); err != nil {
		t.Fatalf("events stream: %v", err)
	}
	if _, ok := errors.AsType[*tunnel.RefusedError](open(tunnel.StreamHeader{Kind: tunnel.KindEvents})); !ok {
		t.Error("a second events stream was accepted")
	}
}

func TestForgedEnrollTokenRefused(t *testing.T) {
	files := tlstest.New(t)
	db := newPlatformDB()
	p := startPlatform(t, db, files, "")
	state := t.TempDir()
	const forged = "enroll-token-forged-0000"
	a := startAgent(t, agentConfig{url: p.URL, stateDir: state, caFile: files.CA, token: forged})
	waitFor(t, "the refusal", func() bool { return strings.Contains(a.logs.String(), "refused the enrollment token") })
	if _, err := agenttunnel.LoadCredential(state); !errors.Is(err, agenttunnel.ErrNoCredential) {
		t.Fatalf("credential after a refused enrollment: %v", err)
	}
	if strings.Contains(a.logs.String(), forged) {
		t.Fatal("the enrollment token reached the log")
	}
}
