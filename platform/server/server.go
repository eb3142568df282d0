// Package server is the platform's composition root: from one Config it
// opens (or starts) the database, applies migrations, and builds every
// part, the access chain, sign-in (platform/auth), the JSON API
// (platform/api) and the web UI (platform/web), into one route table on
// one gin engine. No other package registers routes or authenticators.
package server

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/internal/version"
	"github.com/thinlab/thinlab/migrations"
	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/api"
	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/auth"
	"github.com/thinlab/thinlab/platform/billing"
	"github.com/thinlab/thinlab/platform/hub"
	"github.com/thinlab/thinlab/platform/notify"
	"github.com/thinlab/thinlab/platform/principal"
	"github.com/thinlab/thinlab/platform/ratelimit"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/platform/usage"
	"github.com/thinlab/thinlab/platform/web"
	"github.com/thinlab/thinlab/sdk/platformapi"
)

// Options are what the caller adds to a configuration.
type Options struct {
	Logger *slog.Logger
	// Authenticators are tried after the API token and the session
	// cookie; each is built once the store is open. Tests use one to act
	// as a user without a browser sign-in.
	Authenticators []func(*store.Store) principal.Authenticator
	// AgentDisconnector closes a revoked agent's tunnel at once (the
	// tunnel hub); nil when no hub runs, then revocation only stops the
	// credential from working for the next connection.
	AgentDisconnector api.AgentDisconnector
	// Tunnels reaches into connected agents (the tunnel hub): clone
	// connections (`thinlab connect`). Nil when no hub runs here: those
	// routes answer 503.
	Tunnels api.Tunnels
	// StripeHTTPClient is the Stripe client's HTTP client (tests record
	// what reaches stripe-mock); nil: the default.
	StripeHTTPClient *http.Client
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
	routes   []access.Route
	// hub holds the agents' tunnels of this replica, recorded in the
	// database under replicaID.
	hub       *hub.Hub
	replicaID string
	billing   *billing.Billing
	// notifier records notifications in the producers' transactions;
	// worker delivers the outbox until stopWorker, then closes workerDone.
	notifier   *notify.Notifier
	worker     *notify.Worker
	stopWorker context.CancelFunc
	workerDone chan struct{}
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
			err = errors.Join(err, s.Close())
		}
	}()

	dsn, migrationDSN := cfg.Database.URL, cfg.Database.MigrationURL
	if dsn == "" {
		e, err := startEmbedded(ctx, cfg, logger)
		if err != nil {
			return nil, err
		}
		s.embedded, dsn, migrationDSN = e, e.runtimeDSN, e.ownerDSN
	}
	if s.store, err = store.Open(dsn); err != nil {
		return nil, err
	}
	if err := s.store.Ping(ctx); err != nil {
		return nil, fmt.Errorf("platform database (database.url): %w", err)
	}
	version, err := migrateAndGrant(ctx, s.store, migrationDSN, logger)
	if err != nil {
		return nil, err
	}
	logger.Info("platform database ready", "schema_version", version)

	s.audit = &audit.Recorder{Store: s.store, Logger: logger}
	signIn, err := s.newAuth(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.bootstrap(ctx); err != nil {
		return nil, err
	}
	authenticators := []principal.Authenticator{access.BearerToken(s.store), signIn.Authenticator(s.store)}
	for _, mk := range opts.Authenticators {
		authenticators = append(authenticators, mk(s.store))
	}
	s.guard = &access.Guard{
		Authenticators: authenticators,
		Store:          s.store,
		Audit:          s.audit,
		Logger:         logger,
		Limits: access.Limits{
			SignIn:           ratelimit.New(cfg.RateLimits.SignIn),
			BearerFailures:   ratelimit.New(cfg.RateLimits.BearerFailures),
			InvitationAccept: ratelimit.New(cfg.RateLimits.InvitationAccept),
			EnrollFailures:   ratelimit.New(cfg.RateLimits.EnrollFailures),
		},
	}
	if s.engine, err = s.newEngine(); err != nil {
		return nil, err
	}
	s.notifier = notify.New(cfg.Notifications, logger)
	if s.worker, err = notify.NewWorker(s.store, s.notifier, signIn.BaseURL(), logger); err != nil {
		return nil, err
	}
	s.notifier.OnCommit = s.worker.Wake
	if err := s.newHub(ctx); err != nil {
		return nil, err
	}
	// Revocation closes the tunnel held here (and, in tests, elsewhere).
	disconnect := disconnectors{s.hub}
	if opts.AgentDisconnector != nil {
		disconnect = append(disconnect, opts.AgentDisconnector)
	}
	// The whole route table, in one place.
	// Clone connections go through this replica's hub (tests may bring
	// their own).
	var tunnels api.Tunnels = s.hub
	if opts.Tunnels != nil {
		tunnels = opts.Tunnels
	}
	routes := []access.Route{{Method: http.MethodGet, Path: "/healthz", Public: true, Handler: s.healthz}, s.tunnelRoute(), s.relayRoute()}
	s.billing = billing.New(cfg.Billing, s.store, logger, opts.StripeHTTPClient)
	s.billing.Notifier = s.notifier
	copyRate := cmp.Or(cfg.Usage.CopyRateMiBPerSecond, usage.DefaultCopyRateMiBPerSecond)
	routes = append(routes, api.Routes(&api.API{
		Store: s.store, Logger: logger, Audit: s.audit, Disconnector: disconnect, Agents: s.hub, ReplicaID: s.replicaID,
		BaseURL: signIn.BaseURL(), Tunnels: tunnels, Billing: s.billing, CopyRateMiBPerSecond: copyRate,
		Notifier: s.notifier, URLGuard: s.worker.URLGuard(),
	})...)
	wb := web.New(signIn, s.store, logger, disconnect)
	wb.Agents = s.hub
	wb.Billing, wb.CopyRateMiBPerSecond = s.billing, copyRate
	wb.Notifier, wb.URLGuard = s.notifier, s.worker.URLGuard()
	routes = append(routes, wb.Routes()...)
	if err := s.guard.Mount(s.engine, routes); err != nil {
		return nil, err
	}
	s.routes = routes
	wctx, stop := context.WithCancel(context.Background())
	s.stopWorker, s.workerDone = stop, make(chan struct{})
	go func() {
		defer close(s.workerDone)
		s.worker.Run(wctx)
	}()
	return s, nil
}

