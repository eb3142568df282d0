// Package hub is the platform's end of the agent tunnels (sdk/tunnel):
// an http.Handler that accepts agents' websockets at tunnel.TunnelPath,
// holds one session per agent and lets the rest of the platform call an
// agent's API (RoundTripper, Do) and open TCP streams to its clones
// (DialClone). Who an agent is, what happens when it connects and where
// its events go are pluggable functions, so the hub knows no database.
//
// The hub is one replica's view: an agent is connected to exactly one
// replica at a time. With Options.Locate, streams for an agent held by
// another replica are relayed through it (relay.go).
package hub

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/yamux"

	"github.com/thinlab/thinlab/sdk/tunnel"
)

// AgentIdentity is who a tunnel belongs to, as established by
// Authenticate from the agent's credential.
type AgentIdentity struct {
	AgentID string
	OrgID   string
}

// Options configure a Hub. Authenticate is required.
type Options struct {
	// Authenticate checks the agent's credential (Authorization: Bearer)
	// and says who it is. An error answers 401 and no session is made;
	// it must not reveal why (the error is logged, never the credential).
	Authenticate func(ctx context.Context, r *http.Request) (AgentIdentity, error)
	// OnConnect is called when an agent's session is established, with the
	// facts it sent (and again with ControlFacts updates). It must return
	// quickly.
	OnConnect func(ctx context.Context, agent AgentIdentity, facts tunnel.AgentFacts)
	// OnDisconnect is called once when a session ends (not when it was
	// replaced by a newer one of the same agent: that one's OnConnect
	// comes first).
	OnDisconnect func(agent AgentIdentity)
	// OnHeartbeat is called after each answered heartbeat (every
	// HeartbeatInterval per agent); it must return quickly. Nil: none.
	OnHeartbeat func(agent AgentIdentity, at time.Time)
	// OnEvents stores a batch of the agent's events; the agent gets its ack
	// only after it returns nil. It must drop events whose ID it already
	// holds for this agent (a batch may come again after a reconnect).
	// Event IDs are chosen by the agent: deduplicate per agent, never
	// across agents, or one agent could suppress another's events. Nil
	// refuses events (never acked, the agent keeps them).
	OnEvents func(ctx context.Context, agentID string, events []tunnel.Event) error
	Logger   *slog.Logger
	// HeartbeatInterval is how often the hub pings each agent; an
	// unanswered ping (after the same time again) ends the session.
	// tunnel.HeartbeatInterval when zero; tests shorten it.
	HeartbeatInterval time.Duration
	// RequireTLS refuses tunnels that did not arrive over TLS at this
	// server (r.TLS is nil) with 403, before authentication, so that no
	// credential is accepted in clear. Leave it off only behind a proxy
	// that terminates TLS, or for development.
	RequireTLS bool
	// MaxIdleAPIConns bounds the idle HTTP connections (streams) kept per
	// agent for API calls (4 when zero).
	MaxIdleAPIConns int

	// Locate, with several replicas, returns the relay base URL of the
	// replica holding agentID's tunnel ("" when none); streams for agents
	// not connected here are relayed there (relay.go). Nil: one replica.
	Locate func(ctx context.Context, agentID string) (string, error)
	// RelayURL is this replica's own base URL as other replicas reach it
	// (what Locate returns for agents held here).
	RelayURL string
	// RelaySecret signs relayed requests between replicas; required when
	// Locate is set (every replica has the same).
	RelaySecret []byte
	// RelayTLS configures TLS towards other replicas (nil: system roots).
	RelayTLS *tls.Config
}

// maxAPIConns bounds the API streams open to one agent at a time; more
// requests wait for one (back-pressure instead of a pile of streams).
const maxAPIConns = 32

// Hub holds the agents' sessions of this replica.
type Hub struct {
	opt      Options
	log      *slog.Logger
	upgrader websocket.Upgrader

	mu       sync.Mutex
	sessions map[string]*session
	closed   bool // after Close no session is registered

	relayMu         sync.Mutex
	relayTransports map[string]*http.Transport
}

