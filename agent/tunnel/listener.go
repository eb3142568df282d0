package tunnel

import (
	"bufio"
	"io"
	"net"
	"sync"
)

// streamListener hands accepted api streams to an http.Server.
type streamListener struct {
	addr   net.Addr
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newStreamListener(addr net.Addr) *streamListener {
	return &streamListener{addr: addr, conns: make(chan net.Conn), closed: make(chan struct{})}
}

// push hands c to the server; false when the listener is closed.
func (l *streamListener) push(c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.closed:
		return false
	}
}

func (l *streamListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *streamListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *streamListener) Addr() net.Addr { return l.addr }

func newLineReader(r io.Reader) *bufio.Reader { return bufio.NewReaderSize(r, 64<<10) }
