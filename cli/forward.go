package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/thinlab/thinlab/sdk/agentapi"
)

// dialFunc opens one stream to a clone's postgres.
type dialFunc func(ctx context.Context) (net.Conn, error)

// forwarder listens on 127.0.0.1 and carries each accepted connection to
// the clone over a stream of its own (through the platform: one websocket
// per connection).
type forwarder struct {
	ln   net.Listener
	dial dialFunc
	// first is a stream opened already (the probe of `connect`), used by
	// the first connection instead of a new one.
	firstMu sync.Mutex
	first   net.Conn
	onErr   func(error)
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// dialTimeout bounds opening one stream.
const dialTimeout = 30 * time.Second

// startForward listens on 127.0.0.1:port (0: a free port) and forwards
// until Close. onErr hears about connections that could not be forwarded.
func startForward(port int, dial dialFunc, onErr func(error), first net.Conn) (*forwarder, error) {
	// Loopback only: the forward carries the clone's postgres to whoever
	// connects, so nobody else on the network may.
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return nil, fmt.Errorf("--port %d: listen on 127.0.0.1: %w; pick another port (0 picks a free one)", port, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &forwarder{ln: ln, dial: dial, onErr: onErr, ctx: ctx, cancel: cancel, first: first}
	f.wg.Go(f.accept)
	return f, nil
}

// Port is the local port.
func (f *forwarder) Port() int { return f.ln.Addr().(*net.TCPAddr).Port }

func (f *forwarder) accept() {
	for {
		local, err := f.ln.Accept()
		if err != nil {
			return // closed
		}
		f.wg.Go(func() { f.forward(local) })
	}
}

// takeFirst returns the stream opened before listening, once.
func (f *forwarder) takeFirst() net.Conn {
	f.firstMu.Lock()
	defer f.firstMu.Unlock()
	c := f.first
	f.first = nil
	return c
}

func (f *forwarder) forward(local net.Conn) {
	remote := f.takeFirst()
	var err error
	if remote == nil {
		ctx, cancel := context.WithTimeout(f.ctx, dialTimeout)
		remote, err = f.dial(ctx)
		cancel()
	}
	if err != nil {
		_ = local.Close()
		if f.ctx.Err() == nil {
			f.onErr(err)
		}
		return
	}
	var once sync.Once
	closeBoth := func() { once.Do(func() { _ = local.Close(); _ = remote.Close() }) }
	stop := context.AfterFunc(f.ctx, closeBoth)
	defer stop()
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(remote, local) // either side ending ends both
		closeBoth()
		close(done)
	}()
	_, _ = io.Copy(local, remote)
	closeBoth()
	<-done
}

// Close stops listening, ends the forwarded connections and waits for them.
func (f *forwarder) Close() {
	_ = f.ln.Close()
	f.cancel()
	f.wg.Wait()
	if c := f.takeFirst(); c != nil {
		_ = c.Close()
	}
}

// cloneDialer checks that the clone is ready and returns how to reach its
// postgres: through the platform's websocket route for a platform context,
// straight to the clone's host and port otherwise.
func cloneDialer(ctx context.Context, a *apiConn, id string) (*agentapi.Clone, dialFunc, error) {
	cl, err := a.api.Clone(ctx, id)
	if err != nil {
		return nil, nil, a.explain(err)
	}
	if cl.Status.Code != agentapi.StatusOK {
		return nil, nil, fmt.Errorf("clone %s is %s, not ready for connections (%s); wait with `thinlab clone status %s`", id, cl.Status.Code, cl.Status.Message, id)
	}
	if a.platform != nil {
		p := a.platform
		return cl, func(ctx context.Context) (net.Conn, error) {
			c, err := p.dialClone(ctx, id)
			if err != nil {
				return nil, a.explain(err)
			}
			return c, nil
		}, nil
	}
	host := connectHost(cl.DB.Host, a.ep.URL)
	if host == "" || cl.DB.Port == "" {
		return nil, nil, fmt.Errorf("the agent reported no host or port for clone %s", id)
	}
	addr := net.JoinHostPort(host, cl.DB.Port)
	return cl, func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}, nil
}

// openFirst opens one stream before anything listens, so that a refusal
// (no such clone, no permission, agent gone) is reported as such before
// psql or the user's tool sees a closed connection.
func openFirst(ctx context.Context, dial dialFunc) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	return dial(ctx)
}

func newPortForwardCommand() *cobra.Command {
	var (
		cf     clientFlags
		port   int
		dbName string
	)
	cmd := &cobra.Command{
		Use:   "port-forward CLONE_ID --port N",
		Short: "Forward a local port to a clone's postgres until Ctrl-C",
		Long: `Listen on 127.0.0.1:N and forward every connection to the clone's
PostgreSQL: through the platform and the agent's tunnel with a platform
context (--agent), straight to the clone's host otherwise. It prints the
connection string (without the password) and runs until Ctrl-C, so that
any PostgreSQL client can use the clone from this machine.`,
		Example: `  thinlab port-forward mytest --agent db1 --port 6432
  psql "host=127.0.0.1 port=6432 user=alice dbname=postgres"`,
		Args: exactArgs("CLONE_ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if err := validateCloneID("CLONE_ID", id); err != nil {
				return err
			}
			if port < 0 || port > 65535 {
				return usageErrorf("--port %d: use a port from 1 to 65535, or 0 for a free one", port)
			}
			a, err := cf.connect()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			cl, dial, err := cloneDialer(ctx, a, id)
			if err != nil {
				return err
			}
			// The check stream is closed at once: the first client may
			// come much later than the clone's startup packet timeout.
			c, err := openFirst(ctx, dial)
			if err != nil {
				return err
			}
			_ = c.Close() // only a check
			f, err := startForward(port, dial, func(err error) { warn(cmd, "forward a connection to clone %s: %v\n", id, err) }, nil)
			if err != nil {
				return err
			}
			defer f.Close()
			if dbName == "" {
				dbName = cl.DB.DBName
			}
			if dbName == "" {
				dbName = "postgres"
			}
			info := conninfo([][2]string{{"host", "127.0.0.1"}, {"port", strconv.Itoa(f.Port())}, {"user", cl.DB.Username}, {"dbname", dbName}})
			if _, err := fmt.Fprintf(cmd.OutOrStdout(), "Forwarding 127.0.0.1:%d to clone %s; press Ctrl-C to stop.\n%s\n", f.Port(), id, info); err != nil {
				return err
			}
			<-ctx.Done()
			warn(cmd, "stopping the forward\n")
			if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
				return err
			}
			return nil
		},
	}
	cf.register(cmd)
	cmd.Flags().IntVar(&port, "port", 0, "local port on 127.0.0.1 (0: a free one, printed)")
	cmd.Flags().StringVar(&dbName, "dbname", "", "database named in the printed connection string (default: the clone's)")
	return asUsage(cmd)
}
