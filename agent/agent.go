// Package agent is the composition root of the Thinlab agent (engine): it
// opens the configured pools, builds the clone manager, the retriever and
// the HTTP API, and runs them until its context ends. Clones outlive the
// agent process: the clone manager's state file lets the next start (even
// after kill -9) find and keep serving every clone.
package agent

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/xid"

	"github.com/thinlab/thinlab/agent/api"
	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/agent/logstream"
	"github.com/thinlab/thinlab/agent/retrieval"
	"github.com/thinlab/thinlab/agent/snapshot"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/backend"
	agenttunnel "github.com/thinlab/thinlab/agent/tunnel"
	"github.com/thinlab/thinlab/agent/usage"
	"github.com/thinlab/thinlab/internal/pgcluster"
	"github.com/thinlab/thinlab/internal/version"
)

// instanceIDFile keeps the agent's instance ID (DLE's instanceID) stable
// across restarts.
const instanceIDFile = "instance_id"

// shutdownTimeout bounds waiting for in-flight API requests at shutdown.
const shutdownTimeout = 30 * time.Second

// HTTP server timeouts. Request bodies are small (1 MiB at most), so
// reading one is quick; the slowest answers are POST /snapshot and a
// forced DELETE /snapshot (which waits for dependent clones to go), which
// take seconds to minutes on a large pool, hence the long write timeout.
// Idle keep-alive connections are closed after IdleTimeout.
const (
	ReadHeaderTimeout = 10 * time.Second
	ReadTimeout       = time.Minute
	WriteTimeout      = 10 * time.Minute
	IdleTimeout       = 2 * time.Minute
)

// Options configure an agent beyond its config file.
type Options struct {
	Config *config.Config
	Logger *slog.Logger
	// Version is reported by /healthz and /status; empty means the version
	// stamped into the binary (internal/version).
	Version string
	// Pools, when set, are used instead of opening cfg.Pools (tests that
	// bring their own pool); they must match cfg.Pools by name.
	Pools []storage.Pool
	// ReportInterval is how often usage samples and health go to the
	// platform (usage.DefaultInterval when zero; tests shorten it).
	ReportInterval time.Duration
}

// Agent is one running engine.
type Agent struct {
	cfg            *config.Config
	instanceID     string
	reportInterval time.Duration
	log            *slog.Logger
	pools          []storage.Pool
	clones         *clone.Manager
	retrieval      *retrieval.Retriever
	// retrievalRef is retrieval for the clone manager's archive look-ups,
	// which may run (a restored clone's build) before it is assigned.
	retrievalRef atomic.Pointer[retrieval.Retriever]
	snapshots    *snapshot.Policy
	api          *api.Server
	listener     net.Listener
	server       *http.Server
	// metricsListener/metricsServer serve /metrics without a token on
	// server.metricsAddress (nil when unset).
	metricsListener net.Listener
	metricsServer   *http.Server
	// events is where clones (and later retrieval and snapshots) announce
	// what happened; tunnel delivers them to the platform (nil without
	// platform.url).
	events *events.Bus
	tunnel *agenttunnel.Client
}

// New opens everything cfg describes and listens on server.host:port; Run
// serves.
func New(ctx context.Context, cfg *config.Config, logger *slog.Logger) (*Agent, error) {
	return NewWithOptions(ctx, Options{Config: cfg, Logger: logger})
}

// logLines is how many log lines the agent keeps for /instance/logs.
const logLines = 2000

