// Package api is the agent's HTTP API, wire-compatible with Database Lab
// Engine's (see docs/agent-api.md): same routes, methods, JSON field names,
// time formats, error body and Verification-Token header, served at bare
// paths and mirrored under /api/ (where DLE's UI proxy serves them).
// Thinlab's additions are extra fields and routes only. The JSON types are
// those of sdk/agentapi, which clients link.
package api

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	_ "embed"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/agent/branch"
	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/agent/logstream"
	"github.com/thinlab/thinlab/agent/retrieval"
	"github.com/thinlab/thinlab/agent/snapshot"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/sdk/agentapi"
)

// Edition is what the agent reports as DLE's engine edition.
const Edition = "community"

// openAPISpec documents every route; a test checks it against the router.
//
//go:embed openapi.yaml
var openAPISpec []byte

// Clones is what the API needs of the clone engine (clone.Manager). It is
// declared here, by its consumer, so that tests can serve the API over an
// in-memory fake without root or a pool.
type Clones interface {
	List() []clone.Clone
	Get(id string) (clone.Clone, error)
	Wait(ctx context.Context, id string) (clone.Clone, error)
	Create(ctx context.Context, r clone.CreateRequest) (clone.Clone, error)
	Reset(ctx context.Context, id string, r clone.ResetRequest) (clone.Clone, error)
	CreateReplicas(ctx context.Context, id string, count int) ([]clone.Clone, error)
	Destroy(ctx context.Context, id string) error
	UpdateProtection(id string, protected bool, durationMinutes *uint) (clone.Clone, error)
	SetLabels(id string, labels map[string]string) (clone.Clone, error)
	ExpectedCloningTime() time.Duration
	Pool(name string) (storage.Pool, bool)
	SnapshotClone(ctx context.Context, id string, opt storage.SnapshotOptions) (storage.Snapshot, error)
	InspectClone(ctx context.Context, id, db string, fn func(context.Context, *pgx.Conn) error) error
	InspectSnapshot(ctx context.Context, snapshotID, db string, fn func(context.Context, *pgx.Conn) error) error
}

var _ Clones = (*clone.Manager)(nil)

// Options configure a Server.
type Options struct {
	// Config supplies the verification token and the cloning policy.
	Config *config.Config
	Clones Clones
	// Retrieval may be nil (then retrieval is reported inactive).
	Retrieval *retrieval.Retriever
	// Pools are the agent's pools in config order.
	Pools  []storage.Pool
	Logger *slog.Logger

	Version    string
	InstanceID string
	StartedAt  time.Time

	// Snapshots is snapshot protection, scheduled deletion and retention
	// (the agent wires one and runs its sweep). When nil, New builds one
	// over Pools with Now and SweepInterval, runs its sweep and Close
	// stops it.
	Snapshots *snapshot.Policy
	// Events receives the snapshot changes made through the API (nil:
	// none sent).
	Events *events.Bus
	// Logs is the agent's recent log (the /instance/logs websocket); nil
	// answers 404 there.
	Logs *logstream.Hub
	// Branches is data branching; when nil, New builds one over Pools,
	// Clones and the config's stateDir.
	Branches *branch.Service

	// Now is the clock (time.Now when nil); tests move it to expire
	// snapshot protection.
	Now func() time.Time
	// SweepInterval is how often the snapshot sweep of a policy New builds
	// runs (one minute when zero; negative disables the loop, and tests
	// call SweepSnapshots).
	SweepInterval time.Duration
	// MetricsInterval is how often pool metrics are refreshed in the
	// background (DefaultMetricsInterval when zero; negative disables the
	// loop, and tests call RefreshMetrics).
	MetricsInterval time.Duration
}

// Server answers the agent API.
type Server struct {
	cfg       *config.Config
	clones    Clones
	retrieval *retrieval.Retriever
	pools     []storage.Pool
	log       *slog.Logger
	version   string
	instance  string
	startedAt time.Time
	metrics   *metrics
	router    *gin.Engine
	now       func() time.Time

	// snaps is snapshot protection and scheduled deletion; ownSnaps says
	// New built it, so Close stops it.
	snaps    *snapshot.Policy
	ownSnaps bool

	branches *branch.Service
	logs     *logstream.Hub
	// events receives snapshot.created/deleted of API calls (nil: none).
	events   *events.Bus
	wsTokens wsTokens
	// branchErr is why the branch state could not be loaded; the branch
	// routes answer 500 with it logged.
	branchErr error

	// bg bounds the goroutines that watch new clones for the creation-time
	// histogram.
	bg       context.Context
	bgCancel context.CancelFunc
	bgWG     sync.WaitGroup
}

