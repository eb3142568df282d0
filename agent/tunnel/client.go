// Package tunnel is the agent's end of the platform tunnel (sdk/tunnel):
// it enrolls once, dials out to the platform over a websocket (through
// HTTPS_PROXY when set) and keeps reconnecting with backoff; over the
// tunnel it serves the agent's API and TCP streams to live clones, and it
// delivers the agent's events from an on-disk journal, each until acked.
package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/yamux"

	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/sdk/agentapi"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

// CloneTarget reports whether port is the port of a live clone: the only
// TCP targets the platform may open.
type CloneTarget func(port int) bool

// Options configure a Client.
type Options struct {
	// URL is the platform's base URL (platform.url), CAFile and Insecure
	// its TLS policy (see ParseEndpoint).
	URL      string
	CAFile   string
	Insecure bool
	// EnrollToken is exchanged for a credential when StateDir has none.
	EnrollToken string
	StateDir    string

	// API is the agent's own API handler; APIToken is its verification
	// token, injected into requests that came over the authenticated
	// tunnel (after removing any the caller sent).
	API      http.Handler
	APIToken string
	// CloneTarget decides which ports TCP streams may reach (nil refuses
	// all).
	CloneTarget CloneTarget
	// Facts describes the agent; sent at enrollment and on every connect.
	Facts func() tunnel.AgentFacts
	// Events, when set, is journalled and delivered to the platform.
	Events *events.Bus

	Logger *slog.Logger
	// Proxy overrides http.ProxyFromEnvironment.
	Proxy   func(*http.Request) (*url.URL, error)
	Backoff Backoff
	// HeartbeatInterval is tunnel.HeartbeatInterval when zero.
	HeartbeatInterval time.Duration
	// FactsInterval is how often updated facts are sent while connected
	// (DefaultFactsInterval when zero).
	FactsInterval time.Duration
	// Journal bounds (defaults when zero).
	JournalSegmentBytes int64
	JournalMaxSegments  int
}

// Client is the agent's tunnel to the platform.
type Client struct {
	opt     Options
	ep      *Endpoint
	log     *slog.Logger
	journal *Journal

	queue       chan tunnel.Event // from the bus to the journal writer
	queueDrops  atomic.Uint64
	unsubscribe func()

	mu        sync.Mutex
	connected bool
	cred      *Credential
}

// DefaultFactsInterval is how often a connected agent refreshes its facts
// on the platform (pools fill, clones come and go).
const DefaultFactsInterval = time.Minute

// maxTCPStreams bounds the clone connections one session carries at a
// time; more are refused with a reason.
const maxTCPStreams = 256

// queueSize bounds events waiting to be journalled (the bus must never
// block on the tunnel).
const queueSize = 4096

// New checks the options, opens the journal and subscribes to the events.
func New(opt Options) (*Client, error) {
	ep, err := ParseEndpoint(opt.URL, opt.CAFile, opt.Insecure)
	if err != nil {
		return nil, err
	}
	if opt.Proxy != nil {
		ep.Proxy = opt.Proxy
	}
	if opt.StateDir == "" {
		return nil, errors.New("tunnel: no state directory (stateDir)")
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.HeartbeatInterval <= 0 {
		opt.HeartbeatInterval = tunnel.HeartbeatInterval
	}
	if opt.FactsInterval <= 0 {
		opt.FactsInterval = DefaultFactsInterval
	}
	if opt.Facts == nil {
		opt.Facts = func() tunnel.AgentFacts { return tunnel.AgentFacts{} }
	}
	j, err := OpenJournal(filepath.Join(opt.StateDir, JournalDir), opt.JournalSegmentBytes, opt.JournalMaxSegments)
	if err != nil {
		return nil, err
	}
	c := &Client{opt: opt, ep: ep, log: opt.Logger.With("platform", ep.Base.String()), journal: j, queue: make(chan tunnel.Event, queueSize)}
	if opt.Events != nil {
		c.unsubscribe = opt.Events.Subscribe(func(e events.Event) {
			select {
			case c.queue <- wireEvent(e):
			default:
				c.queueDrops.Add(1)
			}
		})
	}
	return c, nil
}

func wireEvent(e events.Event) tunnel.Event {
	return tunnel.Event{ID: e.ID, Time: e.Time, Kind: string(e.Kind), Severity: string(e.Severity), Pool: e.Pool, Clone: e.Clone, Snapshot: e.Snapshot, Message: e.Message, Data: e.Data}
}

// Journal is the client's event journal (tests and status pages).
func (c *Client) Journal() *Journal { return c.journal }

// Connected reports whether a session is up.
func (c *Client) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.connected
}

