package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/billing"
	"github.com/thinlab/thinlab/platform/hub"
	"github.com/thinlab/thinlab/platform/principal"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/platformapi"
)

// AgentTransports reaches agents' own APIs through their tunnels (the
// hub of this replica implements it).
type AgentTransports interface {
	// RoundTripper sends requests to the agent's API; the request's path
	// is the agent API path.
	RoundTripper(agentID string) http.RoundTripper
	// Connected reports whether the agent's tunnel is held here.
	Connected(agentID string) (since, lastHeartbeat time.Time, ok bool)
}

// EnginePrefix is where an agent's own DLE API is reachable through the
// platform: a DLE client (sdk/agentapi, the thinlab CLI) uses
// /api/v1/orgs/ORG/agents/AGENT/engine as its base URL, with
// "Authorization: Bearer <personal API token>" instead of the agent's
// verification token.
const EnginePrefix = Prefix + "/orgs/:org/agents/:agent/engine"

// EngineRoute is one agent API route the platform forwards, with the
// permission it needs in the organization and, for mutations, the audit
// action. Nothing else is forwarded (404).
type EngineRoute struct {
	Method     string
	Path       string // gin syntax, below EnginePrefix
	Permission rbac.Permission
	Action     string
	// Kind is what the route acts on, for the audit target: "clone",
	// "snapshot" or "branch" (the ID comes from the path or, on create,
	// the answer).
	Kind string
	// ForwardAuthor sends the caller's e-mail as the author of a commit.
	ForwardAuthor bool
}

// EngineRoutes is the allowlist of the engine proxy: the DLE routes
// (docs/DLE-API.md) that the agent serves, each with its permission.
var EngineRoutes = []EngineRoute{
	{Method: http.MethodGet, Path: "/healthz", Permission: rbac.AgentRead},
	{Method: http.MethodGet, Path: "/status", Permission: rbac.CloneRead},
	{Method: http.MethodGet, Path: "/instance/retrieval", Permission: rbac.AgentRead},
	{Method: http.MethodPost, Path: "/full-refresh", Permission: rbac.AgentRefresh, Action: "agent.full_refresh"},
	{Method: http.MethodGet, Path: "/snapshots", Permission: rbac.SnapshotRead},
	{Method: http.MethodPost, Path: "/snapshot", Permission: rbac.SnapshotCreate, Action: "snapshot.create", Kind: "snapshot"},
	{Method: http.MethodGet, Path: "/snapshot/*id", Permission: rbac.SnapshotRead},
	{Method: http.MethodPatch, Path: "/snapshot/*id", Permission: rbac.SnapshotUpdate, Action: "snapshot.update", Kind: "snapshot"},
	{Method: http.MethodDelete, Path: "/snapshot/*id", Permission: rbac.SnapshotDelete, Action: "snapshot.delete", Kind: "snapshot"},
	{Method: http.MethodGet, Path: "/clones", Permission: rbac.CloneRead},
	{Method: http.MethodPost, Path: "/clone", Permission: rbac.CloneCreate, Action: "clone.create", Kind: "clone"},
	{Method: http.MethodGet, Path: "/clone/:id", Permission: rbac.CloneRead},
	{Method: http.MethodPatch, Path: "/clone/:id", Permission: rbac.CloneUpdate, Action: "clone.update", Kind: "clone"},
	{Method: http.MethodDelete, Path: "/clone/:id", Permission: rbac.CloneDelete, Action: "clone.destroy", Kind: "clone"},
	{Method: http.MethodPost, Path: "/clone/:id/reset", Permission: rbac.CloneUpdate, Action: "clone.reset", Kind: "clone"},
	// Replicas of a clone are clones too (ports, processes).
	{Method: http.MethodPost, Path: "/clone/:id/replicas", Permission: rbac.CloneCreate, Action: "clone.replicas", Kind: "clone"},
	// Diffs (Thinlab's additions) read the data's tables: the permission
	// of the snapshot or clone compared.
	{Method: http.MethodGet, Path: "/snapshots/diff", Permission: rbac.SnapshotRead},
	{Method: http.MethodGet, Path: "/clone/:id/diff", Permission: rbac.CloneRead},
	// Branches (DLE 4): a branch is a name on a chain of snapshots, so
	// making, moving and deleting one are snapshot permissions; a commit
	// (POST /branch/snapshot, POST /snapshot/clone) makes a snapshot and
	// names the caller as its author.
	{Method: http.MethodGet, Path: "/branches", Permission: rbac.SnapshotRead},
	{Method: http.MethodPost, Path: "/branch", Permission: rbac.SnapshotCreate, Action: "branch.create", Kind: "branch"},
	{Method: http.MethodPost, Path: "/branch/snapshot", Permission: rbac.SnapshotCreate, Action: "branch.commit", Kind: "snapshot", ForwardAuthor: true},
	{Method: http.MethodGet, Path: "/branch/snapshot/*id", Permission: rbac.SnapshotRead},
	{Method: http.MethodGet, Path: "/branch/:name/log", Permission: rbac.SnapshotRead},
	{Method: http.MethodPatch, Path: "/branch/:name", Permission: rbac.SnapshotUpdate, Action: "branch.update", Kind: "branch"},
	{Method: http.MethodDelete, Path: "/branch/:name", Permission: rbac.SnapshotDelete, Action: "branch.delete", Kind: "branch"},
	{Method: http.MethodPost, Path: "/snapshot/clone", Permission: rbac.SnapshotCreate, Action: "snapshot.create", Kind: "snapshot", ForwardAuthor: true},
}

