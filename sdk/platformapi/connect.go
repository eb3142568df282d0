package platformapi

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"

	"github.com/gorilla/websocket"

	"github.com/thinlab/thinlab/sdk/tunnel"
)

// ClonePath is the API path (under /api/v1) of a clone's connection
// route: a websocket that carries one TCP stream to the clone's postgres.
func ClonePath(org, agentID, clone string) string {
	return "/orgs/" + esc(org) + "/agents/" + esc(agentID) + "/clones/" + esc(clone) + "/connect"
}

// EnginePath is the API path (under /api/v1) where the platform forwards
// the agent's own (DLE-compatible) API unchanged.
func EnginePath(org, agentID string) string {
	return "/orgs/" + esc(org) + "/agents/" + esc(agentID) + "/engine"
}

// DialClone opens a connection to the clone's postgres through the
// platform and the agent's tunnel: what is written goes to postgres as raw
// TCP bytes, what postgres sends is read. A refusal is an *APIError.
func (c *Client) DialClone(ctx context.Context, org, agentID, clone string) (net.Conn, error) {
	u := c.BaseURL + "/api/v1" + ClonePath(org, agentID, clone)
	switch {
	case strings.HasPrefix(u, "https://"):
		u = "wss://" + strings.TrimPrefix(u, "https://")
	case strings.HasPrefix(u, "http://"):
		u = "ws://" + strings.TrimPrefix(u, "http://")
	default:
		return nil, fmt.Errorf("platform URL %q: use an http:// or https:// URL", c.BaseURL)
	}
	d := websocket.Dialer{Proxy: http.ProxyFromEnvironment, ReadBufferSize: 32 << 10, WriteBufferSize: 32 << 10}
	if c.HTTP != nil {
		if tr, ok := c.HTTP.Transport.(*http.Transport); ok {
			if tr.TLSClientConfig != nil {
				d.TLSClientConfig = tr.TLSClientConfig.Clone()
			}
			if tr.Proxy != nil {
				d.Proxy = tr.Proxy
			}
		}
		d.HandshakeTimeout = c.HTTP.Timeout
	}
	if d.TLSClientConfig == nil {
		d.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	h := http.Header{}
	if c.Token != "" {
		h.Set("Authorization", "Bearer "+c.Token)
	}
	ws, resp, err := d.DialContext(ctx, u, h)
	if err != nil {
		if resp != nil {
			defer func() { _ = resp.Body.Close() }()
			return nil, answerError(resp)
		}
		return nil, err
	}
	return tunnel.NewConn(ws), nil
}

// answerError decodes a refused handshake's answer.
func answerError(resp *http.Response) error {
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10)) // what was read is the message
	apiErr := &APIError{Status: resp.StatusCode}
	var er ErrorResponse
	if json.Unmarshal(raw, &er) == nil && er.Error.Code != "" {
		apiErr.ErrorBody = er.Error
	} else {
		apiErr.Code, apiErr.Message = "http_error", strings.TrimSpace(string(raw))
		if apiErr.Message == "" {
			apiErr.Message = http.StatusText(resp.StatusCode)
		}
	}
	return apiErr
}

// IsStatus reports whether err is an API answer with status.
func IsStatus(err error, status int) bool {
	var e *APIError
	return errors.As(err, &e) && e.Status == status
}
