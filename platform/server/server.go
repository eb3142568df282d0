// Package server composes the platform: configuration, the database
// (external or embedded), migrations, the gin engine with logging,
// recovery and the access chain, and the route table every package adds
// its routes to.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/internal/version"
	"github.com/thinlab/thinlab/migrations"
	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/api"
	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/principal"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/platformapi"
)

// Options are what the caller adds to a configuration.
type Options struct {
	Logger *slog.Logger
	// Setup runs after the database is ready and the core routes are
	// mounted, before serving. platform/auth and platform/web use it to add
	// the session authenticator (AddAuthenticator) and their routes (Handle).
	Setup []func(*Server) error
}

// Server is one platform replica.
type Server struct {
	cfg      Config
	logger   *slog.Logger
	store    *store.Store
	audit    *audit.Recorder
	guard    *access.Guard
	engine   *gin.Engine
	embedded *embeddedDB

	mu     sync.Mutex
	routes []access.Route
}

// New opens (or starts) the database, applies migrations and builds the
// HTTP handler. Close releases what it started.
func New(ctx context.Context, cfg Config, opts Options) (_ *Server, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	s := &Server{cfg: cfg, logger: logger}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()

	dsn := cfg.Database.URL
	if dsn == "" {
		e, embeddedDSN, err := startEmbedded(ctx, cfg, logger)
		if err != nil {
			return nil, err
		}
		s.embedded, dsn = e, embeddedDSN
	}
	if s.store, err = store.Open(dsn); err != nil {
		return nil, err
	}
	if err := s.store.Ping(ctx); err != nil {
		return nil, fmt.Errorf("platform database (database.url): %w", err)
	}
	version, err := migrations.Up(ctx, s.store.SQL())
	if err != nil {
		return nil, err
	}
	logger.Info("platform database ready", "schema_version", version)

	s.audit = &audit.Recorder{Store: s.store, Logger: logger}
	s.guard = &access.Guard{
		Authenticators: []principal.Authenticator{access.BearerToken(s.store)},
		Store:          s.store,
		Audit:          s.audit,
		Logger:         logger,
	}
	if s.engine, err = s.newEngine(); err != nil {
		return nil, err
	}
	core := []access.Route{{Method: http.MethodGet, Path: "/healthz", Public: true, Handler: s.healthz}}
	core = append(core, api.Routes(&api.API{Store: s.store, Logger: logger})...)
	if err := s.Handle(core...); err != nil {
		return nil, err
	}
	for _, setup := range opts.Setup {
		if err := setup(s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func (s *Server) newEngine() (*gin.Engine, error) {
	gin.SetMode(gin.ReleaseMode)
	e := gin.New()
	e.ContextWithFallback = true
	if err := e.SetTrustedProxies(s.cfg.TrustedProxies); err != nil {
		return nil, fmt.Errorf("trustedProxies: %w", err)
	}
	e.Use(s.logRequests, gin.CustomRecoveryWithWriter(nil, s.recover))
	e.NoRoute(func(c *gin.Context) {
		access.Error(c, http.StatusNotFound, platformapi.CodeNotFound, "no such route: "+c.Request.Method+" "+c.Request.URL.Path, "")
	})
	return e, nil
}

// logRequests logs one line per request. It logs the route template
// (/api/v1/invitations/:token/accept), never the raw path or query, which
// can carry secrets.
func (s *Server) logRequests(c *gin.Context) {
	start := time.Now()
	c.Next()
	route := c.FullPath()
	if route == "" {
		route = "(no route)"
	}
	attrs := []any{
		"method", c.Request.Method, "route", route, "status", c.Writer.Status(),
		"duration_ms", float64(time.Since(start).Microseconds()) / 1000, "ip", c.ClientIP(),
	}
	if p := principal.From(c); p != nil {
		attrs = append(attrs, "user", p.UserID, "auth", p.Method)
	}
	level := slog.LevelInfo
	if c.Writer.Status() >= 500 {
		level = slog.LevelError
	}
	s.logger.Log(c.Request.Context(), level, "http request", attrs...)
}

func (s *Server) recover(c *gin.Context, v any) {
	s.logger.Error("panic in handler", "route", c.FullPath(), "panic", fmt.Sprint(v))
	access.Error(c, http.StatusInternalServerError, platformapi.CodeInternal, "internal error", "")
}

func (s *Server) healthz(c *gin.Context) {
	ctx, cancel := context.WithTimeout(c.Request.Context(), 3*time.Second)
	defer cancel()
	if err := s.store.Ping(ctx); err != nil {
		s.logger.Warn("health check: database", "err", err)
		c.JSON(http.StatusServiceUnavailable, gin.H{"status": "unavailable", "database": "unreachable", "version": version.Version})
		return
	}
	c.JSON(http.StatusOK, gin.H{"status": "ok", "version": version.Version})
}

// Handle declares and mounts routes behind the access chain. A route whose
// declaration is incomplete (an organization route without a permission, a
// mutation without an audit action) is refused.
func (s *Server) Handle(routes ...access.Route) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.guard.Mount(s.engine, routes); err != nil {
		return err
	}
	s.routes = append(s.routes, routes...)
	return nil
}

// AddAuthenticator appends an authenticator, tried after the API token
// one. Call it before serving.
func (s *Server) AddAuthenticator(a principal.Authenticator) {
	s.guard.Authenticators = append(s.guard.Authenticators, a)
}

// Routes returns the route table, for tests that walk every route.
func (s *Server) Routes() []access.Route {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]access.Route(nil), s.routes...)
}

// Config returns the configuration the server runs with.
func (s *Server) Config() Config { return s.cfg }

// Store is the platform database.
func (s *Server) Store() *store.Store { return s.store }

// Audit is the audit recorder, for packages that record outside a route.
func (s *Server) Audit() *audit.Recorder { return s.audit }

// Logger is the server's logger.
func (s *Server) Logger() *slog.Logger { return s.logger }

// Handler is the HTTP handler.
func (s *Server) Handler() http.Handler { return s.engine }

// Serve answers HTTP on ln until ctx ends, then shuts down gracefully
// within the configured timeout.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{Handler: s.engine, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	s.logger.Info("platform listening", "addr", ln.Addr().String())
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		return fmt.Errorf("graceful shutdown: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// ListenAndServe listens on the configured address and serves until ctx ends.
func (s *Server) ListenAndServe(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", s.cfg.Listen, err)
	}
	return s.Serve(ctx, ln)
}

// Close closes the database and stops the embedded cluster, if any.
func (s *Server) Close() error {
	var errs []error
	if s.store != nil {
		errs = append(errs, s.store.Close())
		s.store = nil
	}
	if s.embedded != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := s.embedded.stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stop the embedded database: %w", err))
		}
		s.embedded = nil
	}
	return errors.Join(errs...)
}

// Migrate applies the migrations to the configured database (starting and
// stopping the embedded cluster when no URL is set) and returns the
// version reached.
func Migrate(ctx context.Context, cfg Config, logger *slog.Logger) (int64, error) {
	if err := cfg.Validate(); err != nil {
		return 0, err
	}
	if logger == nil {
		logger = slog.Default()
	}
	dsn := cfg.Database.URL
	if dsn == "" {
		e, embeddedDSN, err := startEmbedded(ctx, cfg, logger)
		if err != nil {
			return 0, err
		}
		defer e.stop(context.Background())
		dsn = embeddedDSN
	}
	st, err := store.Open(dsn)
	if err != nil {
		return 0, err
	}
	defer st.Close()
	return migrations.Up(ctx, st.SQL())
}