// AuthorHeader names the committer to the agent (agent/api reads it as DLE
// reads its Platform's): the platform is the agent's trusted proxy, the
// only caller holding its token, and sets it from the authenticated
// caller, never from the request.
const AuthorHeader = "X-Forwarded-User-Email"

func (a *API) engineRoutes() []access.Route {
	out := make([]access.Route, 0, len(EngineRoutes))
	for _, er := range EngineRoutes {
		out = append(out, access.Route{
			Method: er.Method, Path: EnginePrefix + er.Path, Permission: er.Permission, Action: er.Action,
			Handler: a.engineProxy(er),
		})
	}
	return out
}

// Bounds of the proxy: DLE request bodies are small JSON; answers (a
// clone list of a busy agent) may be larger but are read whole, to audit
// the answer.
const (
	maxEngineRequest = 1 << 20
	maxEngineAnswer  = 32 << 20
	// engineTimeout bounds one forwarded call; POST /snapshot on a large
	// pool may take minutes.
	engineTimeout = 10 * time.Minute
)

// forwardedRequestHeaders are the only caller headers the agent sees: no
// credentials (Authorization, cookies, CSRF token, Verification-Token:
// the agent's side of the tunnel adds its own token), no hop-by-hop or
// forwarding headers.
var forwardedRequestHeaders = []string{"Content-Type", "Accept", "User-Agent"}

// forwardedAnswerHeaders are the agent's answer headers passed back.
var forwardedAnswerHeaders = []string{"Content-Type", "Content-Disposition", "Retry-After"}

// EngineError is the body of the proxy's own refusals: the DLE error
// shape (code, message: what sdk/agentapi and DLE clients read) and the
// platform's (error: {code, message}) in one object.
type EngineError struct {
	Code    string                `json:"code"`
	Message string                `json:"message"`
	Error   platformapi.ErrorBody `json:"error"`
}

func engineError(c *gin.Context, status int, code, message string) {
	audit.SetError(c, message)
	c.Abort()
	c.PureJSON(status, EngineError{Code: code, Message: message, Error: platformapi.ErrorBody{Code: code, Message: message}})
}

// CodeAgentUnavailable is the code of a call to an agent whose tunnel is
// not up.
const CodeAgentUnavailable = "agent_unavailable"

// AgentUnavailableMessage says why an agent cannot be reached.
func AgentUnavailableMessage(ag *store.Agent, replicaID string) string {
	switch {
	case ag.RevokedAt != nil:
		return fmt.Sprintf("agent %s (%s) is revoked", ag.Name, ag.ID)
	case ag.Connected() && ag.ConnectedReplica != replicaID:
		return fmt.Sprintf("agent %s (%s) is connected to another platform replica (%s); this replica cannot reach it yet, try again", ag.Name, ag.ID, ag.ConnectedReplica)
	}
	return fmt.Sprintf("agent %s (%s) is not connected to the platform: start it (thinlab agent run) or check its network, then try again", ag.Name, ag.ID)
}

// enginePath is the agent API path of the request: what follows /engine,
// as sent (IDs in DLE paths are not percent-decoded).
func enginePath(r *http.Request) string {
	p := r.URL.EscapedPath()
	// /api/v1/orgs/ORG/agents/AGENT/engine/...: ORG and AGENT hold no "/".
	parts := strings.SplitN(p, "/", 8)
	if len(parts) < 8 {
		return "/"
	}
	return strings.TrimPrefix(parts[7], "engine")
}

