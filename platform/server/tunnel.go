package server

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/hub"
	"github.com/thinlab/thinlab/platform/notify"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/platform/usage"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

// heartbeatWriteEvery bounds how often an agent's heartbeat is written to
// the database: the hub pings every few seconds, the database needs to
// know only that the agent is alive well within api.StaleAfter. With a
// shorter heartbeat interval (tests) it is three intervals.
const heartbeatWriteEvery = 15 * time.Second

// tunnelHooks connect the hub (which knows no database) to the store: who
// an agent is, where its tunnel is held, its facts and its events.
type tunnelHooks struct {
	store     *store.Store
	replicaID string
	// writeEvery is how often a heartbeat is written per agent.
	writeEvery time.Duration
	hub        *hub.Hub
	notifier   *notify.Notifier
	logger     interface {
		Warn(string, ...any)
		Error(string, ...any)
	}

	mu sync.Mutex
	// sessions is, per agent, the start of the session recorded as
	// connected and when its heartbeat was last written.
	sessions map[string]*recorded
}

type recorded struct{ since, lastWrite time.Time }

// defaultReplicaID is the host name and a random suffix.
func defaultReplicaID() (string, error) {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "replica"
	}
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	if len(host) > 80 {
		host = host[:80]
	}
	return host + "-" + hex.EncodeToString(b), nil
}

// newHub builds this replica's hub and marks what a previous run of the
// same replica ID left as connected as disconnected: those tunnels ended
// with that run.
func (s *Server) newHub(ctx context.Context) error {
	id := cmp.Or(s.cfg.Tunnel.RelayURL, s.cfg.Tunnel.ReplicaID)
	if id == "" {
		var err error
		if id, err = defaultReplicaID(); err != nil {
			return err
		}
	}
	s.replicaID = id
	if n, err := s.store.MarkReplicaAgentsDisconnected(ctx, id, time.Now()); err != nil {
		return fmt.Errorf("mark the agents of replica %s disconnected: %w", id, err)
	} else if n > 0 {
		s.logger.Warn("agents left marked as connected to this replica by its previous run are now disconnected", "replica", id, "agents", n)
	}
	hooks := &tunnelHooks{store: s.store, notifier: s.notifier, replicaID: id, logger: s.logger, sessions: map[string]*recorded{}, writeEvery: heartbeatWriteEvery}
	if hb := s.cfg.Tunnel.HeartbeatInterval; hb > 0 && 3*hb < heartbeatWriteEvery {
		hooks.writeEvery = 3 * hb
	}
	opt := hub.Options{
		Authenticate:      hooks.authenticate,
		OnConnect:         hooks.onConnect,
		OnDisconnect:      hooks.onDisconnect,
		OnHeartbeat:       hooks.onHeartbeat,
		OnEvents:          hooks.onEvents,
		Logger:            s.logger,
		HeartbeatInterval: s.cfg.Tunnel.HeartbeatInterval,
	}
	if t := s.cfg.Tunnel; t.RelayURL != "" {
		relayTLS, err := tlsWithCA(t.RelayCAFile)
		if err != nil {
			return fmt.Errorf("tunnel.relayCAFile: %w", err)
		}
		opt.Locate = s.store.AgentReplica
		opt.RelayURL = t.RelayURL
		opt.RelaySecret = []byte(t.RelaySecret)
		opt.RelayTLS = relayTLS
	}
	h, err := hub.New(opt)
	if err != nil {
		return err
	}
	hooks.hub = h
	s.hub = h
	return nil
}

// relayRoute mounts the relay between replicas. It is public to the
// access chain: the hub refuses every request not signed with the
// replicas' shared secret (and all of them without tunnel.relayURL).
func (s *Server) relayRoute() access.Route {
	h := s.hub
	return access.Route{
		Method: http.MethodGet, Path: hub.RelayPath, Public: true, RateLimit: access.RateEnrollFailures,
		Handler: func(c *gin.Context) { h.RelayHandler().ServeHTTP(c.Writer, c.Request) },
	}
}