// New returns a hub; mount it at tunnel.TunnelPath.
func New(opt Options) (*Hub, error) {
	if opt.Authenticate == nil {
		return nil, errors.New("hub: Options.Authenticate is required")
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.HeartbeatInterval <= 0 {
		opt.HeartbeatInterval = tunnel.HeartbeatInterval
	}
	if opt.MaxIdleAPIConns <= 0 {
		opt.MaxIdleAPIConns = 4
	}
	if opt.Locate != nil && len(opt.RelaySecret) < 32 {
		return nil, errors.New("hub: Options.RelaySecret of at least 32 bytes is required with Locate (several replicas)")
	}
	return &Hub{
		opt:      opt,
		log:      opt.Logger,
		sessions: map[string]*session{},
		upgrader: websocket.Upgrader{
			HandshakeTimeout: 10 * time.Second,
			ReadBufferSize:   32 << 10,
			WriteBufferSize:  32 << 10,
			// Agents are programs, not browsers: there is no Origin to
			// check, and authentication is by credential.
			CheckOrigin: func(*http.Request) bool { return true },
		},
	}, nil
}

// ErrNotConnected is returned for an agent without a session here.
var ErrNotConnected = errors.New("hub: agent is not connected")

// session is one agent's live tunnel.
type session struct {
	id        AgentIdentity
	mux       *yamux.Session
	since     time.Time
	transport *http.Transport

	mu            sync.Mutex
	lastHeartbeat time.Time
	eventsOpen    bool // one events stream per session

	done chan struct{} // closed when the session has ended

	// read are the streams someone may be blocked reading: control and
	// events for the session's life, API and TCP streams until closed
	// (see close).
	read map[net.Conn]struct{}
}

// close ends the session. Reads blocked on its streams are made to
// return first: with yamux v0.1.2 a Read waiting on a stream of a
// session that is being closed here spins (the closed shutdown channel
// is always ready, and the stream's state changes only after the
// receive loop has ended; hashicorp/yamux#127, #176), burning a whole
// time slice per reader. Closing 1,000 sessions at once took the hub
// 10-20 s of CPU that way (BenchmarkFleet); an expired read deadline
// makes those reads return at once.
func (s *session) close() {
	s.mu.Lock()
	for c := range s.read {
		_ = c.SetReadDeadline(time.Unix(1, 0))
	}
	s.mu.Unlock()
	_ = s.mux.Close()
}

// readAll registers c as read until the session ends.
func (s *session) readAll(c net.Conn) {
	s.mu.Lock()
	s.read[c] = struct{}{}
	s.mu.Unlock()
}

// readUntilClosed registers st as read until its Close (or the session's
// end) and returns it with that Close.
func (s *session) readUntilClosed(st net.Conn) net.Conn {
	s.readAll(st)
	return &openedStream{Conn: st, s: s}
}

// openedStream is a stream the hub opened, handed to callers.
type openedStream struct {
	net.Conn
	s    *session
	once sync.Once
}

func (o *openedStream) Close() error {
	o.once.Do(func() {
		o.s.mu.Lock()
		delete(o.s.read, o.Conn)
		o.s.mu.Unlock()
	})
	return o.Conn.Close()
}

func (s *session) heartbeat() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastHeartbeat
}

func (s *session) beat(t time.Time) {
	s.mu.Lock()
	s.lastHeartbeat = t
	s.mu.Unlock()
}

// ServeHTTP authenticates the agent, upgrades to a websocket and serves
// the session until it ends.
func (h *Hub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		http.Error(w, "the tunnel is a websocket: use GET with Upgrade", http.StatusMethodNotAllowed)
		return
	}
	if h.isClosed() {
		// Before any handshake: a closing replica spends nothing on the
		// agents its Close just let go.
		http.Error(w, "this platform replica is shutting down: connect again", http.StatusServiceUnavailable)
		return
	}
	if h.opt.RequireTLS && r.TLS == nil {
		h.log.Warn("tunnel: refused a connection without TLS", "remote", r.RemoteAddr)
		http.Error(w, "the agent tunnel requires TLS: use an https platform URL", http.StatusForbidden)
		return
	}
	id, err := h.opt.Authenticate(r.Context(), r)
	if err != nil || id.AgentID == "" {
		h.log.Warn("tunnel: agent authentication refused", "remote", r.RemoteAddr, "err", err)
		http.Error(w, "agent credential refused", http.StatusUnauthorized)
		return
	}
	if v := r.Header.Get(tunnel.VersionHeader); v != strconv.Itoa(tunnel.ProtocolVersion) {
		http.Error(w, fmt.Sprintf("tunnel protocol version %q is not supported: this platform speaks %d", v, tunnel.ProtocolVersion), http.StatusBadRequest)
		return
	}
	ws, err := h.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader has answered
	}
	// The session outlives the request's context only as long as the
	// connection: ServeHTTP returns when the session ends.
	h.serve(context.WithoutCancel(r.Context()), id, tunnel.NewConn(ws))
}

