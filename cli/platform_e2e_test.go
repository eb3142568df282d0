package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/agent/clone"
	agenttunnel "github.com/thinlab/thinlab/agent/tunnel"
	"github.com/thinlab/thinlab/internal/tlstest"
	"github.com/thinlab/thinlab/platform/api"
	"github.com/thinlab/thinlab/platform/hub"
	"github.com/thinlab/thinlab/platform/platformtest"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/platform/server"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/agentapi"
	"github.com/thinlab/thinlab/sdk/platformapi"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

// testReplica is the replica ID the test's hub records connections under.
const testReplica = "cli-e2e-replica"

// tunnelPlatform is a real platform (platformtest: real database, real
// access chain and routes) with a real hub that agents reach over TLS,
// served behind one https address.
type tunnelPlatform struct {
	env *platformtest.Env
	hub *hub.Hub
	URL string
	CA  string
}

// startTunnelPlatform starts the platform with a hub. Until platform/server
// mounts its own hub (the other half of issue 10), the test builds one and
// plugs it in through server.Options.Tunnels: it authenticates agents by
// the credential the platform's enrollment issued and records their
// connection state in the platform database, as platform/server will.
func startTunnelPlatform(t *testing.T) *tunnelPlatform {
	t.Helper()
	tp := &tunnelPlatform{}
	if _, own := any((*server.Server)(nil)).(interface{ Hub() *hub.Hub }); own {
		// The platform mounts its own hub and engine proxy (platform/
		// server wires them once both halves of issue 10 are merged): the
		// test then runs against those, and the clone connection route
		// must reach agents through the same hub.
		tp.env = platformtest.New(t)
		tp.hub = any(tp.env.Server).(interface{ Hub() *hub.Hub }).Hub()
		tp.serveTLS(t, tp.env.HTTP.Config.Handler)
		return tp
	}
	var st *store.Store // set below, before any agent connects
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	h, err := hub.New(hub.Options{
		Authenticate: func(ctx context.Context, r *http.Request) (hub.AgentIdentity, error) {
			cred, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok {
				return hub.AgentIdentity{}, errors.New("no bearer credential")
			}
			id, err := st.AuthenticateAgent(ctx, cred)
			if err != nil {
				return hub.AgentIdentity{}, err
			}
			return hub.AgentIdentity{AgentID: id.AgentID, OrgID: id.OrgID}, nil
		},
		OnConnect: func(ctx context.Context, a hub.AgentIdentity, _ tunnel.AgentFacts) {
			if err := st.MarkAgentConnected(ctx, a.AgentID, testReplica, time.Now()); err != nil {
				t.Errorf("mark agent %s connected: %v", a.AgentID, err)
			}
		},
		OnDisconnect: func(a hub.AgentIdentity) {
			_, _ = st.MarkAgentDisconnected(context.Background(), a.AgentID, testReplica, time.Now()) // after the test's end the database may be gone
		},
		Logger:            logger,
		HeartbeatInterval: 300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	tp.hub = h
	tp.env = platformtest.New(t, platformtest.WithOptions(func(o *server.Options) {
		o.Tunnels = h
		o.AgentDisconnector = h
	}))
	st = tp.env.Store
	t.Cleanup(h.Close) // after the server below
	mux := http.NewServeMux()
	mux.Handle(tunnel.TunnelPath, h)
	mux.Handle("/api/v1/orgs/{org}/agents/{agent}/engine/{rest...}", engineProxyStandIn(tp.env.URL, h))
	mux.Handle("/", tp.env.HTTP.Config.Handler)
	tp.serveTLS(t, mux)
	return tp
}

// serveTLS serves handler on https with a certificate of a test CA: the
// agents' tunnels and the CLI verify it.
func (tp *tunnelPlatform) serveTLS(t *testing.T, handler http.Handler) {
	t.Helper()
	files := tlstest.New(t)
	tp.CA = files.CA
	srv := httptest.NewUnstartedServer(handler)
	cert, err := tls.LoadX509KeyPair(files.Cert, files.Key)
	if err != nil {
		t.Fatal(err)
	}
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	tp.URL = srv.URL
}

// engineProxyStandIn stands in for the platform's engine proxy
// (/api/v1/orgs/{org}/agents/{agent}/engine/*, built on another branch)
// with the same contract: the caller's personal token must see the agent
// on the platform (the real access chain answers GET .../agents/{agent}),
// then the request goes to the agent's API unchanged through the tunnel.
// Per-route permissions and audit are the real proxy's; this test covers
// the CLI and the clone connection route.
func engineProxyStandIn(platformURL string, h *hub.Hub) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The test's own platform, with the path's names escaped.
		check, err := http.NewRequestWithContext(r.Context(), http.MethodGet, platformURL+"/api/v1/orgs/"+url.PathEscape(r.PathValue("org"))+"/agents/"+url.PathEscape(r.PathValue("agent")), nil) //nolint:gosec // G704: the test platform's URL
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		check.Header.Set("Authorization", r.Header.Get("Authorization"))
		resp, err := http.DefaultClient.Do(check) //nolint:gosec // G704: the test platform's URL
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		if resp.StatusCode != http.StatusOK {
			defer func() { _ = resp.Body.Close() }()
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(resp.StatusCode)
			_, _ = io.Copy(w, resp.Body)
			return
		}
		_ = resp.Body.Close()
		out := r.Clone(r.Context())
		out.URL.Path, out.URL.RawPath = "/"+r.PathValue("rest"), ""
		out.RequestURI = ""
		out.Header.Del("Authorization")
		ans, err := h.RoundTripper(r.PathValue("agent")).RoundTrip(out)
		if err != nil {
			http.Error(w, `{"error":{"code":"agent_unavailable","message":"agent is not connected"}}`, http.StatusServiceUnavailable)
			return
		}
		defer func() { _ = ans.Body.Close() }()
		maps.Copy(w.Header(), ans.Header)
		w.WriteHeader(ans.StatusCode)
		_, _ = io.Copy(w, ans.Body)
	})
}