// tlsWithCA is a client TLS configuration trusting caFile only, or the
// system roots when it is empty.
func tlsWithCA(caFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile == "" {
		return cfg, nil
	}
	pem, err := os.ReadFile(caFile) //nolint:gosec // an administrator-configured path
	if err != nil {
		return nil, err
	}
	cfg.RootCAs = x509.NewCertPool()
	if !cfg.RootCAs.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
	}
	return cfg, nil
}

// tunnelRoute mounts the hub. It is public to the access chain (no user
// or API token): the hub itself authenticates the agent's credential and
// answers 401 to anything else, and refused credentials count against the
// enrollment failure limit of the caller's address, like enrollments.
func (s *Server) tunnelRoute() access.Route {
	h := s.hub
	return access.Route{
		Method: http.MethodGet, Path: tunnel.TunnelPath, Public: true, RateLimit: access.RateEnrollFailures,
		Handler: func(c *gin.Context) { h.ServeHTTP(c.Writer, c.Request) },
	}
}

func (t *tunnelHooks) authenticate(ctx context.Context, r *http.Request) (hub.AgentIdentity, error) {
	cred, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return hub.AgentIdentity{}, errors.New("no agent credential (Authorization: Bearer)")
	}
	id, err := t.store.AuthenticateAgent(ctx, strings.TrimSpace(cred))
	if err != nil {
		return hub.AgentIdentity{}, err
	}
	return hub.AgentIdentity{AgentID: id.AgentID, OrgID: id.OrgID}, nil
}

// onConnect stores the facts; on the first call of a session (not on a
// later facts update) it also records the tunnel as held here.
func (t *tunnelHooks) onConnect(ctx context.Context, a hub.AgentIdentity, facts tunnel.AgentFacts) {
	if err := t.store.UpdateAgentFacts(ctx, a.AgentID, facts); err != nil {
		t.logger.Error("tunnel: store the agent's facts", "agent", a.AgentID, "err", err)
	}
	since, _, ok := t.hub.Connected(a.AgentID)
	if !ok {
		return
	}
	t.mu.Lock()
	r := t.sessions[a.AgentID]
	fresh := r == nil || !r.since.Equal(since)
	if fresh {
		t.sessions[a.AgentID] = &recorded{since: since, lastWrite: since}
	}
	t.mu.Unlock()
	if !fresh {
		return
	}
	// The connection and, when its organization was told the agent had
	// gone, the notification that it is back commit together.
	err := t.store.InTx(ctx, func(tx *store.Store) error {
		ag, err := tx.HubAgent(ctx, a.AgentID)
		if err != nil {
			return err
		}
		if err := tx.MarkAgentConnected(ctx, a.AgentID, t.replicaID, since); err != nil {
			return err
		}
		return t.notifier.AgentReconnected(ctx, tx, ag, since)
	})
	if err != nil {
		t.logger.Error("tunnel: record the agent as connected", "agent", a.AgentID, "err", err)
		return
	}
	t.notifier.Committed()
}