// newAuth builds sign-in from the auth: section, filling what it leaves
// empty: the base URL from publicURL, a provider named "sso" from oidc.*,
// and a random cookie secret (which only works with a single replica).
// It then reserves the organizations that group mappings name.
func (s *Server) newAuth(ctx context.Context) (*auth.Auth, error) {
	cfg := s.cfg.Auth
	cfg.BaseURL = s.cfg.PublicURL
	if cfg.BaseURL == "" {
		cfg.BaseURL = "http://" + s.cfg.Listen
		s.logger.Warn("publicURL is not set: OIDC callbacks use " + cfg.BaseURL + "; set publicURL to the address browsers use")
	}
	if len(cfg.Providers) == 0 && s.cfg.OIDC.Issuer != "" {
		cfg.Providers = []auth.ProviderConfig{{
			Name: "sso", DisplayName: "single sign-on", Issuer: s.cfg.OIDC.Issuer,
			ClientID: s.cfg.OIDC.ClientID, ClientSecret: s.cfg.OIDC.ClientSecret,
		}}
	}
	if cfg.CookieSecret == "" {
		b := make([]byte, 32)
		if _, err := rand.Read(b); err != nil {
			return nil, err
		}
		cfg.CookieSecret = hex.EncodeToString(b)
		s.logger.Warn("auth.cookieSecret is not set: using a random one; with several replicas set it (or " + EnvPrefix + "AUTH_COOKIE_SECRET) to the same value everywhere")
	}
	if len(cfg.Providers) == 0 {
		s.logger.Warn("no OIDC identity provider configured: nobody can sign in to the web UI (set oidc.issuer or auth.providers)")
	}
	users := auth.StoreUsers{Store: s.store, PersonalOrg: true, Audit: s.audit}
	a, err := auth.New(cfg, auth.Options{Users: users, Sessions: s.store, Logger: s.logger})
	if err != nil {
		return nil, fmt.Errorf("sign-in configuration: %w", err)
	}
	// Validated by auth.New: now reserve the mapped organizations.
	if err := auth.ReserveMappedOrganizations(ctx, s.store, cfg, s.logger); err != nil {
		return nil, err
	}
	return a, nil
}

func (s *Server) newEngine() (*gin.Engine, error) {
	gin.SetMode(gin.ReleaseMode)
	e := gin.New()
	e.ContextWithFallback = true
	if err := e.SetTrustedProxies(s.cfg.TrustedProxies); err != nil {
		return nil, fmt.Errorf("trustedProxies: %w", err)
	}
	e.Use(s.securityHeaders, s.logRequests, gin.CustomRecoveryWithWriter(nil, s.recover))
	e.NoRoute(func(c *gin.Context) {
		access.Error(c, http.StatusNotFound, platformapi.CodeNotFound, "no such route: "+c.Request.Method+" "+c.Request.URL.Path, "")
	})
	return e, nil
}