// New builds the server and its routes.
func New(opt Options) *Server {
	log := opt.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Server{
		cfg:       opt.Config,
		clones:    opt.Clones,
		retrieval: opt.Retrieval,
		pools:     opt.Pools,
		log:       log.With("component", "api"),
		version:   opt.Version,
		instance:  opt.InstanceID,
		startedAt: opt.StartedAt,
	}
	if s.version == "" {
		s.version = "dev"
	}
	s.now = opt.Now
	if s.now == nil {
		s.now = time.Now
	}
	s.snaps = opt.Snapshots
	if s.snaps == nil {
		s.snaps = snapshot.New(snapshot.Options{Config: s.cfg, Pools: s.pools, Clones: s.clones, Logger: log, Now: s.now, SweepInterval: opt.SweepInterval})
		s.ownSnaps = true
		s.snaps.Start()
	}
	s.logs = opt.Logs
	s.events = opt.Events
	s.branches = opt.Branches
	if s.branches == nil {
		s.branches, s.branchErr = branch.New(branch.Options{StateDir: s.cfg.StateDir, Pools: s.pools, Clones: s.clones, Logger: log, Now: s.now})
		if s.branchErr != nil {
			s.log.Error("branch state unreadable: the branch routes fail until it is fixed", "err", s.branchErr)
		}
	}
	s.bg, s.bgCancel = context.WithCancel(context.Background())
	s.metrics = newMetrics(s)
	if opt.MetricsInterval >= 0 {
		interval := opt.MetricsInterval
		if interval == 0 {
			interval = DefaultMetricsInterval
		}
		s.bgWG.Add(1)
		go s.refreshMetricsLoop(interval)
	}
	s.router = s.routes()
	return s
}

// Handler is the HTTP handler of the whole API.
func (s *Server) Handler() http.Handler { return s.router }

// Close stops background work started by requests.
func (s *Server) Close() {
	s.bgCancel()
	s.bgWG.Wait()
	if s.ownSnaps {
		s.snaps.Close()
	}
}

func (s *Server) routes() *gin.Engine {
	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	r.HandleMethodNotAllowed = true
	r.RedirectTrailingSlash = true
	r.RedirectFixedPath = false
	// Path variables stay raw, as in DLE (clients send IDs unescaped).
	r.UseRawPath = true
	r.UnescapePathValues = false
	r.Use(s.requestID, s.recoverPanic, s.logRequest)
	r.NoRoute(func(c *gin.Context) {
		writeError(c, http.StatusNotFound, agentapi.CodeNotFound, "Requested object does not exist. Specify your request.", "no route "+c.Request.Method+" "+c.Request.URL.Path)
	})
	// DLE answers a wrong method with 405 and an empty body.
	r.NoMethod(func(c *gin.Context) {
		c.Status(http.StatusMethodNotAllowed)
		c.Writer.WriteHeaderNow()
	})

	s.mount(r.Group(""))
	// DLE's UI opens the log websocket under /ws/ (its WS_URL_PREFIX).
	r.GET("/ws/instance/logs", s.instanceLogs)
	// DLE's UI reaches the engine through a proxy that strips /api/; the
	// agent serves the same routes there so the UI needs no proxy.
	s.mount(r.Group("/api"))
	return r
}