// tunnelAgent is a real agent (real pool, clone manager and API) whose
// tunnel client connects it to the platform.
type tunnelAgent struct {
	id     string
	mgr    *clone.Manager
	cancel context.CancelFunc
	done   chan struct{}
}

// startTunnelAgent enrolls a real agent named name into org with a fresh
// enrollment token and waits until the platform shows it connected.
func startTunnelAgent(t *testing.T, tp *tunnelPlatform, org *store.Organization, owner *store.User, name string, snapshots ...[]string) *tunnelAgent {
	t.Helper()
	srv, m, _, _ := startAgentServer(t, snapshots...)
	_, secret, err := tp.env.Store.CreateEnrollmentToken(t.Context(), org.ID, owner.ID, name, time.Now().Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := agenttunnel.New(agenttunnel.Options{
		URL:         tp.URL,
		CAFile:      tp.CA,
		EnrollToken: secret,
		StateDir:    t.TempDir(),
		API:         srv.Handler(),
		APIToken:    itToken,
		// As the agent does: ready clones' ports only.
		CloneTarget: func(port int) bool {
			return slices.ContainsFunc(m.List(), func(c clone.Clone) bool { return c.Port == port && c.Status == clone.StatusOK })
		},
		Facts:             func() tunnel.AgentFacts { return tunnel.AgentFacts{Name: name, Version: "test"} },
		Logger:            slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Backoff:           agenttunnel.Backoff{Min: 20 * time.Millisecond, Max: 300 * time.Millisecond},
		HeartbeatInterval: 300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background()) // ended by stop
	a := &tunnelAgent{mgr: m, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(a.done)
		_ = c.Run(ctx) // nil when ctx ends
	}()
	t.Cleanup(func() { a.stop(); _ = c.Close() })
	waitUntil(t, "agent "+name+" connected", func() bool {
		agents, err := tp.env.Store.ListAgents(t.Context(), org.ID)
		if err != nil {
			t.Fatal(err)
		}
		for _, ag := range agents {
			if ag.Name == name && ag.Connected() {
				if _, _, ok := tp.hub.Connected(ag.ID); ok {
					a.id = ag.ID
					return true
				}
			}
		}
		return false
	})
	return a
}

func (a *tunnelAgent) stop() {
	a.cancel()
	<-a.done
}

// waitUntil polls cond; the bound only keeps a broken test from hanging.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lockedBuffer is a buffer a running command writes while the test reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestCLIThroughPlatform drives the client commands through a real
// platform and a real agent tunnel: a platform context, clone
// create/list/status/destroy with --agent, `thinlab connect` running real
// psql over the clone connection route, `thinlab port-forward` used by
// pgx, and the refusals: another organization's token, a clone of another
// agent, ports that are not a live clone's, a role without clone:connect,
// a disconnected agent.
func TestCLIThroughPlatform(t *testing.T) {
	cfgPath := isolate(t)
	t.Setenv("THINLAB_PSQL", realPsql(t))
	tp := startTunnelPlatform(t)
	env := tp.env
	ctx := t.Context()

	owner := env.User("ann@acme.example")
	org := env.Org("acme", owner)
	token := env.Token(org, owner)
	db1 := startTunnelAgent(t, tp, org, owner, "db1",
		[]string{"CREATE TABLE t (v text)", "INSERT INTO t VALUES ('through the platform')"})
	db2 := startTunnelAgent(t, tp, org, owner, "db2")

	// The organization is defaulted from the token; the agent is the
	// context's default.
	mustRun(t, "context", "add", "cloud", "--platform", tp.URL, "--token", token, "--ca-file", tp.CA, "--agent", "db1")
	out, _ := mustRun(t, "context", "list")
	if !strings.Contains(out, "platform, org acme, agent db1") {
		t.Fatalf("context list:\n%s", out)
	}

	out, _ = mustRun(t, "status", "-o", "json")
	if st := decode[agentapi.InstanceStatus](t, out); len(st.Pools) != 1 {
		t.Fatalf("status through the platform: %s", out)
	}
	t.Setenv(envClonePassword, itPassword)
	out, _ = mustRun(t, "clone", "create", "--id", "c1", "--username", "alice", "-o", "json")
	cl := decode[agentapi.Clone](t, out)
	if cl.ID != "c1" || cl.Status.Code != agentapi.StatusOK {
		t.Fatalf("clone create through the platform: %s", out)
	}
	t.Setenv(envClonePassword, "")
	out, _ = mustRun(t, "clone", "list", "-o", "json")
	if cls := decode[[]agentapi.Clone](t, out); len(cls) != 1 || cls[0].ID != "c1" {
		t.Fatalf("clone list: %s", out)
	}
	// db2 has no clones: --agent overrides the context's agent, and so
	// does THINLAB_AGENT.
	out, _ = mustRun(t, "clone", "list", "--agent", "db2", "-o", "json")
	if cls := decode[[]agentapi.Clone](t, out); len(cls) != 0 {
		t.Fatalf("clone list --agent db2: %s", out)
	}
	t.Setenv("THINLAB_AGENT", "db2")
	out, _ = mustRun(t, "clone", "list", "-o", "json")
	if cls := decode[[]agentapi.Clone](t, out); len(cls) != 0 {
		t.Fatalf("clone list with THINLAB_AGENT=db2: %s", out)
	}
	t.Setenv("THINLAB_AGENT", "")

	// connect: real psql on a local forward, with the password saved by
	// clone create (PGPASSWORD).
	out, _ = mustRun(t, "connect", "c1", "--", "-XAtc", "select v || ' as ' || current_user from t")
	if got := strings.TrimSpace(out); got != "through the platform as alice" {
		t.Fatalf("psql through the platform: %q", got)
	}

	// port-forward until cancelled, used by pgx: two connections, each
	// over its own websocket.
	port, stopPF := startPortForward(t, "c1")
	for range 2 {
		if v := queryThroughForward(t, port, "select v from t"); v != "through the platform" {
			t.Fatalf("query through port-forward: %q", v)
		}
	}
	stopPF()

	// The connections are audited when opened and when closed.
	var opened, closed int
	waitUntil(t, "the close audit events", func() bool {
		opened, closed = 0, 0
		for _, ev := range env.AuditEvents() {
			if ev.Target != db1.id+"/c1" || ev.Result != store.ResultSuccess {
				continue
			}
			switch ev.Action {
			case api.ActionCloneConnect:
				opened++
			case api.ActionCloneDisconnect:
				closed++
			}
		}
		return closed >= opened && opened >= 3
	})

	// Refusals.
	pc := platformapi.NewClient(tp.URL, token)
	pc.HTTP = tlsClient(t, tp.CA)
	// A clone of db1 asked through db2: db2 does not have it.
	_, err := pc.DialClone(ctx, "acme", db2.id, "c1")
	if !platformapi.IsStatus(err, http.StatusNotFound) || !strings.Contains(err.Error(), "not found on agent db2") {
		t.Errorf("c1 through db2: %v, want 404 not found on agent db2", err)
	}
	code, _, errOut := runCLI(t, "", "connect", "c1", "--agent", "db2")
	if code == 0 || !strings.Contains(errOut, "not found") {
		t.Errorf("connect c1 --agent db2: exit %d %s", code, errOut)
	}
	// Another organization's member, with their token, is told the
	// organization does not exist, on the route and in the CLI.
	ownerB := env.User("bob@b.example")
	orgB := env.Org("org-b", ownerB)
	tokenB := env.Token(orgB, ownerB)
	pcB := platformapi.NewClient(tp.URL, tokenB)
	pcB.HTTP = tlsClient(t, tp.CA)
	if _, err := pcB.DialClone(ctx, "acme", db1.id, "c1"); !platformapi.IsStatus(err, http.StatusNotFound) || !strings.Contains(err.Error(), "organization not found") {
		t.Errorf("org B's token on acme's clone: %v, want 404 organization not found", err)
	}
	if _, err := pcB.DialClone(ctx, "org-b", db1.id, "c1"); !platformapi.IsStatus(err, http.StatusNotFound) || !strings.Contains(err.Error(), "agent not found") {
		t.Errorf("acme's agent under org B: %v, want 404 agent not found", err)
	}
	mustRun(t, "context", "add", "intruder", "--platform", tp.URL, "--token", tokenB, "--ca-file", tp.CA, "--org", "acme", "--agent", "db1")
	code, _, errOut = runCLI(t, "", "connect", "c1", "--context", "intruder")
	if code == 0 || !strings.Contains(errOut, "organization not found") {
		t.Errorf("connect with org B's token: exit %d %s", code, errOut)
	}
	// A viewer may see agents but not connect to clones.
	viewer := env.Member(org, "vic@acme.example", rbac.Viewer)
	pcV := platformapi.NewClient(tp.URL, env.Token(org, viewer))
	pcV.HTTP = tlsClient(t, tp.CA)
	if _, err := pcV.DialClone(ctx, "acme", db1.id, "c1"); !platformapi.IsStatus(err, http.StatusForbidden) || !strings.Contains(err.Error(), "clone:connect") {
		t.Errorf("viewer: %v, want 403 naming clone:connect", err)
	}
	// A clone ID that is not one never reaches the agent.
	if _, err := pc.DialClone(ctx, "acme", db1.id, "..%2fstatus"); !platformapi.IsStatus(err, http.StatusBadRequest) {
		t.Errorf("clone ID ../status: %v, want 400", err)
	}
	// Ports that are not a live clone's are refused by the agent itself,
	// whoever asks: the platform's own HTTP port, 22, and db1's
	// clone port through db2.
	c1Port, _ := strconv.Atoi(cl.DB.Port)
	for _, target := range []struct {
		agent string
		port  int
	}{{db1.id, listenPort(t, tp.env.URL)}, {db1.id, 22}, {db2.id, c1Port}} {
		conn, err := tp.hub.DialClone(ctx, target.agent, target.port)
		if _, ok := errors.AsType[*tunnel.RefusedError](err); !ok {
			if conn != nil {
				_ = conn.Close()
			}
			t.Errorf("stream to port %d via agent %s: %v, want refused", target.port, target.agent, err)
		}
	}

	// An unknown agent lists the organization's agents.
	code, _, errOut = runCLI(t, "", "status", "--agent", "nope")
	if code != exitUsage || !strings.Contains(errOut, `--agent: no agent "nope" in organization acme`) || !strings.Contains(errOut, "db1 (connected)") {
		t.Errorf("unknown agent: exit %d %s", code, errOut)
	}
	// A disconnected agent is named as such.
	db2.stop()
	waitUntil(t, "db2 disconnected", func() bool {
		ag, err := env.Store.AgentByID(ctx, org.ID, db2.id)
		return err == nil && !ag.Connected()
	})
	code, _, errOut = runCLI(t, "", "status", "--agent", "db2")
	if code == 0 || !strings.Contains(errOut, "agent db2 (from --agent) is disconnected") {
		t.Errorf("disconnected agent: exit %d %s", code, errOut)
	}

	// Destroy through the platform; the saved password goes with it.
	mustRun(t, "clone", "destroy", "c1")
	out, _ = mustRun(t, "clone", "list", "-o", "json")
	if cls := decode[[]agentapi.Clone](t, out); len(cls) != 0 {
		t.Fatalf("clone list after destroy: %s", out)
	}
	if len(db1.mgr.List()) != 0 {
		t.Errorf("the agent still has clones: %+v", db1.mgr.List())
	}
	if raw, err := os.ReadFile(cfgPath); err != nil || strings.Contains(string(raw), itPassword) {
		t.Errorf("saved password left after destroy (%v)", err)
	}
}

// startPortForward runs `thinlab port-forward CLONE args...` in-process
// until stop (as Ctrl-C does) and returns the port it printed.
func startPortForward(t *testing.T, clone string, args ...string) (string, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	var out, errOut lockedBuffer
	done := make(chan error, 1)
	go func() {
		root := NewRootCommand()
		root.SetArgs(append([]string{"port-forward", clone}, args...))
		root.SetIn(strings.NewReader(""))
		root.SetOut(&out)
		root.SetErr(&errOut)
		done <- root.ExecuteContext(ctx)
	}()
	portRe := regexp.MustCompile(`Forwarding 127\.0\.0\.1:(\d+) to clone ` + regexp.QuoteMeta(clone))
	var port string
	waitUntil(t, "port-forward to print its port", func() bool {
		select {
		case err := <-done:
			cancel()
			t.Fatalf("port-forward ended early: %v\n%s", err, errOut.String())
		default:
		}
		if m := portRe.FindStringSubmatch(out.String()); m != nil {
			port = m[1]
		}
		return port != ""
	})
	if !strings.Contains(out.String(), "host='127.0.0.1' port='"+port+"' user=") {
		t.Errorf("port-forward prints no connection string:\n%s", out.String())
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("port-forward after Ctrl-C: %v\n%s", err, errOut.String())
		}
	}
	t.Cleanup(stop)
	return port, stop
}

// queryThroughForward runs sql with pgx as alice through a forwarded port
// and returns the one text value.
func queryThroughForward(t *testing.T, port, sql string) string {
	t.Helper()
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, "host=127.0.0.1 port="+port+" user=alice dbname=postgres sslmode=disable password="+itPassword)
	if err != nil {
		t.Fatalf("pgx through port-forward: %v", err)
	}
	defer func() { _ = conn.Close(ctx) }()
	var v string
	if err := conn.QueryRow(ctx, sql).Scan(&v); err != nil {
		t.Fatalf("query through port-forward: %v", err)
	}
	return v
}

// tlsClient trusts the test CA.
func tlsClient(t *testing.T, caFile string) *http.Client {
	t.Helper()
	hc, err := agentapi.NewHTTPClient(caFile, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return hc
}

// listenPort is the port of an http://host:port URL.
func listenPort(t *testing.T, u string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(strings.TrimPrefix(u, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