func (h *Hub) serve(ctx context.Context, id AgentIdentity, conn net.Conn) {
	log := h.log.With("agent", id.AgentID)
	cfg := tunnel.YamuxConfig(h.opt.HeartbeatInterval, io.Discard)
	// The hub pings itself (heartbeat below) to record the last answer.
	cfg.EnableKeepAlive = false
	mux, err := yamux.Server(conn, cfg)
	if err != nil {
		_ = conn.Close()
		log.Error("tunnel: starting the multiplexer failed", "err", err)
		return
	}
	defer func() { _ = mux.Close() }()

	// The first stream is the agent's control stream with its Hello.
	hsCtx, cancel := context.WithTimeout(ctx, 2*h.opt.HeartbeatInterval+10*time.Second)
	ctrl, hello, err := acceptHello(hsCtx, mux)
	cancel()
	if err != nil {
		log.Warn("tunnel: handshake failed", "err", err)
		return
	}
	s := &session{id: id, mux: mux, since: time.Now(), done: make(chan struct{}), read: map[net.Conn]struct{}{ctrl: {}}}
	s.lastHeartbeat = s.since
	s.transport = h.newTransport(s)
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		log.Info("tunnel: hub closed; connection refused")
		return
	}
	old := h.sessions[id.AgentID]
	h.sessions[id.AgentID] = s
	h.mu.Unlock()
	if old != nil {
		log.Info("tunnel: a newer connection replaces the agent's previous one")
		old.close()
	}
	if h.opt.OnConnect != nil {
		h.opt.OnConnect(ctx, id, hello.Facts)
	}
	log.Info("tunnel: agent connected", "version", hello.Facts.Version, "name", hello.Facts.Name)
	// Welcome goes out once the session is registered: an agent that has
	// it can be reached.
	if err := tunnel.WriteLine(ctrl, tunnel.Welcome{V: tunnel.ProtocolVersion, AgentID: id.AgentID, OrganizationID: id.OrgID}); err != nil {
		log.Warn("tunnel: handshake failed", "err", err)
		_ = mux.Close()
	}

	go h.heartbeat(s)
	go h.readControl(ctx, s, ctrl)
	go h.acceptStreams(ctx, s)

	<-mux.CloseChan()
	h.mu.Lock()
	replaced := h.sessions[id.AgentID] != s
	if !replaced {
		delete(h.sessions, id.AgentID)
	}
	h.mu.Unlock()
	// Only now: Disconnect and Close return on done, and their callers
	// must no longer see the agent connected here.
	close(s.done)
	s.transport.CloseIdleConnections()
	if !replaced {
		log.Info("tunnel: agent disconnected")
		if h.opt.OnDisconnect != nil {
			h.opt.OnDisconnect(id)
		}
	}
}

func acceptHello(ctx context.Context, mux *yamux.Session) (net.Conn, tunnel.Hello, error) {
	var hello tunnel.Hello
	st, err := mux.AcceptStreamWithContext(ctx)
	if err != nil {
		return nil, hello, fmt.Errorf("no control stream: %w", err)
	}
	deadline, _ := ctx.Deadline()
	_ = st.SetReadDeadline(deadline)
	var hdr tunnel.StreamHeader
	if err := tunnel.ReadLine(st, &hdr); err != nil {
		_ = tunnel.Refuse(st, err.Error())
		return nil, hello, err
	}
	if hdr.Kind != tunnel.KindControl {
		_ = tunnel.Refuse(st, "the first stream must be the control stream")
		return nil, hello, fmt.Errorf("first stream is %q, not control", hdr.Kind)
	}
	if err := tunnel.Accept(st); err != nil {
		return nil, hello, err
	}
	if err := tunnel.ReadLine(st, &hello); err != nil {
		return nil, hello, fmt.Errorf("hello: %w", err)
	}
	_ = st.SetReadDeadline(time.Time{})
	return st, hello, nil
}

