package clone

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/thinlab/thinlab/agent/runtime"
	"github.com/thinlab/thinlab/agent/storage"
)

// Scale to zero: a clone idle for cloning.hibernateAfterMinutes has its
// postgres stopped cleanly (dataset, port, uid, users and record stay) and
// the agent listens on its port instead. The first connection starts the
// postgres again: accepted connections are held (never read from) while
// it starts, then spliced byte for byte to the clone's port, so the
// client's SSLRequest, startup and authentication reach postgres
// untouched. The status stays OK (what DLE clients expect); Clone.Hibernated
// tells them apart.
//
// Between closing the agent's listener and postgres accepting connections
// (the time of a postgres start, some 0.1-0.3 s) a new connection is
// refused: postgres cannot share a port with the agent, and cannot take
// over its listening socket. Connections already waiting in the listener's
// queue when it closes are accepted first (drain) and held like the rest.

const (
	// maxWaiting bounds the connections held while one clone wakes; more
	// are closed at once.
	maxWaiting = 64
	// wakeTimeout bounds how long a held connection waits for the start.
	wakeTimeout = 2 * time.Minute
)

// sleeper is the agent's stand-in for a hibernated clone's postgres: the
// listeners on its port and the wake-up that runs once. mu guards
// listeners and closed; it is never taken before Manager.mu is let go
// (Manager.mu, then sleeper.mu, is the order).
type sleeper struct {
	id        string
	mu        sync.Mutex
	listeners []net.Listener
	closed    bool          // listeners closed for good (wake-up, destroy, reset, Close)
	waiting   chan struct{} // semaphore of held connections
	once      sync.Once
	done      chan struct{} // closed when the wake-up ended
	err       error         // the wake-up's failure, read after done
}

func newSleeper(id string) *sleeper {
	return &sleeper{id: id, waiting: make(chan struct{}, maxWaiting), done: make(chan struct{})}
}

// shut closes the listeners for good; drain first takes the connections
// waiting in their queues (a wake-up holds them).
func (m *Manager) shut(s *sleeper, drain bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	for _, l := range s.listeners {
		if drain {
			m.drain(s, l)
		}
		_ = l.Close() // postgres binds the port next, or the clone goes
	}
}

// Hibernate stops a clone's postgres and listens on its port until the
// next connection. The clone must be OK and not busy; warm clones are
// never hibernated.
func (m *Manager) Hibernate(ctx context.Context, id string) error {
	m.mu.Lock()
	r, ok := m.clones[id]
	if !ok || r.Warm {
		m.mu.Unlock()
		return fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	if r.Status != StatusOK || r.busy || r.Hibernated || m.closed {
		m.mu.Unlock()
		return fmt.Errorf("%w: clone %q is %s", ErrNotReady, id, r.Status)
	}
	r.busy = true
	spec := *r
	m.mu.Unlock()

	dataDir := filepath.Join(spec.Mountpoint, storage.DataSubdir)
	if err := m.rt.Stop(ctx, m.instance(spec, dataDir), "fast"); err != nil {
		m.setBusy(id, false)
		return fmt.Errorf("hibernate clone %s: stop its postgres: %w", id, err)
	}
	// Recorded before listening: after a kill -9 from here on, the next
	// agent finds a hibernated clone and listens for it.
	m.update(id, func(r *record) {
		r.Hibernated = true
		r.busy = false
	})
	m.log.Info("clone hibernated", "clone", id, "port", spec.Port)
	if err := m.listenFor(id, spec.Port); err != nil {
		// The idle loop tries again; until then the port is closed.
		m.log.Error("cannot listen on a hibernated clone's port", "clone", id, "port", spec.Port, "err", err)
	}
	return nil
}

func (m *Manager) setBusy(id string, busy bool) {
	m.mu.Lock()
	if r, ok := m.clones[id]; ok {
		r.busy = busy
	}
	m.changedLocked()
	m.mu.Unlock()
}

// listenFor opens the agent's listeners on a hibernated clone's port (on
// each of provision.listenAddresses, like its postgres) and serves them.
func (m *Manager) listenFor(id string, port int) error {
	m.mu.Lock()
	r, ok := m.clones[id]
	s, has := m.sleepers[id]
	if !ok || !r.Hibernated || r.busy || m.closed || (has && s.listening()) {
		m.mu.Unlock()
		return nil
	}
	if !has {
		s = newSleeper(id)
		m.sleepers[id] = s
	}
	// Held from here: a wake-up (or destroy, reset, Close) waits for the
	// listeners, then closes them.
	s.mu.Lock()
	m.mu.Unlock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	var ls []net.Listener
	for a := range strings.SplitSeq(m.cfg.Provision.ListenAddresses, ",") {
		a = strings.TrimSpace(a)
		if a == "*" {
			a = ""
		}
		l, err := net.Listen("tcp", net.JoinHostPort(a, strconv.Itoa(port)))
		if err != nil {
			for _, l := range ls {
				_ = l.Close() // giving up on all of them; the idle loop tries again
			}
			return err
		}
		ls = append(ls, l)
	}
	s.listeners = ls
	for _, l := range ls {
		m.loops.Go(func() { m.accept(s, l) })
	}
	return nil
}

// listening reports whether s holds its port.
func (s *sleeper) listening() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.listeners) > 0 && !s.closed
}