// Run enrolls when needed and keeps the tunnel up until ctx ends. It
// returns nil when ctx ends; every other failure is retried with backoff.
func (c *Client) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() { c.writeJournal(ctx) })
	defer wg.Wait()
	attempt := 0
	for ctx.Err() == nil {
		connected, err := c.connectOnce(ctx)
		if ctx.Err() != nil {
			break
		}
		if connected {
			attempt = 0
		}
		d := c.opt.Backoff.Delay(attempt)
		attempt++
		c.log.Warn("platform tunnel: not connected; retrying", "err", err, "in", d.Round(time.Millisecond))
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
	}
	return nil
}

// Close detaches from the events, journals the events emitted since Run
// returned (an operation finishing during the agent's shutdown announces
// its end then; the next start delivers it) and closes the journal; call
// after Run returned.
func (c *Client) Close() error {
	if c.unsubscribe != nil {
		c.unsubscribe()
	}
	var batch []tunnel.Event
	for len(c.queue) > 0 {
		batch = append(batch, <-c.queue)
	}
	var err error
	if len(batch) > 0 {
		if _, err = c.journal.Append(batch); err != nil {
			c.log.Error("platform tunnel: writing the event journal failed; events lost", "err", err, "events", len(batch))
		}
	}
	return errors.Join(err, c.journal.Close())
}

// writeJournal moves queued events into the journal in batches.
func (c *Client) writeJournal(ctx context.Context) {
	var reported uint64
	for {
		var batch []tunnel.Event
		select {
		case <-ctx.Done():
			// What was emitted before the end is kept for the next start.
			for {
				select {
				case e := <-c.queue:
					batch = append(batch, e)
				default:
					if _, err := c.journal.Append(batch); err != nil {
						c.log.Error("platform tunnel: writing the event journal failed; events lost", "err", err, "events", len(batch))
					}
					return
				}
			}
		case e := <-c.queue:
			batch = append(batch, e)
		}
	drain:
		for len(batch) < 512 {
			select {
			case e := <-c.queue:
				batch = append(batch, e)
			default:
				break drain
			}
		}
		dropped, err := c.journal.Append(batch)
		if err != nil {
			c.log.Error("platform tunnel: writing the event journal failed; events lost", "err", err, "events", len(batch))
		}
		if dropped > 0 {
			c.log.Warn("platform tunnel: event journal full; oldest undelivered events dropped", "dropped", dropped, "droppedTotal", c.journal.Dropped())
		}
		if q := c.queueDrops.Load(); q > reported {
			c.log.Warn("platform tunnel: event queue full; events dropped", "droppedTotal", q)
			reported = q
		}
	}
}

func (c *Client) credential(ctx context.Context) (*Credential, error) {
	c.mu.Lock()
	cred := c.cred
	c.mu.Unlock()
	if cred != nil {
		return cred, nil
	}
	cred, err := LoadCredential(c.opt.StateDir)
	if errors.Is(err, ErrNoCredential) {
		if cred, err = Enroll(ctx, c.ep, c.opt.EnrollToken, c.opt.StateDir, c.opt.Facts()); err != nil {
			return nil, err
		}
		c.log.Info("platform tunnel: enrolled", "agentId", cred.AgentID, "name", cred.Name)
	} else if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.cred = cred
	c.mu.Unlock()
	return cred, nil
}

// ErrCredentialRefused means the platform refused the agent's credential
// (revoked or forged).
var ErrCredentialRefused = errors.New("the platform refused this agent's credential (revoked?): enroll again with a new platform.enrollToken after removing " + tunnel.CredentialFile + " from the state directory")