// heartbeat pings the agent; a ping unanswered in time ends the session,
// so a silently lost agent is marked disconnected within two intervals.
func (h *Hub) heartbeat(s *session) {
	t := time.NewTicker(h.opt.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		if _, err := s.mux.Ping(); err != nil {
			h.log.Warn("tunnel: agent stopped answering heartbeats", "agent", s.id.AgentID, "err", err)
			s.close()
			return
		}
		now := time.Now()
		s.beat(now)
		if h.opt.OnHeartbeat != nil {
			h.opt.OnHeartbeat(s.id, now)
		}
	}
}

// readControl applies the agent's control messages (facts updates).
func (h *Hub) readControl(ctx context.Context, s *session, ctrl net.Conn) {
	defer func() { _ = ctrl.Close() }()
	br := bufio.NewReader(ctrl)
	for {
		var m tunnel.ControlMessage
		if err := tunnel.ReadLineBuffered(br, &m); err != nil {
			return
		}
		if m.Type == tunnel.ControlFacts && m.Facts != nil && h.opt.OnConnect != nil {
			h.opt.OnConnect(ctx, s.id, *m.Facts)
		}
	}
}

// acceptStreams serves the streams the agent opens: only events.
func (h *Hub) acceptStreams(ctx context.Context, s *session) {
	for {
		st, err := s.mux.AcceptStream()
		if err != nil {
			return
		}
		go h.serveStream(ctx, s, st)
	}
}

func (h *Hub) serveStream(ctx context.Context, s *session, st *yamux.Stream) {
	defer func() { _ = st.Close() }()
	_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
	var hdr tunnel.StreamHeader
	if err := tunnel.ReadLine(st, &hdr); err != nil {
		_ = tunnel.Refuse(st, err.Error())
		return
	}
	_ = st.SetReadDeadline(time.Time{})
	if hdr.Kind != tunnel.KindEvents {
		_ = tunnel.Refuse(st, fmt.Sprintf("stream kind %q cannot be opened by an agent", hdr.Kind))
		return
	}
	s.mu.Lock()
	second := s.eventsOpen
	s.eventsOpen = true
	s.mu.Unlock()
	if second {
		_ = tunnel.Refuse(st, "this session already has an events stream")
		return
	}
	if err := tunnel.Accept(st); err != nil {
		return
	}
	s.readAll(st)
	h.serveEvents(ctx, s, st)
}

// serveEvents stores each batch through OnEvents and acks it only then.
// One batch at a time: the agent waits for the ack before the next, so
// nothing queues here.
func (h *Hub) serveEvents(ctx context.Context, s *session, st *yamux.Stream) {
	br := bufio.NewReader(st)
	for {
		var b tunnel.EventBatch
		if err := tunnel.ReadLineBuffered(br, &b); err != nil {
			return
		}
		ack := tunnel.EventAck{V: tunnel.ProtocolVersion, Seq: b.Seq}
		switch {
		case len(b.Events) > tunnel.MaxEventsPerBatch:
			ack.Error = fmt.Sprintf("batch of %d events is over the limit of %d", len(b.Events), tunnel.MaxEventsPerBatch)
		case h.opt.OnEvents == nil:
			ack.Error = "this platform does not store events"
		default:
			if err := h.opt.OnEvents(ctx, s.id.AgentID, b.Events); err != nil {
				h.log.Error("tunnel: storing agent events failed", "agent", s.id.AgentID, "err", err)
				ack.Error = "storing the events failed; retry later"
			}
		}
		if err := tunnel.WriteLine(st, ack); err != nil {
			return
		}
	}
}

func (h *Hub) isClosed() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.closed
}

func (h *Hub) get(agentID string) (*session, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s, ok := h.sessions[agentID]
	if !ok {
		return nil, ErrNotConnected
	}
	return s, nil
}

