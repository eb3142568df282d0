package hub

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/thinlab/thinlab/sdk/tunnel"
)

// Several platform replicas run behind one address; each agent's tunnel
// lands on one of them. A replica asked for an agent whose tunnel another
// replica holds relays the stream there: it opens a websocket to the
// holder's RelayPath, signed with the replicas' shared secret, and the
// holder opens the stream on the agent's session and pipes the two
// together. Who holds which agent is the platform database's business
// (Options.Locate); the hub only asks. docs/architecture.md says why this
// was chosen over announcing presence with LISTEN/NOTIFY.

// RelayPath is where a replica accepts streams relayed from other
// replicas for agents whose tunnel it holds. Mount Hub.RelayHandler there.
const RelayPath = "/internal/hub/v1/relay"

// Relay request parameters and signature header.
const (
	relaySignatureHeader = "X-Thinlab-Relay-Signature"
	// relayMaxSkew bounds the age of a signed relay request: replicas'
	// clocks agree to well within it, and a captured request (inside TLS
	// between replicas) is useless after it.
	relayMaxSkew = 2 * time.Minute
)

// relaySignature is HMAC-SHA256 over the request's parameters.
func relaySignature(secret []byte, agentID string, h tunnel.StreamHeader, ts int64) string {
	m := hmac.New(sha256.New, secret)
	_, _ = fmt.Fprintf(m, "thinlab-relay-v1\n%s\n%s\n%d\n%d", agentID, h.Kind, h.Port, ts)
	return hex.EncodeToString(m.Sum(nil))
}

// kindDisconnect asks the holding replica to close an agent's tunnel (a
// revocation made on another replica). It is no stream kind of the
// tunnel: only replicas send it, signed like a relay.
const kindDisconnect tunnel.Kind = "disconnect"

// relayURL is the signed relay URL at the replica holding agentID, or
// "" when no other replica holds it.
func (h *Hub) relayURL(ctx context.Context, agentID string, hdr tunnel.StreamHeader, websocket bool) (string, http.Header, error) {
	if h.opt.Locate == nil {
		return "", nil, nil
	}
	base, err := h.opt.Locate(ctx, agentID)
	if err != nil {
		return "", nil, fmt.Errorf("hub: locating agent %s: %w", agentID, err)
	}
	if base == "" || base == h.opt.RelayURL {
		return "", nil, nil
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") {
		return "", nil, fmt.Errorf("hub: replica address %q of agent %s is not an http(s) URL", base, agentID)
	}
	if websocket {
		u.Scheme = map[string]string{"https": "wss", "http": "ws"}[u.Scheme]
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + RelayPath
	ts := time.Now().Unix()
	u.RawQuery = url.Values{
		"agent": {agentID},
		"kind":  {string(hdr.Kind)},
		"port":  {strconv.Itoa(hdr.Port)},
		"ts":    {strconv.FormatInt(ts, 10)},
	}.Encode()
	// The signature travels in a header, which request logs leave out.
	return u.String(), http.Header{relaySignatureHeader: {relaySignature(h.opt.RelaySecret, agentID, hdr, ts)}}, nil
}

// disconnectRemote asks the replica holding agentID's tunnel to close it
// (best effort: logged; the credential is refused from now on anyway).
func (h *Hub) disconnectRemote(agentID string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	target, sig, err := h.relayURL(ctx, agentID, tunnel.StreamHeader{Kind: kindDisconnect}, false)
	if err != nil || target == "" {
		if err != nil {
			h.log.Warn("hub: asking the holding replica to close a tunnel failed", "agent", agentID, "err", err)
		}
		return
	}
	// target is the holding replica's relay URL from the platform's own
	// database (Locate), not from a caller.
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil) //nolint:gosec // see above
	if err != nil {
		return
	}
	req.Header = sig
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: h.opt.RelayTLS}, Timeout: 10 * time.Second}
	resp, err := client.Do(req) //nolint:gosec // a replica's address from the platform database
	if err != nil {
		h.log.Warn("hub: asking the holding replica to close a tunnel failed", "agent", agentID, "err", err)
		return
	}
	_ = resp.Body.Close() // 204: nothing to read
	if resp.StatusCode != http.StatusNoContent {
		h.log.Warn("hub: the holding replica refused to close a tunnel", "agent", agentID, "status", resp.Status)
	}
}