// engineProxy forwards one allowlisted call to the agent of the route
// (loaded by the access chain inside the organization) and passes its
// answer back unchanged: status, body, content type.
func (a *API) engineProxy(er EngineRoute) gin.HandlerFunc {
	return func(c *gin.Context) {
		ag := access.Agent(c)
		if ag.RevokedAt != nil || a.Agents == nil {
			engineError(c, http.StatusServiceUnavailable, CodeAgentUnavailable, AgentUnavailableMessage(ag, a.ReplicaID))
			return
		}
		// Whether the agent is reachable (here, or through the replica
		// holding its tunnel) is the round trip's answer: ErrNotConnected
		// below.
		var body []byte
		if c.Request.Body != nil {
			var err error
			body, err = io.ReadAll(io.LimitReader(c.Request.Body, maxEngineRequest+1))
			if err != nil {
				engineError(c, http.StatusBadRequest, "BAD_REQUEST", "could not read the request body")
				return
			}
			if len(body) > maxEngineRequest {
				engineError(c, http.StatusRequestEntityTooLarge, "BAD_REQUEST", "request body is larger than 1 MiB")
				return
			}
		}
		path := enginePath(c.Request)
		create := er.Method == http.MethodPost && er.Path == "/clone"
		if create && a.Billing.Enabled() {
			// The plan's limits, counted and checked with this
			// organization's other creations on this replica waiting.
			unlock := a.cloneCreates.lock(ag.OrgID)
			defer unlock()
			if refused := a.checkCloneLimit(c, ag.OrgID); refused {
				return
			}
		}
		author := ""
		if er.ForwardAuthor {
			author = access.Caller(c).Email
		}
		resp, err := CallAgent(c, a.Agents, ag.ID, er.Method, path, c.Request.URL.RawQuery, c.Request.Header, body, author)
		if errors.Is(err, hub.ErrNotConnected) {
			// The tunnel ended between the check above and the call.
			engineError(c, http.StatusServiceUnavailable, CodeAgentUnavailable, AgentUnavailableMessage(ag, a.ReplicaID))
			return
		}
		if err != nil {
			a.Logger.Warn("engine proxy: the agent did not answer", "agent", ag.ID, "route", er.Path, "err", err)
			engineError(c, http.StatusBadGateway, CodeAgentUnavailable, fmt.Sprintf("agent %s (%s) did not answer: %v", ag.Name, ag.ID, errors.Unwrap(err)))
			return
		}
		if er.Action != "" {
			auditEngineAnswer(c, ag.ID, er, path, resp)
		}
		if create && resp.Status < 300 {
			a.recordCloneOwner(c, ag, resp)
		}
		for _, h := range forwardedAnswerHeaders {
			if v := resp.Header.Get(h); v != "" {
				c.Header(h, v)
			}
		}
		c.Status(resp.Status)
		_, _ = c.Writer.Write(resp.Body) // the client may have gone; the call is done and audited
	}
}

// AgentAnswer is an agent API answer, read whole.
type AgentAnswer struct {
	Status int
	Header http.Header
	Body   []byte
}

// CallAgent sends one call to the agent's API through its tunnel, with
// only the allowlisted headers of from, and reads the answer (bounded).
// author, when set, names the committer (AuthorHeader); a caller's own
// AuthorHeader is never forwarded.
func CallAgent(c *gin.Context, t AgentTransports, agentID, method, path, rawQuery string, from http.Header, body []byte, author string) (*AgentAnswer, error) {
	ctx := c.Request.Context()
	target := "http://agent.tunnel" + path
	if rawQuery != "" {
		target += "?" + rawQuery
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		return nil, fmt.Errorf("build the request: %w", err)
	}
	for _, h := range forwardedRequestHeaders {
		if v := from.Get(h); v != "" {
			req.Header.Set(h, v)
		}
	}
	if author != "" {
		req.Header.Set(AuthorHeader, author)
	}
	client := &http.Client{
		Transport: t.RoundTripper(agentID),
		Timeout:   engineTimeout,
		// The agent's redirects (trailing slashes) go back to the caller
		// as they are; the proxy follows none.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("call the agent: %w", err)
	}
	defer func() { _ = resp.Body.Close() }() // read in full below
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxEngineAnswer+1))
	if err != nil {
		return nil, fmt.Errorf("read the agent's answer: %w", err)
	}
	if len(raw) > maxEngineAnswer {
		return nil, fmt.Errorf("read the agent's answer: %w", errors.New("the answer is larger than 32 MiB"))
	}
	return &AgentAnswer{Status: resp.StatusCode, Header: resp.Header, Body: raw}, nil
}