// open opens a stream of kind to the agent and waits for its answer.
func (s *session) open(ctx context.Context, h tunnel.StreamHeader) (net.Conn, error) {
	st, err := s.mux.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("hub: opening a stream to agent %s: %w", s.id.AgentID, err)
	}
	if d, ok := ctx.Deadline(); ok {
		_ = st.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { _ = st.Close() })
	err = tunnel.Open(st, h)
	stop()
	if err != nil {
		_ = st.Close()
		return nil, err
	}
	_ = st.SetDeadline(time.Time{})
	return s.readUntilClosed(st), nil
}

// DialClone opens a TCP stream to port on the agent's host; the agent
// refuses (a *tunnel.RefusedError) unless port belongs to a live clone.
func (h *Hub) DialClone(ctx context.Context, agentID string, port int) (net.Conn, error) {
	hdr := tunnel.StreamHeader{Kind: tunnel.KindTCP, Port: port}
	s, err := h.get(agentID)
	if err != nil {
		return h.relay(ctx, agentID, hdr)
	}
	return s.open(ctx, hdr)
}

// apiHost is the host name API requests are sent to; the agent ignores it.
const apiHost = "agent.tunnel"

func (h *Hub) newTransport(s *session) *http.Transport {
	return &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return s.open(ctx, tunnel.StreamHeader{Kind: tunnel.KindAPI})
		},
		MaxIdleConns:          h.opt.MaxIdleAPIConns,
		MaxIdleConnsPerHost:   h.opt.MaxIdleAPIConns,
		MaxConnsPerHost:       maxAPIConns,
		IdleConnTimeout:       time.Minute,
		ResponseHeaderTimeout: 10 * time.Minute, // POST /snapshot may take minutes
		DisableCompression:    true,
	}
}

// RoundTripper returns an http.RoundTripper that sends requests to the
// agent's API through its current session (whichever connection is live
// at the time of each request). The request's scheme and host are
// ignored; its path is the agent API path (e.g. /status).
func (h *Hub) RoundTripper(agentID string) http.RoundTripper {
	return roundTripper{h: h, agentID: agentID}
}

type roundTripper struct {
	h       *Hub
	agentID string
}

func (rt roundTripper) RoundTrip(r *http.Request) (*http.Response, error) {
	var t *http.Transport
	if s, err := rt.h.get(rt.agentID); err == nil {
		t = s.transport
	} else if rt.h.opt.Locate != nil {
		t = rt.h.relayTransport(rt.agentID)
	} else {
		return nil, err
	}
	r2 := r.Clone(r.Context())
	u := *r.URL
	u.Scheme, u.Host = "http", apiHost
	r2.URL = &u
	r2.Host = apiHost
	return t.RoundTrip(r2)
}

// Do sends r to the agent's API (see RoundTripper).
func (h *Hub) Do(agentID string, r *http.Request) (*http.Response, error) {
	return h.RoundTripper(agentID).RoundTrip(r)
}

// Disconnect closes the agent's session at once (revocation). The agent
// reconnects unless its credential is refused from now on.
func (h *Hub) Disconnect(agentID string) {
	s, err := h.get(agentID)
	if err != nil {
		// Held by another replica: ask it to close the tunnel.
		h.disconnectRemote(agentID)
		return
	}
	s.close()
	<-s.done
}

// Connected reports whether the agent has a session here, since when and
// when it last answered a heartbeat.
func (h *Hub) Connected(agentID string) (since, lastHeartbeat time.Time, ok bool) {
	s, err := h.get(agentID)
	if err != nil {
		return time.Time{}, time.Time{}, false
	}
	return s.since, s.heartbeat(), true
}

// Close ends every session and refuses new ones (the replica is going
// away; its agents reconnect to another): agents that connect from now
// on get a 503, since an http.Server's Close or Shutdown does not close
// hijacked connections and a session taken after Close would outlive the
// replica.
func (h *Hub) Close() {
	h.mu.Lock()
	h.closed = true
	all := make([]*session, 0, len(h.sessions))
	for _, s := range h.sessions {
		all = append(all, s)
	}
	h.mu.Unlock()
	// All at once, so that no session waits for the end of the others.
	var wg sync.WaitGroup
	for _, s := range all {
		wg.Go(func() {
			s.close()
			<-s.done
		})
	}
	wg.Wait()
}
