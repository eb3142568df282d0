package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thinlab/thinlab/platform/api"
	"github.com/thinlab/thinlab/platform/platformtest"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/platform/server"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/platformapi"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

// recordingHub is an api.AgentDisconnector that remembers whom it was
// asked to disconnect, standing in for the tunnel hub.
type recordingHub struct {
	mu  sync.Mutex
	ids []string
}

func (h *recordingHub) Disconnect(agentID string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ids = append(h.ids, agentID)
}

func (h *recordingHub) disconnected() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.ids)
}

func enrollAgent(t *testing.T, env *platformtest.Env, secret string, facts tunnel.AgentFacts) (int, tunnel.EnrollResponse, platformapi.ErrorBody) {
	t.Helper()
	r := env.Do(http.MethodPost, tunnel.EnrollPath, "", tunnel.EnrollRequest{Token: secret, Facts: facts})
	var out tunnel.EnrollResponse
	if r.Status == http.StatusCreated {
		if err := json.Unmarshal(r.Body, &out); err != nil {
			t.Fatal(err)
		}
	}
	return r.Status, out, r.Error()
}

// An API token (as Terraform would) creates an enrollment token; an agent
// enrolls with it; the organization lists, renames and revokes the agent,
// and the revocation reaches the hub and stops the credential.
func TestEnrollmentWithAnAPIToken(t *testing.T) {
	hub := &recordingHub{}
	env := platformtest.New(t, platformtest.WithOptions(func(o *server.Options) { o.AgentDisconnector = hub }))
	ctx := t.Context()
	owner := env.User("owner@example.com")
	org := env.Org("fleet", owner)
	cl := env.Client(env.Token(org, owner))

	created, err := cl.CreateEnrollmentToken(ctx, org.Slug, platformapi.CreateEnrollmentTokenRequest{Name: "terraform", SingleUse: true})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(created.Secret, store.EnrollmentTokenPrefix) || created.MaxUses == nil || *created.MaxUses != 1 || !created.Usable {
		t.Fatalf("created %+v", created)
	}
	if want := "thinlab agent run --platform " + env.URL + " --enroll-token " + created.Secret; created.Command != want {
		t.Fatalf("command %q, want %q", created.Command, want)
	}
	if d := time.Until(created.ExpiresAt); d < 23*time.Hour || d > 25*time.Hour {
		t.Fatalf("default expiry in %s, want 24 h", d)
	}
	toks, err := cl.EnrollmentTokens(ctx, org.Slug)
	if err != nil || len(toks) != 1 || toks[0].ID != created.ID || strings.Contains(string(mustJSON(t, toks)), created.Secret) {
		t.Fatalf("listed %+v %v (the secret must never be listed)", toks, err)
	}

	facts := tunnel.AgentFacts{Name: "db-host-1", Version: "v0.9.0", PostgresVersions: []string{"16", "17"},
		Pools:     []tunnel.PoolFact{{Name: "main", Backend: "zfs", UsedBytes: 1 << 30, FreeBytes: 9 << 30, Snapshots: 3, Clones: 2}},
		Retrieval: tunnel.RetrievalFact{Mode: "logical", Status: "finished"}}
	status, enrolled, _ := enrollAgent(t, env, created.Secret, facts)
	if status != http.StatusCreated || enrolled.OrganizationID != org.ID || enrolled.Name != "db-host-1" || !strings.HasPrefix(enrolled.Credential, store.AgentCredentialPrefix) {
		t.Fatalf("enroll: %d %+v", status, enrolled)
	}
	// Single use: the second agent is refused with the generic answer.
	// (Its unknown facts field, as a newer agent would send, is no error.)
	if r := env.Do(http.MethodPost, tunnel.EnrollPath, "", `{"token":"`+created.Secret+`","facts":{"name":"x","futureField":1}}`); r.Status != http.StatusUnauthorized || r.Error().Message != api.EnrollRefusal {
		t.Fatalf("second use, by a newer agent: %d %s", r.Status, r.Body)
	}
	if status, _, body := enrollAgent(t, env, created.Secret, facts); status != http.StatusUnauthorized || body.Message != api.EnrollRefusal {
		t.Fatalf("second use of a single-use token: %d %+v", status, body)
	}
	id, err := env.Store.AuthenticateAgent(ctx, enrolled.Credential)
	if err != nil || id.AgentID != enrolled.AgentID {
		t.Fatalf("the credential does not authenticate: %+v %v", id, err)
	}

	agents, err := cl.Agents(ctx, org.Slug)
	if err != nil || len(agents) != 1 {
		t.Fatalf("agents %+v %v", agents, err)
	}
	a := agents[0]
	if a.ID != enrolled.AgentID || a.Version != "v0.9.0" || a.Connection.State != platformapi.AgentNeverSeen ||
		len(a.Facts.Pools) != 1 || a.Facts.Pools[0].Backend != "zfs" || a.Facts.Retrieval.Status != "finished" {
		t.Fatalf("agent %+v", a)
	}
	// The hub's records show through the API.
	if err := env.Store.MarkAgentConnected(ctx, a.ID, "replica-1", time.Now()); err != nil {
		t.Fatal(err)
	}
	if got, err := cl.Agent(ctx, org.Slug, a.ID); err != nil || got.Connection.State != platformapi.AgentConnected || got.Connection.ConnectedSince == nil {
		t.Fatalf("connected agent: %+v %v", got, err)
	}
	if got, err := cl.RenameAgent(ctx, org.Slug, a.ID, "  primary  "); err != nil || got.Name != "primary" {
		t.Fatalf("rename: %+v %v", got, err)
	}
	for _, bad := range []string{"", strings.Repeat("x", 64), "a\nb"} {
		var apiErr *platformapi.APIError
		if _, err := cl.RenameAgent(ctx, org.Slug, a.ID, bad); !errors.As(err, &apiErr) || apiErr.Status != http.StatusBadRequest || apiErr.Field != "name" {
			t.Errorf("rename to %q: %v, want 400 naming the field", bad, err)
		}
	}
	if err := cl.RevokeAgent(ctx, org.Slug, a.ID); err != nil {
		t.Fatal(err)
	}
	if got := hub.disconnected(); !slices.Equal(got, []string{a.ID}) {
		t.Fatalf("hub asked to disconnect %v, want [%s]", got, a.ID)
	}
	if _, err := env.Store.AuthenticateAgent(ctx, enrolled.Credential); !errors.Is(err, store.ErrAgentRevoked) {
		t.Fatalf("revoked agent's credential: %v", err)
	}
	if got, err := cl.Agent(ctx, org.Slug, a.ID); err != nil || got.Connection.State != platformapi.AgentRevoked || got.RevokedAt == nil {
		t.Fatalf("revoked agent: %+v %v", got, err)
	}
	if err := cl.RevokeEnrollmentToken(ctx, org.Slug, created.ID); err != nil {
		t.Fatal(err)
	}

	// Audited: the creation and the enrollment (into the organization,
	// with no actor), the refusal, the rename and the revocations.
	actions := map[string]int{}
	for _, ev := range env.AuditEvents() {
		if ev.OrgID != nil && *ev.OrgID == org.ID {
			actions[ev.Action+"/"+ev.Result]++
		}
	}
	for _, want := range []string{"enrollment_token.create/success", "agent.enroll/success", "agent.enroll/error", "agent.rename/success", "agent.revoke/success", "enrollment_token.revoke/success"} {
		if actions[want] == 0 {
			t.Errorf("audit log lacks %s: %v", want, actions)
		}
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Every kind of refused enrollment token gets the same answer, so that a
// guesser cannot tell an existing token from a made-up one; refusals from
// one address are rate limited.
func TestEnrollRefusalsAreAlikeAndRateLimited(t *testing.T) {
	env := platformtest.New(t, platformtest.WithConfig(func(c *server.Config) {
		c.RateLimits.EnrollFailures.PerMinute, c.RateLimits.EnrollFailures.Burst = 1, 6
	}))
	ctx := t.Context()
	owner := env.User("owner@example.com")
	org := env.Org("refuse", owner)
	_, expired, err := env.Store.CreateEnrollmentToken(ctx, org.ID, owner.ID, "", time.Now().Add(-time.Minute), nil)
	if err != nil {
		t.Fatal(err)
	}
	rtok, revoked, err := env.Store.CreateEnrollmentToken(ctx, org.ID, owner.ID, "", time.Now().Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Store.RevokeEnrollmentToken(ctx, org.ID, rtok.ID); err != nil {
		t.Fatal(err)
	}
	_, good, err := env.Store.CreateEnrollmentToken(ctx, org.ID, owner.ID, "", time.Now().Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	apiToken := env.Token(org, owner)
	for _, c := range []struct{ name, secret string }{
		{"expired", expired}, {"revoked", revoked}, {"forged", good[:len(good)-1] + "x"},
		{"an API token", apiToken}, {"garbage", "nope"},
	} {
		status, _, body := enrollAgent(t, env, c.secret, tunnel.AgentFacts{Name: c.name})
		if status != http.StatusUnauthorized || body.Message != api.EnrollRefusal {
			t.Errorf("%s token: %d %+v, want 401 %q", c.name, status, body, api.EnrollRefusal)
		}
	}
	// Malformed requests name the field.
	tooMany := tunnel.AgentFacts{Pools: make([]tunnel.PoolFact, 65)}
	if r := env.Do(http.MethodPost, tunnel.EnrollPath, "", tunnel.EnrollRequest{Token: good, Facts: tooMany}); r.Status != http.StatusBadRequest || r.Error().Field != "facts.pools" {
		t.Errorf("65 pools: %d %s", r.Status, r.Body)
	}
	if r := env.Do(http.MethodPost, tunnel.EnrollPath, "", `{"facts":{}}`); r.Status != http.StatusBadRequest || r.Error().Field != "token" {
		t.Errorf("no token: %d %s", r.Status, r.Body)
	}
	if r := env.Do(http.MethodPost, tunnel.EnrollPath, "", `{"token":5}`); r.Status != http.StatusBadRequest || r.Error().Field != "token" {
		t.Errorf("token of the wrong type: %d %s", r.Status, r.Body)
	}
	// Five refusals spent, one left in the bucket: the next refusal
	// empties it, and then even the good token waits (429 Retry-After).
	if status, _, _ := enrollAgent(t, env, "thle_x", tunnel.AgentFacts{}); status != http.StatusUnauthorized {
		t.Fatalf("sixth refusal: %d", status)
	}
	r := env.Do(http.MethodPost, tunnel.EnrollPath, "", tunnel.EnrollRequest{Token: good, Facts: tunnel.AgentFacts{Name: "late"}})
	if r.Status != http.StatusTooManyRequests || r.Header.Get("Retry-After") == "" {
		t.Fatalf("after the bucket is spent: %d %s, want 429 with Retry-After", r.Status, r.Body)
	}
	if n := len(mustAgents(ctx, t, env.Store, org.ID)); n != 0 {
		t.Fatalf("%d agents enrolled, want none", n)
	}
}

func mustAgents(ctx context.Context, t *testing.T, st *store.Store, orgID string) []store.Agent {
	t.Helper()
	agents, err := st.ListAgents(ctx, orgID)
	if err != nil {
		t.Fatal(err)
	}
	return agents
}

// Members read agents; only admins and owners manage them and their
// enrollment tokens.
func TestAgentRoutesByRole(t *testing.T) {
	env := platformtest.New(t)
	ctx := t.Context()
	owner := env.User("owner@example.com")
	org := env.Org("roles", owner)
	_, secret, err := env.Store.CreateEnrollmentToken(ctx, org.ID, owner.ID, "", time.Now().Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	ag, _, _, err := env.Store.Enroll(ctx, secret, tunnel.AgentFacts{Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	for _, role := range []rbac.Role{rbac.Member, rbac.Viewer} {
		cl := env.Client(env.Token(org, env.Member(org, string(role)+"@example.com", role)))
		if agents, err := cl.Agents(ctx, org.Slug); err != nil || len(agents) != 1 {
			t.Errorf("%s lists agents: %v %v", role, agents, err)
		}
		var apiErr *platformapi.APIError
		if _, err := cl.CreateEnrollmentToken(ctx, org.Slug, platformapi.CreateEnrollmentTokenRequest{}); !errors.As(err, &apiErr) || apiErr.Status != http.StatusForbidden {
			t.Errorf("%s creates an enrollment token: %v, want 403", role, err)
		}
		if err := cl.RevokeAgent(ctx, org.Slug, ag.ID); !errors.As(err, &apiErr) || apiErr.Status != http.StatusForbidden {
			t.Errorf("%s revokes an agent: %v, want 403", role, err)
		}
	}
}
