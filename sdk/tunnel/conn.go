package tunnel

import (
	"errors"
	"io"
	"log"
	"net"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/yamux"
)

// MaxMessageBytes bounds one websocket message. yamux writes a frame
// header and at most one receive window (256 KiB) of data per message.
const MaxMessageBytes = 1 << 20

// NewConn turns a websocket into a net.Conn: writes become binary
// messages, reads concatenate the payloads of received binary messages.
// One reader and one writer may use it concurrently (yamux does).
func NewConn(ws *websocket.Conn) net.Conn {
	ws.SetReadLimit(MaxMessageBytes)
	return &wsConn{ws: ws}
}

type wsConn struct {
	ws *websocket.Conn

	readMu sync.Mutex
	r      io.Reader // the current message, nil between messages

	writeMu sync.Mutex
	closed  sync.Once
}

func (c *wsConn) Read(p []byte) (int, error) {
	c.readMu.Lock()
	defer c.readMu.Unlock()
	for {
		if c.r == nil {
			typ, r, err := c.ws.NextReader()
			if err != nil {
				if _, ok := errors.AsType[*websocket.CloseError](err); ok {
					return 0, io.EOF
				}
				return 0, err
			}
			if typ != websocket.BinaryMessage {
				return 0, errors.New("tunnel: text message on a binary tunnel")
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

func (c *wsConn) Write(p []byte) (int, error) {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close sends a close message (best effort, bounded by a short deadline)
// and closes the connection.
func (c *wsConn) Close() error {
	var err error
	c.closed.Do(func() {
		c.writeMu.Lock()
		_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
		c.writeMu.Unlock()
		err = c.ws.Close()
	})
	return err
}

func (c *wsConn) LocalAddr() net.Addr  { return c.ws.LocalAddr() }
func (c *wsConn) RemoteAddr() net.Addr { return c.ws.RemoteAddr() }

func (c *wsConn) SetDeadline(t time.Time) error {
	return errors.Join(c.ws.SetReadDeadline(t), c.ws.SetWriteDeadline(t))
}
func (c *wsConn) SetReadDeadline(t time.Time) error  { return c.ws.SetReadDeadline(t) }
func (c *wsConn) SetWriteDeadline(t time.Time) error { return c.ws.SetWriteDeadline(t) }

// YamuxConfig is the multiplexer configuration both sides use. interval
// is the heartbeat interval (HeartbeatInterval outside tests); a ping
// unanswered within the same time closes the session. logw receives
// yamux's own log lines (io.Discard is fine).
func YamuxConfig(interval time.Duration, logw io.Writer) *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.EnableKeepAlive = true
	cfg.KeepAliveInterval = interval
	// A write (and a ping's answer) stuck longer than this means the peer
	// is gone: yamux closes the session.
	cfg.ConnectionWriteTimeout = interval
	// Opened but not yet accepted streams wait here; more are refused.
	cfg.AcceptBacklog = 64
	cfg.StreamOpenTimeout = 2 * interval
	cfg.StreamCloseTimeout = time.Minute
	cfg.LogOutput = nil
	cfg.Logger = log.New(logw, "yamux: ", 0)
	return cfg
}