// drain accepts, without blocking, every connection waiting in l's
// queue and holds it for the wake-up.
func (m *Manager) drain(s *sleeper, l net.Listener) {
	tl, ok := l.(*net.TCPListener)
	if !ok {
		return
	}
	raw, err := tl.SyscallConn()
	if err != nil {
		return
	}
	_ = raw.Control(func(fd uintptr) {
		for {
			nfd, _, err := unix.Accept4(int(fd), unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
			if err != nil {
				return // EAGAIN: the queue is empty
			}
			f := os.NewFile(uintptr(nfd), "held connection")
			c, err := net.FileConn(f)
			_ = f.Close() // FileConn holds its own duplicate
			if err != nil {
				continue
			}
			m.admit(s, c)
		}
	})
}

// admit holds c for the wake-up, or closes it when too many wait.
func (m *Manager) admit(s *sleeper, c net.Conn) {
	select {
	case s.waiting <- struct{}{}:
	default:
		_ = c.Close() // too many waiting already
		return
	}
	s.once.Do(func() { go m.wake(s) })
	go m.hold(s, c)
}

func (m *Manager) accept(s *sleeper, l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			m.log.Warn("accept on a hibernated clone's port", "clone", s.id, "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		m.admit(s, c)
	}
}

// hold keeps a connection until the clone is awake, then splices it to
// the clone's postgres.
func (m *Manager) hold(s *sleeper, c net.Conn) {
	t := time.NewTimer(wakeTimeout)
	defer t.Stop()
	select {
	case <-s.done:
	case <-t.C:
	}
	<-s.waiting
	select {
	case <-s.done:
	default:
		_ = c.Close() // the start took too long
		return
	}
	if s.err != nil {
		_ = c.Close() // nothing to pass it to
		return
	}
	m.mu.Lock()
	r, ok := m.clones[s.id]
	port := 0
	if ok {
		port = r.Port
	}
	m.mu.Unlock()
	if !ok {
		_ = c.Close() // destroyed meanwhile
		return
	}
	up, err := net.DialTimeout("tcp", net.JoinHostPort(m.connectHost, strconv.Itoa(port)), 10*time.Second)
	if err != nil {
		m.log.Warn("woken clone refused a held connection", "clone", s.id, "err", err)
		_ = c.Close() // nothing to pass it to
		return
	}
	splice(c, up)
}

// splice copies both ways until both directions ended, passing half
// closes on.
func splice(a, b net.Conn) {
	var wg sync.WaitGroup
	one := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src) // either side may end the connection at any time
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite() // the peer may be gone
		} else {
			_ = dst.Close() // as above
		}
	}
	wg.Add(2)
	go one(a, b)
	go one(b, a)
	wg.Wait()
	_ = a.Close() // both directions are over
	_ = b.Close() // as above
}

// wake starts a hibernated clone's postgres for the connections its
// listener holds: listeners closed (postgres needs the port), postgres
// started, the port verified to be held by that postmaster.
func (m *Manager) wake(s *sleeper) {
	err := m.wakeClone(context.Background(), s)
	s.err = err
	close(s.done)
}