// securityHeaders go on every answer, errors and 404s included: no
// sniffing, no framing (clickjacking), no full URLs in Referer (they can
// carry invitation secrets), and HSTS when the platform is reached over
// https.
func (s *Server) securityHeaders(c *gin.Context) {
	h := c.Writer.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Content-Security-Policy", "frame-ancestors 'none'")
	h.Set("Referrer-Policy", "strict-origin-when-cross-origin")
	if c.Request.TLS != nil || strings.HasPrefix(s.cfg.PublicURL, "https://") {
		h.Set("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
	}
	c.Next()
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

// Routes returns the route table, for tests that walk every route.
func (s *Server) Routes() []access.Route { return slices.Clone(s.routes) }

// Billing is the platform's billing (disabled without billing.enabled).
func (s *Server) Billing() *billing.Billing { return s.billing }

// Hub is this replica's end of the agents' tunnels.
func (s *Server) Hub() *hub.Hub { return s.hub }

// ReplicaID names this replica in the platform database.
func (s *Server) ReplicaID() string { return s.replicaID }

// Config returns the configuration the server runs with.
func (s *Server) Config() Config { return s.cfg }

// Notifier records notifications (tests record events with it).
func (s *Server) Notifier() *notify.Notifier { return s.notifier }

// NotificationWorker delivers this replica's share of the outbox.
func (s *Server) NotificationWorker() *notify.Worker { return s.worker }

// Store is the platform database.
func (s *Server) Store() *store.Store { return s.store }

// Handler is the HTTP handler.
func (s *Server) Handler() http.Handler { return s.engine }

// Serve answers HTTP on ln until ctx ends, then shuts down gracefully
// within the configured timeout.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{Handler: s.engine, ReadHeaderTimeout: 10 * time.Second}
	// The hourly usage reports to Stripe run while the replica serves
	// (every replica; each hour is computed and each report sent once).
	bctx, stopBilling := context.WithCancel(ctx)
	defer stopBilling()
	go s.billing.Run(bctx)
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	go s.downsampleMetrics(ctx)
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
	if s.stopWorker != nil {
		// A delivery in flight ends with its transaction: the message
		// stays pending for the next run or another replica.
		s.stopWorker()
		<-s.workerDone
		s.stopWorker = nil
	}
	if s.hub != nil {
		// Tunnels are hijacked connections: a graceful HTTP shutdown does
		// not end them. Agents reconnect (to another replica, if any).
		s.hub.Close()
		s.hub = nil
	}
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

// migrateAndGrant applies the migrations. With a migration owner DSN they
// run as the owner, and the runtime role (the one rt is connected as) gets
// its grants; without one they run as the runtime role, with a warning.
func migrateAndGrant(ctx context.Context, rt *store.Store, ownerDSN string, logger *slog.Logger) (int64, error) {
	var runtimeRole string
	var super bool
	if err := rt.SQL().QueryRowContext(ctx, "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user").Scan(&runtimeRole, &super); err != nil {
		return 0, fmt.Errorf("platform database (database.url): %w", err)
	}
	if ownerDSN == "" {
		logger.Warn("database.migrationURL is not set: the application role owns the schema and could alter or empty the audit log; the audit log is tamper-proof only with two roles (see docs/platform-config.md)", "role", runtimeRole)
		return migrations.Up(ctx, rt.SQL())
	}
	owner, err := store.Open(ownerDSN)
	if err != nil {
		return 0, fmt.Errorf("database.migrationURL: %w", err)
	}
	defer func() { _ = owner.Close() }() // a pool used only for migrating; nothing to lose at close
	var ownerRole string
	if err := owner.SQL().QueryRowContext(ctx, "SELECT current_user").Scan(&ownerRole); err != nil {
		return 0, fmt.Errorf("database.migrationURL: %w", err)
	}
	version, err := migrations.Up(ctx, owner.SQL())
	if err != nil {
		return 0, err
	}
	switch {
	case ownerRole == runtimeRole:
		logger.Warn("database.url and database.migrationURL use the same role: the audit log is not tamper-proof; give the application its own role", "role", runtimeRole)
	case super:
		logger.Warn("the application's database role is a superuser: it can alter the audit log; use an ordinary role for database.url", "role", runtimeRole)
	default:
		if err := migrations.GrantRuntime(ctx, owner.SQL(), runtimeRole); err != nil {
			return 0, err
		}
	}
	return version, nil
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
	dsn, ownerDSN := cfg.Database.URL, cfg.Database.MigrationURL
	if dsn == "" {
		e, err := startEmbedded(ctx, cfg, logger)
		if err != nil {
			return 0, err
		}
		defer func() {
			if err := e.stop(context.Background()); err != nil {
				logger.Error("stop the embedded database", "err", err)
			}
		}()
		dsn, ownerDSN = e.runtimeDSN, e.ownerDSN
	}
	st, err := store.Open(dsn)
	if err != nil {
		return 0, err
	}
	defer func() { _ = st.Close() }() // a pool used only for migrating; nothing to lose at close
	return migrateAndGrant(ctx, st, ownerDSN, logger)
}