// auditEngineAnswer records the agent's answer to a mutation: the
// target is AGENT/KIND/ID with the agent's status; a refusal's message
// becomes the event's error.
func auditEngineAnswer(c *gin.Context, agentID string, er EngineRoute, path string, resp *AgentAnswer) {
	id := ""
	switch {
	case er.Kind == "clone" && strings.HasPrefix(path, "/clone/"):
		id, _, _ = strings.Cut(strings.TrimPrefix(path, "/clone/"), "/")
	case er.Kind == "snapshot" && strings.HasPrefix(path, "/snapshot/"):
		id = strings.TrimPrefix(path, "/snapshot/")
	case resp.Status < 300:
		var created struct {
			ID string `json:"id"`
		}
		_ = json.Unmarshal(resp.Body, &created) // an answer without an ID audits without one
		id = created.ID
	}
	target := agentID
	if er.Kind != "" {
		target += "/" + er.Kind
		if id != "" {
			target += "/" + id
		}
	}
	SetEngineAudit(c, target, resp)
}

// SetEngineAudit records target and the agent's answer (status; the
// message of a refusal as the error) in the request's audit event.
func SetEngineAudit(c *gin.Context, target string, resp *AgentAnswer) {
	audit.SetTarget(c, fmt.Sprintf("%s (agent answered %d)", target, resp.Status))
	if resp.Status >= 400 {
		var e struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		}
		_ = json.Unmarshal(resp.Body, &e) // a body that is not DLE's error shape audits the status alone
		msg := fmt.Sprintf("agent answered %d", resp.Status)
		if e.Code != "" || e.Message != "" {
			msg += " " + e.Code + ": " + e.Message
		}
		audit.SetError(c, msg)
	}
}

// checkCloneLimit answers 402 naming the limit and the plan when the
// organization's plan allows no more clones (or storage), and reports
// whether it did.
func (a *API) checkCloneLimit(c *gin.Context, orgID string) bool {
	err := CheckCloneLimit(c, a.Store, a.Agents, a.Billing, orgID)
	var le *billing.LimitError
	switch {
	case errors.As(err, &le):
		engineError(c, http.StatusPaymentRequired, CodePlanLimit, le.Error())
		return true
	case err != nil:
		a.Logger.Error("engine proxy: checking the plan's limits", "org", orgID, "err", err)
		engineError(c, http.StatusInternalServerError, "INTERNAL", "checking the plan's limits failed on the server; try again")
		return true
	}
	return false
}

// CodePlanLimit is the code of a creation refused by a plan limit.
const CodePlanLimit = "PLAN_LIMIT"

// CheckCloneLimit is nil when orgID's plan allows one more clone, a
// *billing.LimitError naming the limit when it does not (shared by the
// engine proxy and the Clones page).
func CheckCloneLimit(c *gin.Context, st *store.Store, t AgentTransports, b *billing.Billing, orgID string) error {
	if !b.Enabled() {
		return nil
	}
	clones, used, err := OrgCloneUse(c, st, t, orgID)
	if err != nil {
		return err
	}
	return b.CheckClone(c.Request.Context(), orgID, clones, used)
}

// OrgCloneUse counts orgID's clones, asking each of its agents that
// answers (GET /clones through its tunnel) and taking the last facts of
// those that do not, and sums the space its agents' pools use.
func OrgCloneUse(c *gin.Context, st *store.Store, t AgentTransports, orgID string) (int64, uint64, error) {
	agents, err := st.ListAgents(c.Request.Context(), orgID)
	if err != nil {
		return 0, 0, err
	}
	var clones int64
	var used uint64
	for _, ag := range agents {
		if ag.RevokedAt != nil {
			continue
		}
		facts := ag.AgentFacts()
		known := int64(0)
		for _, p := range facts.Pools {
			used += p.UsedBytes
			known += int64(p.Clones)
		}
		if t != nil {
			if resp, err := CallAgent(c, t, ag.ID, http.MethodGet, "/clones", "", http.Header{}, nil, ""); err == nil && resp.Status == http.StatusOK {
				var list []json.RawMessage
				if json.Unmarshal(resp.Body, &list) == nil {
					known = int64(len(list))
				}
			}
		}
		clones += known
	}
	return clones, used, nil
}

// recordCloneOwner remembers who created the clone of a successful
// create (usage per user).
func (a *API) recordCloneOwner(c *gin.Context, ag *store.Agent, resp *AgentAnswer) {
	var created struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(resp.Body, &created) == nil {
		RecordCloneOwner(c, a.Store, a.Logger, ag, created.ID)
	}
}

// RecordCloneOwner records the caller as the creator of cloneID on ag
// (usage per user); a failure is logged, the clone stands.
func RecordCloneOwner(c *gin.Context, st *store.Store, log *slog.Logger, ag *store.Agent, cloneID string) {
	p := principal.From(c)
	if cloneID == "" || p == nil {
		return
	}
	if err := st.RecordCloneOwner(c.Request.Context(), ag.OrgID, ag.ID, cloneID, p.UserID); err != nil {
		log.Warn("record the clone's owner", "agent", ag.ID, "clone", cloneID, "err", err)
	}
}