func (t *tunnelHooks) onHeartbeat(a hub.AgentIdentity, at time.Time) {
	t.mu.Lock()
	r := t.sessions[a.AgentID]
	due := r != nil && at.Sub(r.lastWrite) >= t.writeEvery
	if due {
		r.lastWrite = at
	}
	t.mu.Unlock()
	if !due {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := t.store.AgentHeartbeat(ctx, a.AgentID, t.replicaID, at); err != nil {
		t.logger.Warn("tunnel: record the agent's heartbeat", "agent", a.AgentID, "err", err)
	}
}

func (t *tunnelHooks) onDisconnect(a hub.AgentIdentity) {
	t.mu.Lock()
	delete(t.sessions, a.AgentID)
	t.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Nobody is told yet: the delivery worker tells the organization once
	// the agent has stayed away for notifications.disconnectGrace
	// (notify.Worker.CheckDisconnections), so a replica's restart, after
	// which the agent is back within seconds, tells nobody anything.
	if _, err := t.store.MarkAgentDisconnected(ctx, a.AgentID, t.replicaID, time.Now()); err != nil {
		t.logger.Error("tunnel: record the agent as disconnected", "agent", a.AgentID, "err", err)
	}
}

// onEvents stores a batch and the notifications it raises in one
// transaction; the store skips events (and notifications of events) it
// holds already: a batch comes again when its ack was lost. A batch that
// fails is not acked, and the agent sends it again.
func (t *tunnelHooks) onEvents(ctx context.Context, agentID string, events []tunnel.Event) error {
	return StoreAgentEvents(ctx, t.store, t.notifier, agentID, events)
}

// StoreAgentEvents is the hub's ingestion of one batch of an agent's
// events (its OnEvents): every event once by its ID, and the usage
// samples among them as usage rows, each sample once. Exported for the
// ingestion benchmark (platform/usage), which drives it without a
// websocket per simulated agent.
func StoreAgentEvents(ctx context.Context, st *store.Store, n *notify.Notifier, agentID string, events []tunnel.Event) error {
	// Resource samples are kept apart, for the charts (with their own
	// retention and downsampling), not in the event log.
	var samples []tunnel.MetricsSample
	events = slices.DeleteFunc(slices.Clone(events), func(e tunnel.Event) bool {
		if e.Kind != tunnel.MetricsKind {
			return false
		}
		var smp tunnel.MetricsSample
		if err := json.Unmarshal(e.Data, &smp); err != nil || smp.Time.IsZero() {
			// Refusing the batch would stall the agent's journal on it.
			slog.Warn("tunnel: an agent's metrics sample does not read; dropped", "agent", agentID, "event", e.ID, "err", err)
			return true
		}
		samples = append(samples, smp)
		return true
	})
	if _, err := st.InsertAgentMetrics(ctx, agentID, samples); err != nil {
		return err
	}
	if n != nil && len(samples) > 0 {
		if err := notifySamples(ctx, st, n, agentID, samples); err != nil {
			return err
		}
	}
	rows := make([]store.NewAgentEvent, 0, len(events))
	for _, e := range events {
		rows = append(rows, store.NewAgentEvent{
			EventID: e.ID, Kind: e.Kind, Severity: e.Severity, Time: e.Time, Clone: e.Clone,
			Snapshot: e.Snapshot, Pool: e.Pool, Message: e.Message, Data: e.Data,
		})
	}
	// Usage samples also become usage rows, each sample once (its ID is
	// fixed by its period), and the notifications of the events are
	// recorded, all in the events' transaction: a failure is a refused
	// batch, which the agent sends again.
	clones, pools, err := usage.BatchRows(events)
	if err != nil {
		return err
	}
	err = st.InTx(ctx, func(tx *store.Store) error {
		if _, err := tx.InsertAgentEventsWithUsage(ctx, agentID, rows, clones, pools); err != nil {
			return err
		}
		if n == nil {
			return nil
		}
		ag, err := tx.HubAgent(ctx, agentID)
		if err != nil {
			return err
		}
		return n.AgentEvents(ctx, tx, ag.OrgID, agentID, events)
	})
	if err != nil {
		return err
	}
	n.Committed()
	return nil
}

// disconnectors closes a revoked agent's tunnel on every one given.
type disconnectors []interface{ Disconnect(agentID string) }

func (d disconnectors) Disconnect(agentID string) {
	for _, x := range d {
		x.Disconnect(agentID)
	}
}

// notifySamples records the saturation notifications of an agent's new
// samples, with the last hour of its samples for the growth projection.
func notifySamples(ctx context.Context, st *store.Store, n *notify.Notifier, agentID string, samples []tunnel.MetricsSample) error {
	ag, err := st.HubAgent(ctx, agentID)
	if err != nil {
		return err
	}
	points, err := st.AgentMetrics(ctx, ag.OrgID, agentID, samples[0].Time.Add(-70*time.Minute))
	if err != nil {
		return err
	}
	history := make([]tunnel.MetricsSample, 0, len(points))
	for _, p := range points {
		history = append(history, p.Sample)
	}
	err = st.InTx(ctx, func(tx *store.Store) error { return n.Samples(ctx, tx, ag.OrgID, agentID, samples, history) })
	if err == nil {
		n.Committed()
	}
	return err
}