// mount registers every route under g.
func (s *Server) mount(g *gin.RouterGroup) {
	// Without a token: health and the API description.
	g.GET("/healthz", s.healthz)
	g.POST("/healthz", s.healthz)
	g.GET("/openapi.yaml", s.openAPI)
	// The websocket carries no header: its single-use token (from
	// /admin/ws-auth) is the authentication, as in DLE.
	g.GET("/instance/logs", s.instanceLogs)

	a := g.Group("", s.requireToken)
	// Metrics name clones and pools: behind the token (or, without it, on
	// server.metricsAddress, see MetricsHandler).
	a.GET("/metrics", s.metricsHandler)
	a.GET("/status", s.status)
	a.GET("/snapshots", s.listSnapshots)
	a.GET("/snapshots/diff", s.diffSnapshots)
	a.GET("/snapshots/export", s.exportSnapshot)
	a.POST("/snapshots/import", s.importSnapshot)
	a.POST("/snapshots/ship", s.shipSnapshot)
	a.POST("/snapshots/fetch", s.fetchSnapshot)
	a.GET("/clone/:id/diff", s.diffClone)
	a.POST("/snapshot", s.createSnapshot)
	// Snapshot IDs may contain '/' in DLE (branch snapshots): catch-all.
	a.GET("/snapshot/*id", s.getSnapshot)
	a.DELETE("/snapshot/*id", s.deleteSnapshot)
	a.PATCH("/snapshot/*id", s.updateSnapshot)
	a.GET("/clones", s.listClones)
	a.POST("/clone", s.createClone)
	a.GET("/clone/:id", s.getClone)
	a.PATCH("/clone/:id", s.updateClone)
	a.DELETE("/clone/:id", s.destroyClone)
	a.POST("/clone/:id/reset", s.resetClone)
	a.POST("/clone/:id/replicas", s.createReplicas)
	a.GET("/instance/retrieval", s.getRetrieval)
	a.GET("/branches", s.listBranches)
	a.POST("/branch", s.createBranch)
	a.POST("/branch/snapshot", s.commitClone)
	a.GET("/branch/snapshot/*id", s.getBranchSnapshot)
	a.GET("/branch/:name/log", s.branchLog)
	a.DELETE("/branch/:name", s.deleteBranch)
	a.PATCH("/branch/:name", s.updateBranch)
	a.POST("/snapshot/clone", s.snapshotClone)
	a.GET("/admin/config", s.getConfig)
	a.POST("/admin/config", s.postConfig)
	a.GET("/admin/config.yaml", s.getConfigYAML)
	a.GET("/admin/ws-auth", s.wsAuth)
	a.POST("/full-refresh", s.fullRefresh)
}

// requireToken checks the Verification-Token header (DLE's clients) or
// Authorization: Bearer (Prometheus' authorization.credentials) in
// constant time. Unlike DLE, an empty token does not turn authentication
// off: only server.insecureNoAuth does (config validation allows it on
// loopback only), so a config built in code without a token refuses every
// request instead of serving them all.
func (s *Server) requireToken(c *gin.Context) {
	if s.cfg.Server.InsecureNoAuth {
		return
	}
	want := s.cfg.Server.VerificationToken
	got := c.GetHeader(agentapi.VerificationTokenHeader)
	if got == "" {
		if h := c.GetHeader("Authorization"); len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
			got = strings.TrimSpace(h[7:])
		}
	}
	// Hashing first makes the comparison independent of the token's
	// length too.
	gotSum, wantSum := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(want))
	if got == "" || want == "" || subtle.ConstantTimeCompare(gotSum[:], wantSum[:]) != 1 {
		writeError(c, http.StatusUnauthorized, agentapi.CodeUnauthorized, "Check your verification token.", "")
		c.Abort()
		return
	}
}

// recoverPanic turns a handler panic into a JSON 500 instead of a dropped
// connection.
func (s *Server) recoverPanic(c *gin.Context) {
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("panic in API handler", "method", c.Request.Method, "path", c.FullPath(), "request_id", requestIDOf(c), "panic", v)
			if !c.Writer.Written() {
				writeError(c, http.StatusInternalServerError, agentapi.CodeInternal, internalMessage(c), "")
			}
			c.Abort()
		}
	}()
	c.Next()
}

// logRequest logs method, route, status and duration (never headers: they
// carry the token).
func (s *Server) logRequest(c *gin.Context) {
	start := time.Now()
	c.Next()
	route := c.FullPath()
	if route == "" {
		route = "unmatched"
	}
	s.log.Debug("api request", "method", c.Request.Method, "route", route, "status", c.Writer.Status(), "request_id", requestIDOf(c), "took", time.Since(start))
}

func (s *Server) openAPI(c *gin.Context) {
	c.Data(http.StatusOK, "application/yaml; charset=utf-8", openAPISpec)
}

func (s *Server) healthz(c *gin.Context) {
	c.JSON(http.StatusOK, agentapi.Health{Version: s.version, Edition: Edition, InstanceID: s.instance})
}