// relay opens a stream to agentID through the replica that holds its
// tunnel. ErrNotConnected when no replica does.
func (h *Hub) relay(ctx context.Context, agentID string, hdr tunnel.StreamHeader) (net.Conn, error) {
	target, sig, err := h.relayURL(ctx, agentID, hdr, true)
	if err != nil {
		return nil, err
	}
	if target == "" {
		// Nobody else holds it; this replica does not either (the caller
		// looked here first).
		return nil, ErrNotConnected
	}
	base, _, _ := strings.Cut(target, RelayPath)
	d := websocket.Dialer{
		TLSClientConfig:  h.opt.RelayTLS,
		HandshakeTimeout: 10 * time.Second,
		ReadBufferSize:   32 << 10,
		WriteBufferSize:  32 << 10,
	}
	ws, resp, err := d.DialContext(ctx, target, sig)
	if err != nil {
		if resp == nil {
			return nil, fmt.Errorf("hub: relay to replica %s for agent %s: %w", base, agentID, err)
		}
		defer func() { _ = resp.Body.Close() }() // read below
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		reason := strings.TrimSpace(string(msg))
		switch resp.StatusCode {
		case http.StatusForbidden:
			return nil, &tunnel.RefusedError{Reason: reason}
		case http.StatusServiceUnavailable:
			return nil, ErrNotConnected
		case http.StatusUnauthorized:
			return nil, fmt.Errorf("hub: replica %s refused the relay: the replicas' relay secrets differ", base)
		default:
			return nil, fmt.Errorf("hub: relay to replica %s for agent %s: %s: %s", base, agentID, resp.Status, reason)
		}
	}
	return tunnel.NewConn(ws), nil
}

// RelayHandler serves relayed streams for agents whose tunnel this
// replica holds. Requests must carry a fresh signature made with
// Options.RelaySecret; without a secret every relay is refused.
func (h *Hub) RelayHandler() http.Handler {
	return http.HandlerFunc(h.serveRelay)
}

func (h *Hub) serveRelay(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		http.Error(w, "a relay is a websocket: use GET with Upgrade", http.StatusMethodNotAllowed)
		return
	}
	q := r.URL.Query()
	agentID := q.Get("agent")
	hdr := tunnel.StreamHeader{V: tunnel.ProtocolVersion, Kind: tunnel.Kind(q.Get("kind"))}
	port, perr := strconv.Atoi(q.Get("port"))
	ts, terr := strconv.ParseInt(q.Get("ts"), 10, 64)
	hdr.Port = port
	sig := r.Header.Get(relaySignatureHeader)
	if len(h.opt.RelaySecret) == 0 || perr != nil || terr != nil || agentID == "" ||
		!hmac.Equal([]byte(sig), []byte(relaySignature(h.opt.RelaySecret, agentID, hdr, ts))) {
		h.log.Warn("hub: relay refused: bad signature", "remote", r.RemoteAddr)
		http.Error(w, "relay signature refused", http.StatusUnauthorized)
		return
	}
	if age := time.Since(time.Unix(ts, 0)); age > relayMaxSkew || age < -relayMaxSkew {
		h.log.Warn("hub: relay refused: stale request", "remote", r.RemoteAddr, "age", age)
		http.Error(w, "relay signature refused", http.StatusUnauthorized)
		return
	}
	if hdr.Kind == kindDisconnect {
		if _, err := h.get(agentID); err == nil {
			h.Disconnect(agentID)
		}
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if hdr.Kind != tunnel.KindAPI && hdr.Kind != tunnel.KindTCP {
		http.Error(w, fmt.Sprintf("stream kind %q cannot be relayed", hdr.Kind), http.StatusBadRequest)
		return
	}
	s, err := h.get(agentID)
	if err != nil {
		http.Error(w, "agent is not connected to this replica", http.StatusServiceUnavailable)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	st, err := s.open(ctx, hdr)
	cancel()
	if err != nil {
		if refused, ok := errors.AsType[*tunnel.RefusedError](err); ok {
			http.Error(w, refused.Reason, http.StatusForbidden)
			return
		}
		http.Error(w, "opening a stream to the agent failed", http.StatusBadGateway)
		h.log.Warn("hub: relay: opening a stream failed", "agent", agentID, "err", err)
		return
	}
	ws, err := h.upgrader.Upgrade(w, r, nil)
	if err != nil {
		_ = st.Close()
		return // the upgrader has answered
	}
	pipe(tunnel.NewConn(ws), st)
}

// pipe copies both ways until either side ends, then closes both.
func pipe(a, b net.Conn) {
	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			_ = a.Close()
			_ = b.Close()
		})
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		_, _ = io.Copy(a, b) // ends when b ends or a fails
		closeBoth()
	})
	wg.Go(func() {
		_, _ = io.Copy(b, a)
		closeBoth()
	})
	wg.Wait()
}

// relayTransport is the API transport for an agent held by another
// replica: one per agent, so keep-alive streams are reused.
func (h *Hub) relayTransport(agentID string) *http.Transport {
	h.relayMu.Lock()
	defer h.relayMu.Unlock()
	if t, ok := h.relayTransports[agentID]; ok {
		return t
	}
	if h.relayTransports == nil || len(h.relayTransports) >= maxRelayTransports {
		for _, t := range h.relayTransports {
			t.CloseIdleConnections()
		}
		h.relayTransports = map[string]*http.Transport{}
	}
	t := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return h.relay(ctx, agentID, tunnel.StreamHeader{Kind: tunnel.KindAPI})
		},
		MaxIdleConns:          h.opt.MaxIdleAPIConns,
		MaxIdleConnsPerHost:   h.opt.MaxIdleAPIConns,
		IdleConnTimeout:       time.Minute,
		ResponseHeaderTimeout: 10 * time.Minute,
		DisableCompression:    true,
	}
	h.relayTransports[agentID] = t
	return t
}

// maxRelayTransports bounds the per-agent relay transports kept.
const maxRelayTransports = 4096
