// Package agent is the composition root of the Thinlab agent (engine): it
// opens the configured pools, builds the clone manager, the retriever and
// the HTTP API, and runs them until its context ends. Clones outlive the
// agent process: the clone manager's state file lets the next start (even
// after kill -9) find and keep serving every clone.
package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/rs/xid"

	"github.com/thinlab/thinlab/agent/api"
	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/retrieval"
	"github.com/thinlab/thinlab/agent/snapshot"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/backend"
	"github.com/thinlab/thinlab/internal/pgcluster"
	"github.com/thinlab/thinlab/internal/version"
)

// instanceIDFile keeps the agent's instance ID (DLE's instanceID) stable
// across restarts.
const instanceIDFile = "instance_id"

// shutdownTimeout bounds waiting for in-flight API requests at shutdown.
const shutdownTimeout = 30 * time.Second

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
}

// Agent is one running engine.
type Agent struct {
	cfg       *config.Config
	log       *slog.Logger
	pools     []storage.Pool
	clones    *clone.Manager
	retrieval *retrieval.Retriever
	snapshots *snapshot.Policy
	api       *api.Server
	listener  net.Listener
	server    *http.Server
}

// New opens everything cfg describes and listens on server.host:port; Run
// serves.
func New(ctx context.Context, cfg *config.Config, logger *slog.Logger) (*Agent, error) {
	return NewWithOptions(ctx, Options{Config: cfg, Logger: logger})
}

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
	a = &Agent{cfg: cfg, log: log}
	warnUnusedPlatform(cfg, log)
	// Undo what was built when a later step fails: clones keep running
	// (the next start finds them), only this process lets go.
	defer func() {
		if err != nil {
			a.close()
		}
	}()

	a.pools = opt.Pools
	if a.pools == nil {
		if a.pools, err = openPools(ctx, cfg, log); err != nil {
			return nil, err
		}
	}
	if a.clones, err = clone.NewManager(ctx, clone.Options{Config: cfg, Pools: a.pools, Logger: log}); err != nil {
		return nil, fmt.Errorf("clones: %w", err)
	}
	var retrievalPool storage.Pool
	if cfg.Retrieval.Mode != "" {
		p, ok := a.clones.Pool(cfg.Retrieval.Pool)
		if !ok {
			return nil, fmt.Errorf("retrieval.pool %q is not one of the configured pools", cfg.Retrieval.Pool)
		}
		retrievalPool = p
	}
	// One snapshot policy for the API (protection, deleteAt), its sweep
	// and retention after every refresh.
	a.snapshots = snapshot.New(snapshot.Options{Config: cfg, Pools: a.pools, Clones: a.clones, Logger: log})
	if a.retrieval, err = retrieval.New(retrieval.Options{Config: cfg, Pool: retrievalPool, Logger: log, Retention: a.snapshots}); err != nil {
		return nil, fmt.Errorf("retrieval: %w", err)
	}
	instanceID, err := loadInstanceID(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	a.api = api.New(api.Options{
		Config:     cfg,
		Clones:     a.clones,
		Retrieval:  a.retrieval,
		Snapshots:  a.snapshots,
		Pools:      a.pools,
		Logger:     log,
		Version:    cmp.Or(opt.Version, version.Version),
		InstanceID: instanceID,
		StartedAt:  time.Now(),
	})
	addr := net.JoinHostPort(cfg.Server.Host, strconv.Itoa(cfg.Server.Port))
	if a.listener, err = net.Listen("tcp", addr); err != nil {
		return nil, fmt.Errorf("server: listen on %s (server.host, server.port): %w", addr, err)
	}
	a.server = &http.Server{
		Handler:           a.api.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		// Errors of the HTTP server itself (TLS, bad requests) go to the
		// agent's log.
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return a, nil
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
			Owner:     &owner,
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
	path := filepath.Join(stateDir, instanceIDFile)
	raw, err := os.ReadFile(path)
	if err == nil && strings.TrimSpace(string(raw)) != "" {
		return strings.TrimSpace(string(raw)), nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("stateDir: %w", err)
	}
	id := xid.New().String()
	if err := os.WriteFile(path, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("stateDir: %w", err)
	}
	return id, nil
}

// Addr is the address the API listens on.
func (a *Agent) Addr() string { return a.listener.Addr().String() }

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
	a.log.Info("agent listening", "addr", a.Addr(), "pools", strings.Join(names, ", "), "clones", len(a.clones.List()), "auth", a.cfg.Server.VerificationToken != "")
	serveErr := make(chan error, 1)
	go func() { serveErr <- a.server.Serve(a.listener) }()

	var err error
	select {
	case <-ctx.Done():
		a.log.Info("agent shutting down")
		sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		if serr := a.server.Shutdown(sctx); serr != nil {
			a.log.Warn("API shutdown did not finish in time", "err", serr)
		}
		cancel()
	case err = <-serveErr:
		err = fmt.Errorf("API server: %w", err)
	}
	a.close()
	a.log.Info("agent stopped")
	return err
}

// close releases everything in reverse order of New. Clones keep running.
func (a *Agent) close() {
	if a.api != nil {
		a.api.Close()
	}
	if a.retrieval != nil {
		a.retrieval.Close()
	}
	if a.snapshots != nil {
		a.snapshots.Close()
	}
	if a.clones != nil {
		if err := a.clones.Close(); err != nil {
			a.log.Error("saving clone state at shutdown failed", "err", err)
		}
	}
}

// Close releases an agent that was built but never Run.
func (a *Agent) Close() error {
	if a.listener != nil {
		a.listener.Close()
	}
	a.close()
	return nil
}

// warnUnusedPlatform says at start that the platform: section is checked
// but not acted on: the agent does not connect to a platform yet,
// and an operator who configured one should not believe it does.
func warnUnusedPlatform(cfg *config.Config, log *slog.Logger) {
	if cfg.Platform.URL == "" && cfg.Platform.Token == "" {
		return
	}
	log.Warn("config: the platform section is validated but not used yet: this agent does not connect to a platform", "platform.url", cfg.Platform.URL)
}