// connectOnce runs one session; connected says whether it got as far as
// the platform's Welcome (the backoff starts over then).
func (c *Client) connectOnce(ctx context.Context) (connected bool, err error) {
	cred, err := c.credential(ctx)
	if err != nil {
		return false, err
	}
	dialer := websocket.Dialer{
		Proxy:            c.ep.Proxy,
		TLSClientConfig:  c.ep.TLS,
		HandshakeTimeout: 15 * time.Second,
		ReadBufferSize:   32 << 10,
		WriteBufferSize:  32 << 10,
	}
	hdr := http.Header{}
	hdr.Set("Authorization", "Bearer "+cred.Credential)
	hdr.Set(tunnel.VersionHeader, strconv.Itoa(tunnel.ProtocolVersion))
	ws, resp, err := dialer.DialContext(ctx, c.ep.url(tunnel.TunnelPath, true), hdr)
	if resp != nil && resp.Body != nil {
		_ = resp.Body.Close() // only the status matters
	}
	if err != nil {
		if resp != nil && resp.StatusCode == http.StatusUnauthorized {
			return false, ErrCredentialRefused
		}
		if resp != nil {
			return false, fmt.Errorf("tunnel: the platform answered %s", resp.Status)
		}
		return false, fmt.Errorf("tunnel: %w", err)
	}
	conn := tunnel.NewConn(ws)
	mux, err := yamux.Client(conn, tunnel.YamuxConfig(c.opt.HeartbeatInterval, io.Discard))
	if err != nil {
		_ = conn.Close()
		return false, err
	}
	defer func() { _ = mux.Close() }()
	stop := context.AfterFunc(ctx, func() { _ = mux.Close() })
	defer stop()

	ctrl, welcome, err := c.hello(mux)
	if err != nil {
		return false, fmt.Errorf("tunnel handshake: %w", err)
	}
	defer func() { _ = ctrl.Close() }()
	c.setConnected(true)
	defer c.setConnected(false)
	c.log.Info("platform tunnel: connected", "agentId", welcome.AgentID)

	api := newStreamListener(mux.Addr())
	tcpSlots := make(chan struct{}, maxTCPStreams)
	srv := &http.Server{
		Handler:           apiHandler(c.opt.API, c.opt.APIToken),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(c.log.Handler(), slog.LevelWarn),
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve(api) }) // ends with ErrServerClosed or the listener's close
	wg.Go(func() { c.acceptStreams(mux, api, tcpSlots) })
	wg.Go(func() { c.sendEvents(mux) })
	wg.Go(func() { c.sendFacts(mux, ctrl) })

	<-mux.CloseChan()
	_ = api.Close()
	_ = srv.Close()
	wg.Wait()
	return true, errors.New("tunnel closed")
}

func (c *Client) setConnected(v bool) {
	c.mu.Lock()
	c.connected = v
	c.mu.Unlock()
}

func (c *Client) hello(mux *yamux.Session) (net.Conn, tunnel.Welcome, error) {
	var w tunnel.Welcome
	st, err := mux.OpenStream()
	if err != nil {
		return nil, w, err
	}
	_ = st.SetDeadline(time.Now().Add(30 * time.Second))
	if err := tunnel.Open(st, tunnel.StreamHeader{Kind: tunnel.KindControl}); err != nil {
		_ = st.Close()
		return nil, w, err
	}
	if err := tunnel.WriteLine(st, tunnel.Hello{V: tunnel.ProtocolVersion, Facts: c.opt.Facts()}); err != nil {
		_ = st.Close()
		return nil, w, err
	}
	if err := tunnel.ReadLine(st, &w); err != nil {
		_ = st.Close()
		return nil, w, err
	}
	_ = st.SetDeadline(time.Time{})
	return st, w, nil
}

// sendFacts refreshes the agent's facts on the platform periodically; the
// control stream has no other writer after the handshake.
func (c *Client) sendFacts(mux *yamux.Session, ctrl net.Conn) {
	t := time.NewTicker(c.opt.FactsInterval)
	defer t.Stop()
	for {
		select {
		case <-mux.CloseChan():
			return
		case <-t.C:
		}
		f := c.opt.Facts()
		if err := tunnel.WriteLine(ctrl, tunnel.ControlMessage{V: tunnel.ProtocolVersion, Type: tunnel.ControlFacts, Facts: &f}); err != nil {
			return
		}
	}
}

// acceptStreams serves what the platform opens: api and tcp only.
func (c *Client) acceptStreams(mux *yamux.Session, api *streamListener, tcpSlots chan struct{}) {
	for {
		st, err := mux.AcceptStream()
		if err != nil {
			return
		}
		go c.serveStream(st, api, tcpSlots)
	}
}