func (m *Manager) wakeClone(ctx context.Context, s *sleeper) error {
	m.mu.Lock()
	r, ok := m.clones[s.id]
	if !ok || m.sleepers[s.id] != s || m.closed {
		m.mu.Unlock()
		return fmt.Errorf("clone %s is no longer hibernated", s.id)
	}
	r.busy = true
	delete(m.sleepers, s.id)
	spec := *r
	m.ops.Add(1)
	m.mu.Unlock()
	defer m.ops.Done()
	defer m.setBusy(s.id, false)
	t0 := time.Now()
	// Connections the kernel completed but nobody accepted yet would be
	// reset by the close: take them all first.
	release := func() { m.shut(s, true) }
	sctx, cancel := context.WithTimeout(ctx, wakeTimeout)
	defer cancel()
	dataDir := filepath.Join(spec.Mountpoint, storage.DataSubdir)
	inst := m.instance(spec, dataDir)
	inst.BeforeExec = release
	err := m.rt.Start(sctx, inst)
	release() // when Start failed before postgres ran
	if err == nil {
		err = m.checkPort(dataDir, spec.Port)
		if err != nil {
			m.rt.Kill(m.instance(spec, dataDir))
		}
	}
	if err != nil {
		m.log.Error("waking a hibernated clone failed", "clone", s.id, "err", err)
		m.update(s.id, func(r *record) {
			r.Hibernated = false
			r.Status = StatusFatal
			r.StatusMessage = "wake from hibernation failed: " + err.Error()
		})
		return err
	}
	m.update(s.id, func(r *record) {
		r.Hibernated = false
		r.LastActivity = m.now()
	})
	m.log.Info("hibernated clone woken", "clone", s.id, "took", time.Since(t0))
	return nil
}

// checkPort verifies that the clone's postmaster holds every listening
// socket of its port: a program (a clone user's, started with COPY ...
// TO PROGRAM) that bound the port while it was free must not receive the
// held connections.
func (m *Manager) checkPort(dataDir string, port int) error {
	pid, alive := m.rt.Running(dataDir)
	if !alive {
		return errors.New("postgres is not running after its start")
	}
	return runtime.CheckPortOwner(pid, port)
}

// unlistenLocked closes a hibernated clone's listeners for good (a
// destroy or reset; the caller made sure it is not waking).
func (m *Manager) unlistenLocked(id string) {
	s, ok := m.sleepers[id]
	if !ok {
		return
	}
	delete(m.sleepers, id)
	m.shut(s, false)
}

// closeSleepers closes every listener (the manager is closing; the next
// one listens again).
func (m *Manager) closeSleepers() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for id := range m.sleepers {
		m.unlistenLocked(id)
	}
}

// Awake starts a hibernated clone's postgres for the agent's own use (a
// commit or an inspection); a clone that is awake is left as it is.
func (m *Manager) Awake(ctx context.Context, id string) error {
	m.mu.Lock()
	r, ok := m.clones[id]
	if !ok {
		m.mu.Unlock()
		return fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	if !r.Hibernated {
		m.mu.Unlock()
		return nil
	}
	s, ok := m.sleepers[id]
	if !ok {
		// Not listened on (the port was taken): start it directly.
		s = newSleeper(id)
		m.sleepers[id] = s
	}
	m.mu.Unlock()
	s.once.Do(func() { go m.wake(s) })
	select {
	case <-s.done:
		return s.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// hibernateIdle hibernates clone s when it has been idle long enough.
func (m *Manager) hibernateIdle(ctx context.Context, s record, now time.Time) {
	after := m.cfg.Cloning.HibernateAfter()
	if after <= 0 || s.Warm || s.Hibernated || now.Sub(s.LastActivity) < after {
		return
	}
	m.log.Info("hibernating idle clone", "clone", s.ID, "idle_since", s.LastActivity)
	if err := m.Hibernate(ctx, s.ID); err != nil {
		m.log.Warn("idle clone not hibernated", "clone", s.ID, "err", err)
	}
}