// NewWithOptions is New with Options.
func NewWithOptions(ctx context.Context, opt Options) (a *Agent, err error) {
	cfg := opt.Config
	if cfg == nil {
		return nil, errors.New("agent: no config")
	}
	log := opt.Logger
	if log == nil {
		log = slog.Default()
	}
	// The recent log, for DLE's UI (the /instance/logs websocket).
	logs := logstream.New(logLines)
	log = slog.New(logs.Handler(log.Handler()))
	// Validated again here: a config built in code must not start an API
	// without authentication either.
	if err := cfg.ValidateServer(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	a = &Agent{cfg: cfg, log: log, events: events.NewBus()}
	// Undo what was built when a later step fails: clones keep running
	// (the next start finds them), only this process lets go.
	defer func() {
		if err != nil {
			if cerr := a.Close(); cerr != nil {
				log.Warn("releasing a partly built agent failed", "err", cerr)
			}
		}
	}()

	a.pools = opt.Pools
	if a.pools == nil {
		if a.pools, err = openPools(ctx, cfg, log); err != nil {
			return nil, err
		}
	}
	if a.clones, err = clone.NewManager(ctx, clone.Options{Config: cfg, Pools: a.pools, Logger: log, Events: a.events, Archive: a.archive}); err != nil {
		return nil, fmt.Errorf("clones: %w", err)
	}
	var retrievalPool storage.Pool
	var rotation []storage.Pool // retrieval.pools
	if cfg.Retrieval.Mode != "" {
		for i, name := range cfg.Retrieval.Pools {
			p, ok := a.clones.Pool(name)
			if !ok {
				return nil, fmt.Errorf("retrieval.pools[%d] %q is not one of the configured pools", i, name)
			}
			rotation = append(rotation, p)
		}
		if len(rotation) == 0 {
			p, ok := a.clones.Pool(cfg.Retrieval.Pool)
			if !ok {
				return nil, fmt.Errorf("retrieval.pool %q is not one of the configured pools", cfg.Retrieval.Pool)
			}
			retrievalPool = p
		}
	}
	// One snapshot policy for the API (protection, deleteAt), its sweep
	// and retention after every refresh.
	a.snapshots = snapshot.New(snapshot.Options{Config: cfg, Pools: a.pools, Clones: a.clones, Logger: log, Events: a.events})
	if a.retrieval, err = retrieval.New(retrieval.Options{Config: cfg, Pool: retrievalPool, Pools: rotation, Logger: log, Retention: a.snapshots, Events: a.events}); err != nil {
		return nil, fmt.Errorf("retrieval: %w", err)
	}
	a.retrievalRef.Store(a.retrieval)
	instanceID, err := loadInstanceID(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	startedAt, ver := time.Now(), cmp.Or(opt.Version, version.Version)
	a.api = api.New(api.Options{
		Events:     a.events,
		Config:     cfg,
		Clones:     a.clones,
		Retrieval:  a.retrieval,
		Snapshots:  a.snapshots,
		Logs:       logs,
		Pools:      a.pools,
		Logger:     log,
		Version:    ver,
		InstanceID: instanceID,
		StartedAt:  startedAt,
	})
	a.instanceID = instanceID
	a.reportInterval = cmp.Or(opt.ReportInterval, usage.DefaultInterval)
	if a.tunnel, err = a.newPlatformTunnel(ver, instanceID, startedAt); err != nil {
		return nil, err
	}
	addr := net.JoinHostPort(cfg.Server.Host, strconv.Itoa(cfg.Server.Port))
	if a.listener, err = net.Listen("tcp", addr); err != nil {
		return nil, fmt.Errorf("server: listen on %s (server.host, server.port): %w", addr, err)
	}
	a.server = newHTTPServer(a.api.Handler(), log)
	if t := cfg.Server.TLS; t.Enabled() {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("server.tls: %w", err)
		}
		a.server.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		a.listener = tls.NewListener(a.listener, a.server.TLSConfig)
	}
	if cfg.Server.MetricsAddress != "" {
		if a.metricsListener, err = net.Listen("tcp", cfg.Server.MetricsAddress); err != nil {
			return nil, fmt.Errorf("server.metricsAddress: listen on %s: %w", cfg.Server.MetricsAddress, err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", a.api.MetricsHandler())
		a.metricsServer = newHTTPServer(mux, log)
	}
	return a, nil
}

func newHTTPServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		// Errors of the HTTP server itself (TLS, bad requests) go to the
		// agent's log.
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// openPools opens every configured pool through the storage backends.
func openPools(ctx context.Context, cfg *config.Config, log *slog.Logger) ([]storage.Pool, error) {
	owner, err := pgcluster.LookupUser(cfg.Provision.OSUser)
	if err != nil {
		return nil, fmt.Errorf("provision.osUser: %w", err)
	}
	pools := make([]storage.Pool, 0, len(cfg.Pools))
	for i, pc := range cfg.Pools {
		p, err := backend.Open(ctx, backend.Config{
			Name:      pc.Name,
			Mode:      pc.Mode,
			Path:      pc.Path,
			ClonesDir: pc.ClonesDir,
			Owner:     &storage.Owner{UID: int(owner.UID), GID: int(owner.GID)},
			Logger:    log, // each backend adds its pool name
		})
		if err != nil {
			return nil, fmt.Errorf("pools[%d]: %w", i, err)
		}
		pools = append(pools, p)
	}
	return pools, nil
}

// loadInstanceID reads the instance ID from the state directory, making
// one on the first start.
func loadInstanceID(stateDir string) (string, error) {
	// Opened through os.Root: the file cannot be a link out of stateDir.
	dir, err := os.OpenRoot(stateDir)
	if err != nil {
		return "", fmt.Errorf("stateDir: %w", err)
	}
	defer func() { _ = dir.Close() }() // read-only use of a directory handle: nothing to flush
	raw, err := dir.ReadFile(instanceIDFile)
	if err == nil && strings.TrimSpace(string(raw)) != "" {
		return strings.TrimSpace(string(raw)), nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("stateDir: %w", err)
	}
	id := xid.New().String()
	if err := dir.WriteFile(instanceIDFile, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("stateDir: %w", err)
	}
	return id, nil
}

// Addr is the address the API listens on.
func (a *Agent) Addr() string { return a.listener.Addr().String() }

// MetricsAddr is the address of the token-free metrics listener ("" when
// server.metricsAddress is unset).
func (a *Agent) MetricsAddr() string {
	if a.metricsListener == nil {
		return ""
	}
	return a.metricsListener.Addr().String()
}

// Clones is the clone manager (for tests and status pages).
func (a *Agent) Clones() *clone.Manager { return a.clones }

// Run starts retrieval's schedule and serves the API until ctx ends, then
// shuts down gracefully: in-flight requests finish, running clone
// operations complete, clones keep running.
func (a *Agent) Run(ctx context.Context) error {
	a.retrieval.Start(ctx)
	a.snapshots.Start()
	names := make([]string, 0, len(a.pools))
	for _, p := range a.pools {
		names = append(names, p.Name()+" ("+p.Mode()+")")
	}
	a.log.Info("agent listening", "addr", a.Addr(), "tls", a.cfg.Server.TLS.Enabled(), "pools", strings.Join(names, ", "), "clones", len(a.clones.List()), "auth", !a.cfg.Server.InsecureNoAuth)
	if a.cfg.Server.InsecureNoAuth {
		a.log.Warn("INSECURE: server.insecureNoAuth is set: the agent API accepts every request WITHOUT A TOKEN from anyone who can reach " + a.Addr() + "; for development only, set server.verificationToken instead")
	}
	serveErr := make(chan error, 2)
	go func() { serveErr <- a.server.Serve(a.listener) }()
	if a.metricsServer != nil {
		a.log.Info("metrics listening without a token", "addr", a.metricsListener.Addr().String())
		go func() { serveErr <- a.metricsServer.Serve(a.metricsListener) }()
	}

	tunnelCtx, stopTunnel := context.WithCancel(ctx)
	tunnelDone := make(chan struct{})
	go func() {
		defer close(tunnelDone)
		if a.tunnel == nil {
			return
		}
		a.log.Info("connecting to the platform", "url", a.cfg.Platform.URL)
		var wg sync.WaitGroup
		wg.Go(func() { _ = a.tunnel.Run(tunnelCtx) }) // retries until its context ends, then returns nil
		wg.Go(func() { a.reportToPlatform(tunnelCtx) })
		wg.Wait()
	}()

	var err error
	select {
	case <-ctx.Done():
		a.log.Info("agent shutting down")
		sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		if serr := a.server.Shutdown(sctx); serr != nil {
			a.log.Warn("API shutdown did not finish in time", "err", serr)
		}
		if a.metricsServer != nil {
			if serr := a.metricsServer.Shutdown(sctx); serr != nil {
				a.log.Warn("metrics shutdown did not finish in time", "err", serr)
			}
		}
		cancel()
	case err = <-serveErr:
		err = fmt.Errorf("API server: %w", err)
		// The serve error is what Run reports; closing what is left is
		// best effort.
		_ = a.server.Close()
		if a.metricsServer != nil {
			_ = a.metricsServer.Close()
		}
	}
	stopTunnel()
	<-tunnelDone
	a.close()
	a.log.Info("agent stopped")
	return err
}

// close releases everything. Clones keep running. The platform tunnel's
// event journal goes last: closing the clones and retrieval waits for
// their running operations, whose ends are events for the platform.
func (a *Agent) close() {
	if a.api != nil {
		a.api.Close()
	}
	if a.retrieval != nil {
		if err := a.retrieval.Close(); err != nil {
			a.log.Error("stopping retrieval at shutdown failed", "err", err)
		}
	}
	if a.snapshots != nil {
		a.snapshots.Close()
	}
	if a.clones != nil {
		if err := a.clones.Close(); err != nil {
			a.log.Error("saving clone state at shutdown failed", "err", err)
		}
	}
	if a.tunnel != nil {
		if err := a.tunnel.Close(); err != nil {
			a.log.Warn("closing the platform event journal failed", "err", err)
		}
		a.tunnel = nil
	}
}

// Close releases an agent that was built but never Run.
func (a *Agent) Close() error {
	var errs []error
	for _, l := range []net.Listener{a.listener, a.metricsListener} {
		// Run's shutdown already closed them: that is not a failure.
		if l != nil {
			if err := l.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
				errs = append(errs, err)
			}
		}
	}
	a.close()
	return errors.Join(errs...)
}