func (c *Client) serveStream(st *yamux.Stream, api *streamListener, tcpSlots chan struct{}) {
	_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
	var h tunnel.StreamHeader
	if err := tunnel.ReadLine(st, &h); err != nil {
		_ = tunnel.Refuse(st, err.Error())
		_ = st.Close()
		return
	}
	_ = st.SetReadDeadline(time.Time{})
	switch h.Kind {
	case tunnel.KindAPI:
		if c.opt.API == nil {
			c.refuse(st, h, "this agent serves no API over the tunnel")
			return
		}
		if err := tunnel.Accept(st); err != nil {
			_ = st.Close()
			return
		}
		if !api.push(st) {
			_ = st.Close()
		}
	case tunnel.KindTCP:
		select {
		case tcpSlots <- struct{}{}:
			defer func() { <-tcpSlots }()
			c.serveTCP(st, h)
		default:
			c.refuse(st, h, fmt.Sprintf("too many clone connections over the tunnel (%d)", maxTCPStreams))
		}
	default:
		c.refuse(st, h, fmt.Sprintf("stream kind %q cannot be opened by the platform", h.Kind))
	}
}

func (c *Client) refuse(st *yamux.Stream, h tunnel.StreamHeader, reason string) {
	c.log.Warn("platform tunnel: stream refused", "kind", h.Kind, "port", h.Port, "reason", reason)
	_ = tunnel.Refuse(st, reason)
	_ = st.Close()
}

// serveTCP connects a stream to 127.0.0.1:port of a live clone, and to
// nothing else.
func (c *Client) serveTCP(st *yamux.Stream, h tunnel.StreamHeader) {
	if h.Port <= 0 || h.Port > 65535 || c.opt.CloneTarget == nil || !c.opt.CloneTarget(h.Port) {
		c.refuse(st, h, fmt.Sprintf("port %d is not the port of a live clone of this agent", h.Port))
		return
	}
	target, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(h.Port)), 10*time.Second)
	if err != nil {
		c.refuse(st, h, fmt.Sprintf("the clone on port %d does not answer", h.Port))
		return
	}
	if err := tunnel.Accept(st); err != nil {
		_ = st.Close()
		_ = target.Close()
		return
	}
	pipe(st, target)
}

// pipe copies both ways until both directions end, passing half-closes on.
func pipe(a *yamux.Stream, b net.Conn) {
	var wg sync.WaitGroup
	wg.Go(func() {
		_, _ = io.Copy(b, a)
		if tc, ok := b.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	})
	wg.Go(func() {
		_, _ = io.Copy(a, b)
		_ = a.Close() // yamux: close is a half-close (FIN) of our direction
	})
	wg.Wait()
	_ = b.Close()
	_ = a.Close()
}

// apiHandler removes any credential the caller sent and sets the agent's
// own token: the platform authenticated itself by the tunnel.
func apiHandler(h http.Handler, token string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Header.Del(agentapi.VerificationTokenHeader)
		r.Header.Del("Authorization")
		if token != "" {
			r.Header.Set(agentapi.VerificationTokenHeader, token)
		}
		h.ServeHTTP(w, r)
	})
}

// sendEvents delivers journalled events one batch at a time, moving the
// journal's acked mark after each ack.
func (c *Client) sendEvents(mux *yamux.Session) {
	st, err := mux.OpenStream()
	if err != nil {
		return
	}
	defer func() { _ = st.Close() }()
	if err := tunnel.Open(st, tunnel.StreamHeader{Kind: tunnel.KindEvents}); err != nil {
		c.log.Warn("platform tunnel: the platform refused the events stream", "err", err)
		return
	}
	br := newLineReader(st)
	for {
		evs, last, err := c.journal.Pending(tunnel.MaxEventsPerBatch)
		if err != nil {
			c.log.Error("platform tunnel: reading the event journal failed", "err", err)
			return
		}
		if len(evs) == 0 {
			select {
			case <-mux.CloseChan():
				return
			case <-c.journal.Changed():
			}
			continue
		}
		if err := tunnel.WriteLine(st, tunnel.EventBatch{V: tunnel.ProtocolVersion, Seq: last, Events: evs}); err != nil {
			return
		}
		var ack tunnel.EventAck
		if err := tunnel.ReadLineBuffered(br, &ack); err != nil {
			return
		}
		if ack.Error != "" || ack.Seq != last {
			c.log.Warn("platform tunnel: the platform did not store events; retrying", "reason", ack.Error)
			select {
			case <-mux.CloseChan():
				return
			case <-time.After(c.opt.HeartbeatInterval):
			}
			continue
		}
		if err := c.journal.Ack(last); err != nil {
			c.log.Error("platform tunnel: recording an ack failed (the events may be sent again)", "err", err)
		}
	}
}
