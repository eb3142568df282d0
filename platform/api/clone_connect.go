package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/gorilla/websocket"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/hub"
	"github.com/thinlab/thinlab/sdk/agentapi"
	"github.com/thinlab/thinlab/sdk/platformapi"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

// Tunnels is the tunnel hub as the routes that reach into agents use it
// (platform/hub implements it). Nil when this replica runs no hub: those
// routes answer 503.
type Tunnels interface {
	// DialClone opens a TCP stream to port on the agent's host; the agent
	// refuses any port that is not a live clone's.
	DialClone(ctx context.Context, agentID string, port int) (net.Conn, error)
	// RoundTripper sends requests to the agent's own API.
	RoundTripper(agentID string) http.RoundTripper
}

// cloneIDRe is DLE's clone ID pattern; the ID goes into the agent API
// path unescaped, so nothing else may reach it.
var cloneIDRe = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,99}$`)

// Audit actions of the clone connection route: opened (recorded by the
// handler once the websocket is up) and closed (recorded by the access
// chain's audit middleware when the request ends). A refused attempt is
// one clone.connect event with the error.
const (
	ActionCloneConnect    = "clone.connect"
	ActionCloneDisconnect = "clone.disconnect"
)

// codeAgentUnavailable is the error code of 502 and 503 answers: the
// agent (or this replica's hub) cannot be reached now.
const codeAgentUnavailable = "agent_unavailable"

// cloneLookupTimeout bounds asking the agent for the clone's port and
// opening the stream; the connection itself lasts as long as the client
// keeps it.
const cloneLookupTimeout = 30 * time.Second

// connectUpgrader turns the request into a websocket.
var connectUpgrader = websocket.Upgrader{ReadBufferSize: 32 << 10, WriteBufferSize: 32 << 10, CheckOrigin: sameOrigin}

// sameOrigin refuses a handshake whose Origin is another site: a session
// cookie rides along on websocket handshakes, so another site's page must
// not open one in a signed-in browser. Programs (the CLI) send no Origin.
func sameOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	return err == nil && strings.EqualFold(u.Host, r.Host)
}

// connectClone is GET /orgs/{org}/agents/{agent}/clones/{clone}/connect:
// a websocket that carries one raw TCP byte stream to the clone's
// postgres, through the agent's tunnel. The clone's port comes from the
// agent (GET /clone/{id}), never from the caller, and the agent checks
// again that it is a live clone's.
func (a *API) connectClone(c *gin.Context) {
	ag := access.Agent(c)
	id := c.Param("clone")
	audit.SetTarget(c, ag.ID+"/"+id)
	if !cloneIDRe.MatchString(id) {
		invalid(c, "clone: use the clone's ID (letters, digits, '_', '.' and '-'; `thinlab clone list` shows them)", "clone")
		return
	}
	// Checked before the agent is asked anything (the upgrader checks
	// again).
	if !sameOrigin(c.Request) {
		forbidden(c, "websocket from another site (Origin "+c.Request.Header.Get("Origin")+") refused")
		return
	}
	if !websocket.IsWebSocketUpgrade(c.Request) {
		invalid(c, "this route is a websocket carrying the clone's PostgreSQL connection: use `thinlab connect` or `thinlab port-forward`", "")
		return
	}
	if a.Tunnels == nil {
		access.Error(c, http.StatusServiceUnavailable, codeAgentUnavailable, "this platform replica holds no agent tunnels; try again", "")
		return
	}
	if ag.RevokedAt != nil {
		access.Error(c, http.StatusConflict, platformapi.CodeConflict, "agent "+ag.Name+" is revoked", "agent")
		return
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), cloneLookupTimeout)
	defer cancel()
	port, ok := a.clonePort(c, ctx, ag.ID, ag.Name, id)
	if !ok {
		return
	}
	conn, err := a.Tunnels.DialClone(ctx, ag.ID, port)
	if err != nil {
		a.agentUnreachable(c, ag.Name, "open a stream to clone "+id, err)
		return
	}
	cancel()
	ws, err := connectUpgrader.Upgrade(c.Writer, c.Request, nil)
	if err != nil {
		// Upgrade answered the client already.
		_ = conn.Close()
		audit.SetError(c, "websocket handshake: "+err.Error())
		c.Abort()
		return
	}
	_ = a.Audit.Record(c, audit.Event{OrgID: access.OrgID(c), Action: ActionCloneConnect, Target: ag.ID + "/" + id})
	audit.SetAction(c, ActionCloneDisconnect)
	start := time.Now()
	stopPings := keepAlive(ws)
	toClone, fromClone := pipe(tunnel.NewConn(ws), conn)
	stopPings()
	a.Logger.Info("clone connection closed", "org", access.OrgID(c), "agent", ag.ID, "clone", id,
		"bytes_to_clone", toClone, "bytes_from_clone", fromClone, "duration_s", time.Since(start).Seconds())
}

// clonePort asks the agent for the clone and returns its port when the
// clone is ready; otherwise it answers the caller.
func (a *API) clonePort(c *gin.Context, ctx context.Context, agentID, agentName, id string) (int, bool) { //nolint:revive // gin's context answers, ctx bounds the lookup
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent/clone/"+id, nil)
	if err != nil {
		a.internal(c, "ask the agent for the clone", err)
		return 0, false
	}
	req.Header.Set("Accept", "application/json")
	resp, err := a.Tunnels.RoundTripper(agentID).RoundTrip(req)
	if err != nil {
		a.agentUnreachable(c, agentName, "ask for clone "+id, err)
		return 0, false
	}
	defer func() { _ = resp.Body.Close() }()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		a.agentUnreachable(c, agentName, "read clone "+id, err)
		return 0, false
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		access.Error(c, http.StatusNotFound, platformapi.CodeNotFound, "clone "+id+" not found on agent "+agentName+"; `thinlab clone list --agent "+agentName+"` shows its clones", "clone")
		return 0, false
	case resp.StatusCode != http.StatusOK:
		a.Logger.Warn("agent answered a clone lookup with an error", "agent", agentID, "status", resp.StatusCode)
		access.Error(c, http.StatusBadGateway, codeAgentUnavailable, fmt.Sprintf("agent %s answered %d to the clone lookup", agentName, resp.StatusCode), "")
		return 0, false
	}
	var cl agentapi.Clone
	if err := json.Unmarshal(raw, &cl); err != nil {
		access.Error(c, http.StatusBadGateway, codeAgentUnavailable, "agent "+agentName+" sent a clone the platform cannot read", "")
		return 0, false
	}
	if cl.Status.Code != agentapi.StatusOK {
		access.Error(c, http.StatusConflict, platformapi.CodeConflict, fmt.Sprintf("clone %s is %s, not ready for connections; wait until it is OK", id, cl.Status.Code), "clone")
		return 0, false
	}
	port, err := strconv.Atoi(cl.DB.Port)
	if err != nil || port <= 0 || port > 65535 {
		access.Error(c, http.StatusBadGateway, codeAgentUnavailable, "agent "+agentName+" reported no port for clone "+id, "")
		return 0, false
	}
	return port, true
}

// agentUnreachable answers a failure to reach the agent: 503 when it is
// not connected here, 502 when the agent refused the stream or broke off.
func (a *API) agentUnreachable(c *gin.Context, agentName, what string, err error) {
	if errors.Is(err, hub.ErrNotConnected) {
		access.Error(c, http.StatusServiceUnavailable, codeAgentUnavailable, "agent "+agentName+" is not connected; check that it runs and reaches the platform", "agent")
		return
	}
	if re, ok := errors.AsType[*tunnel.RefusedError](err); ok {
		access.Error(c, http.StatusBadGateway, codeAgentUnavailable, "agent "+agentName+" refused the connection: "+re.Reason, "")
		return
	}
	a.Logger.Warn("reach the agent", "agent", agentName, "what", what, "err", err)
	access.Error(c, http.StatusBadGateway, codeAgentUnavailable, "could not "+what+" on agent "+agentName+"; try again", "")
}

// connectPingInterval is how often an open clone connection is pinged:
// load balancers and proxies cut websockets idle for a minute or so, and
// a psql session may well sit idle longer.
const connectPingInterval = 25 * time.Second

// keepAlive pings ws until the returned stop is called. The client's
// websocket library answers on its own while it reads.
func keepAlive(ws *websocket.Conn) (stop func()) {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(connectPingInterval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				// WriteControl may run alongside the data writes; a failed
				// ping means the connection is gone, which the copy notices.
				if ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(10*time.Second)) != nil {
					return
				}
			}
		}
	}()
	return func() { close(done) }
}

// pipe copies both ways until either side ends, then closes both, and
// returns the bytes carried each way.
func pipe(client, clone net.Conn) (toClone, fromClone int64) {
	var up, down atomic.Int64
	var once sync.Once
	closeBoth := func() { once.Do(func() { _ = client.Close(); _ = clone.Close() }) }
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		n, _ := io.Copy(clone, client) // the end of either side ends both
		up.Store(n)
		closeBoth()
	}()
	go func() {
		defer wg.Done()
		n, _ := io.Copy(client, clone)
		down.Store(n)
		closeBoth()
	}()
	wg.Wait()
	return up.Load(), down.Load()
}

var _ Tunnels = (*hub.Hub)(nil)
