package fleete2e

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/platform/platformtest"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/platform/server"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/agentapi"
	"github.com/thinlab/thinlab/sdk/platformapi"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

// bearer adds a platform API token to every request, as the CLI does when
// it uses the engine proxy as an agent's base URL.
type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}

// engineClient is the DLE client (sdk/agentapi) pointed at the platform's
// engine proxy of one agent, authenticated with a platform API token.
func engineClient(env *platformtest.Env, org, agentID, token string) *agentapi.Client {
	return &agentapi.Client{
		BaseURL:      env.URL + "/api/v1/orgs/" + org + "/agents/" + agentID + "/engine",
		HTTPClient:   &http.Client{Transport: bearer{token: token, next: http.DefaultTransport}, Timeout: 5 * time.Minute},
		PollInterval: 100 * time.Millisecond,
	}
}

// enrolled starts a platform and a real agent enrolled into org "acme"
// and waits until the platform records its tunnel.
func enrolled(t testing.TB, opts ...platformtest.Option) (*platformtest.Env, *store.Organization, *store.User, *runningAgent, *store.Agent) {
	t.Helper()
	// Short heartbeats, so that they are written while the test runs.
	opts = append([]platformtest.Option{platformtest.WithConfig(func(c *server.Config) { c.Tunnel.HeartbeatInterval = 200 * time.Millisecond })}, opts...)
	env := platformtest.New(t, opts...)
	owner := env.User("owner@acme.example")
	org := env.Org("acme", owner)
	_, secret, err := env.Store.CreateEnrollmentToken(t.Context(), org.ID, owner.ID, "hosts", time.Now().Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	ra := startAgent(t, env.URL, secret, "e2e-db")
	var ag *store.Agent
	waitFor(t, "the agent to enroll and connect", func() bool {
		agents, err := env.Store.ListAgents(t.Context(), org.ID)
		if err != nil || len(agents) != 1 || !agents[0].Connected() {
			return false
		}
		ag = &agents[0]
		return true
	})
	return env, org, owner, ra, ag
}

// TestAgentEnrollsConnectsAndRevocationClosesTunnel: a real agent enrolls
// with a token of the organization, its tunnel is recorded as held by
// this replica with its facts; revoking it closes the tunnel at once and
// its credential is refused when it tries to come back.
func TestAgentEnrollsConnectsAndRevocationClosesTunnel(t *testing.T) {
	env, org, owner, ra, ag := enrolled(t)
	if ag.ConnectedReplica != env.Server.ReplicaID() || ag.ConnectedReplica == "" {
		t.Errorf("connected replica %q, want this replica %q", ag.ConnectedReplica, env.Server.ReplicaID())
	}
	f := ag.AgentFacts()
	if ag.Name != "e2e-db" || f.Version != "e2e" || len(f.Pools) != 1 || f.Pools[0].Name != ra.pool.Name() || f.Pools[0].Backend != "btrfs" {
		t.Errorf("agent %q facts %+v, want e2e-db, version e2e and its btrfs pool %s", ag.Name, f, ra.pool.Name())
	}
	if _, _, ok := env.Server.Hub().Connected(ag.ID); !ok {
		t.Fatal("the hub holds no session of the agent the database records as connected")
	}
	waitFor(t, "a heartbeat recorded after the connection", func() bool {
		a, err := env.Store.AgentByID(t.Context(), org.ID, ag.ID)
		return err == nil && a.LastHeartbeatAt != nil && a.ConnectedSince != nil && a.LastHeartbeatAt.After(*a.ConnectedSince)
	})
	tok := env.Token(org, owner)
	var got platformapi.Agent
	r := env.Do(http.MethodGet, "/api/v1/orgs/acme/agents/"+ag.ID, tok, nil)
	if err := json.Unmarshal(r.Body, &got); err != nil || r.Status != http.StatusOK || got.Connection.State != platformapi.AgentConnected {
		t.Fatalf("GET the agent: %d %s, want it connected", r.Status, r.Body)
	}
	// The engine proxy reaches it.
	if h, err := engineClient(env, "acme", ag.ID, tok).Healthz(t.Context()); err != nil || h.Version != "e2e" {
		t.Fatalf("healthz through the platform: %+v %v", h, err)
	}

	if r := env.Do(http.MethodDelete, "/api/v1/orgs/acme/agents/"+ag.ID, tok, nil); r.Status != http.StatusNoContent {
		t.Fatalf("revoke: %d %s", r.Status, r.Body)
	}
	// Disconnect waits for the session to end: gone at once.
	if _, _, ok := env.Server.Hub().Connected(ag.ID); ok {
		t.Fatal("the revoked agent's tunnel is still open")
	}
	waitFor(t, "the agent to be refused on reconnecting", func() bool {
		return strings.Contains(ra.logs.String(), "refused this agent's credential")
	})
	if _, _, ok := env.Server.Hub().Connected(ag.ID); ok {
		t.Fatal("the revoked agent came back")
	}
	after, err := env.Store.AgentByID(t.Context(), org.ID, ag.ID)
	if err != nil || after.Connected() || after.DisconnectedSince == nil || after.RevokedAt == nil {
		t.Fatalf("agent row after revocation: %+v %v, want revoked and disconnected", after, err)
	}
	r = env.Do(http.MethodGet, "/api/v1/orgs/acme/agents/"+ag.ID+"/engine/status", tok, nil)
	if r.Status != http.StatusServiceUnavailable || !strings.Contains(string(r.Body), "revoked") || !strings.Contains(string(r.Body), ag.ID) {
		t.Fatalf("engine call to the revoked agent: %d %s, want 503 naming it revoked", r.Status, r.Body)
	}
}

// TestEngineProxyThroughRealTunnel drives a clone's whole life through
// the platform with the DLE client (what the CLI uses): create from the
// latest snapshot, poll to OK, query it, protect (destroy refused by the
// agent, its answer passed through), unprotect, reset, destroy. Every
// mutation is audited with the agent's answer; routes off the allowlist
// are 404; each role gets exactly its permissions.
func TestEngineProxyThroughRealTunnel(t *testing.T) {
	env, org, owner, _, ag := enrolled(t)
	ctx := t.Context()
	tok := env.Token(org, owner)
	c := engineClient(env, "acme", ag.ID, tok)

	st, err := c.Status(ctx)
	if err != nil || st.Status.Code != "OK" || len(st.Pools) != 1 {
		t.Fatalf("status through the platform: %+v %v", st, err)
	}
	snaps, err := c.Snapshots(ctx)
	if err != nil || len(snaps) != 1 {
		t.Fatalf("snapshots: %+v %v, want the one filled snapshot", snaps, err)
	}
	if s, err := c.Snapshot(ctx, snaps[0].ID); err != nil || s.ID != snaps[0].ID {
		t.Fatalf("snapshot %s (an id with @ through the proxy): %+v %v", snaps[0].ID, s, err)
	}

	created, err := c.CreateClone(ctx, agentapi.CreateCloneRequest{ID: "via-platform", DB: &agentapi.DatabaseRequest{Username: "dev", Password: clonePassword}})
	if err != nil || created.ID != "via-platform" {
		t.Fatalf("create a clone through the platform: %+v %v", created, err)
	}
	ready, err := c.WaitClone(ctx, created.ID)
	if err != nil || ready.Status.Code != "OK" || ready.DB.ConnStr == "" {
		t.Fatalf("clone did not become OK through the platform: %+v %v", ready, err)
	}
	if v := queryClone(t, ready.DB.ConnStr, "SELECT v FROM t"); v != "through the platform" {
		t.Fatalf("clone answers %q", v)
	}
	// DLE's own refusals come back unchanged: a duplicate ID.
	_, err = c.CreateClone(ctx, agentapi.CreateCloneRequest{ID: "via-platform", DB: &agentapi.DatabaseRequest{Username: "dev", Password: clonePassword}})
	var apiErr *agentapi.APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode < 400 || apiErr.StatusCode >= 500 || apiErr.Code == "" {
		t.Fatalf("duplicate clone through the platform: %v, want the agent's 4xx with its DLE code", err)
	}
	if _, err := c.UpdateClone(ctx, created.ID, agentapi.PatchCloneRequest{Protected: true}); err != nil {
		t.Fatalf("protect: %v", err)
	}
	if err := c.DestroyClone(ctx, created.ID); !errors.As(err, &apiErr) || apiErr.StatusCode < 400 {
		t.Fatalf("destroying a protected clone: %v, want the agent's refusal", err)
	}
	if _, err := c.UpdateClone(ctx, created.ID, agentapi.PatchCloneRequest{Protected: false}); err != nil {
		t.Fatalf("unprotect: %v", err)
	}
	if err := c.ResetClone(ctx, created.ID, agentapi.ResetCloneRequest{Latest: true}); err != nil {
		t.Fatalf("reset: %v", err)
	}
	if _, err := c.WaitClone(ctx, created.ID); err != nil {
		t.Fatalf("clone after reset: %v", err)
	}
	if err := c.DestroyClone(ctx, created.ID); err != nil {
		t.Fatalf("destroy: %v", err)
	}
	if err := c.WaitCloneDestroyed(ctx, created.ID); err != nil {
		t.Fatalf("clone not destroyed: %v", err)
	}
	if _, err := c.Clone(ctx, created.ID); !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusNotFound || apiErr.Code != "NOT_FOUND" {
		t.Fatalf("GET a destroyed clone: %v, want the agent's 404 NOT_FOUND", err)
	}

	// The audit log has each mutation with the agent's answer.
	want := []struct{ action, target, result string }{
		{"clone.create", ag.ID + "/clone/via-platform (agent answered 201)", store.ResultSuccess},
		{"clone.create", ag.ID + "/clone (agent answered 4", store.ResultError},
		{"clone.update", ag.ID + "/clone/via-platform (agent answered 200)", store.ResultSuccess},
		{"clone.destroy", ag.ID + "/clone/via-platform (agent answered 4", store.ResultError},
		{"clone.update", ag.ID + "/clone/via-platform (agent answered 200)", store.ResultSuccess},
		{"clone.reset", ag.ID + "/clone/via-platform (agent answered 200)", store.ResultSuccess},
		{"clone.destroy", ag.ID + "/clone/via-platform (agent answered 200)", store.ResultSuccess},
	}
	var got []store.AuditEvent
	for _, ev := range env.AuditEvents() {
		if strings.HasPrefix(ev.Action, "clone.") {
			got = append(got, ev)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("clone audit events %+v, want %d", got, len(want))
	}
	for i, w := range want {
		ev := got[i]
		if ev.Action != w.action || !strings.HasPrefix(ev.Target, w.target) || ev.Result != w.result || ev.OrgID == nil || *ev.OrgID != org.ID || ev.Actor != "owner@acme.example" {
			t.Errorf("audit event %d: %+v, want %s %q... %s by the owner", i, ev, w.action, w.target, w.result)
		}
		if w.result == store.ResultError && !strings.HasPrefix(ev.Error, "agent answered 4") {
			t.Errorf("audit event %d error %q, want the agent's answer", i, ev.Error)
		}
	}

	// The agent's events reach the platform, each once.
	waitFor(t, "the clone's events on the platform", func() bool {
		evs, err := env.Store.ListAgentEvents(ctx, org.ID, ag.ID, 100)
		if err != nil {
			return false
		}
		kinds := map[string]int{}
		for _, e := range evs {
			if e.CloneID == "via-platform" {
				kinds[e.Kind]++
			}
		}
		return kinds["clone.ready"] >= 1 && kinds["clone.destroyed"] == 1
	})

	// The agent by name, as the CLI's --agent NAME says it; another
	// organization's owner gets 404 for the same name.
	if h, err := engineClient(env, "acme", "e2e-db", tok).Healthz(ctx); err != nil || h.Version != "e2e" {
		t.Fatalf("healthz by the agent's name: %+v %v", h, err)
	}
	other := env.User("mallory@other.example")
	env.Org("other", other)
	otherTok := env.Token(env.Org("other-2", other), other)
	for _, ref := range []string{"e2e-db", ag.ID} {
		if r := env.Do(http.MethodGet, "/api/v1/orgs/other-2/agents/"+ref+"/engine/clones", otherTok, nil); r.Status != http.StatusNotFound {
			t.Errorf("another organization's owner, agent %s: %d %s, want 404", ref, r.Status, r.Body)
		}
		if r := env.Do(http.MethodGet, "/api/v1/orgs/acme/agents/"+ref+"/engine/clones", otherTok, nil); r.Status != http.StatusNotFound {
			t.Errorf("another organization's token in acme, agent %s: %d %s, want 404", ref, r.Status, r.Body)
		}
	}

	// Off the allowlist: 404, even for the owner.
	for _, p := range []string{"/metrics", "/openapi.yaml", "/admin/config", "/observation/start", "/clone/x/y"} {
		for _, m := range []string{http.MethodGet, http.MethodPost} {
			if r := env.Do(m, "/api/v1/orgs/acme/agents/"+ag.ID+"/engine"+p, tok, "{}"); r.Status != http.StatusNotFound {
				t.Errorf("%s engine%s: %d %s, want 404 (not on the allowlist)", m, p, r.Status, r.Body)
			}
		}
	}

	// Roles: a viewer reads, a member works with clones but cannot
	// delete snapshots; each refusal is the platform's 403 before the
	// agent is asked.
	for _, tc := range []struct {
		role         rbac.Role
		method, path string
		body         string
		want         int
	}{
		{rbac.Viewer, http.MethodGet, "/clones", "", http.StatusOK},
		{rbac.Viewer, http.MethodGet, "/snapshots", "", http.StatusOK},
		{rbac.Viewer, http.MethodPost, "/clone", `{"db":{"username":"v","password":"` + clonePassword + `"}}`, http.StatusForbidden},
		{rbac.Viewer, http.MethodPost, "/snapshot", `{}`, http.StatusForbidden},
		{rbac.Viewer, http.MethodDelete, "/clone/none", "", http.StatusForbidden},
		{rbac.Member, http.MethodDelete, "/snapshot/" + snaps[0].ID, "", http.StatusForbidden},
		{rbac.Member, http.MethodPatch, "/snapshot/" + snaps[0].ID, `{"protected":true}`, http.StatusForbidden},
		{rbac.Member, http.MethodPost, "/full-refresh", "", http.StatusForbidden},
		{rbac.Member, http.MethodGet, "/clone/none", "", http.StatusNotFound},
	} {
		u := env.Member(org, string(tc.role)+"-"+strings.ReplaceAll(strings.Trim(tc.path, "/"), "/", "-")+tc.method+"@acme.example", tc.role)
		var body any
		if tc.body != "" {
			body = tc.body
		}
		r := env.Do(tc.method, "/api/v1/orgs/acme/agents/"+ag.ID+"/engine"+tc.path, env.Token(org, u), body)
		if r.Status != tc.want {
			t.Errorf("%s: %s engine%s = %d %s, want %d", tc.role, tc.method, tc.path, r.Status, r.Body, tc.want)
		}
	}
	if snaps2, err := c.Snapshots(ctx); err != nil || len(snaps2) != 1 {
		t.Fatalf("snapshots after the refused calls: %+v %v", snaps2, err)
	}
}

func queryClone(t *testing.T, connStr, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cc, err := pgx.ParseConfig(connStr + " sslmode=disable connect_timeout=10")
	if err != nil {
		t.Fatal(err)
	}
	cc.Password = clonePassword
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		t.Fatalf("connect to the clone (%s): %v", connStr, err)
	}
	defer func() { _ = conn.Close(ctx) }()
	var s string
	if err := conn.QueryRow(ctx, sql).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestReplicaStartMarksItsAgentsDisconnected: a replica starting with the
// ID of a previous run marks the agents that run left as connected as
// disconnected; another replica's agents stay as they are.
func TestReplicaStartMarksItsAgentsDisconnected(t *testing.T) {
	env := platformtest.New(t, platformtest.WithConfig(func(c *server.Config) { c.Tunnel.ReplicaID = "replica-b" }))
	ctx := t.Context()
	owner := env.User("owner@acme.example")
	org := env.Org("acme", owner)
	_, secret, err := env.Store.CreateEnrollmentToken(ctx, org.ID, owner.ID, "hosts", time.Now().Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i, replica := range []string{"replica-a", "replica-b"} {
		ag, _, _, err := env.Store.Enroll(ctx, secret, tunnel.AgentFacts{Name: "db" + strconv.Itoa(i)})
		if err != nil {
			t.Fatal(err)
		}
		if err := env.Store.MarkAgentConnected(ctx, ag.ID, replica, time.Now()); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, ag.ID)
	}
	if env.Server.ReplicaID() != "replica-b" {
		t.Fatalf("replica id %q, want the configured replica-b", env.Server.ReplicaID())
	}
	// A second start of replica-a on the same database.
	cfg := env.Server.Config()
	cfg.Tunnel.ReplicaID = "replica-a"
	cfg.Listen = "127.0.0.1:0"
	srv, err := server.New(ctx, cfg, server.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	a, errA := env.Store.AgentByID(ctx, org.ID, ids[0])
	b, errB := env.Store.AgentByID(ctx, org.ID, ids[1])
	if errA != nil || errB != nil || a.Connected() || a.DisconnectedSince == nil || !b.Connected() {
		t.Fatalf("after replica-a restarted: its agent %+v (%v), want disconnected; replica-b's %+v (%v), want still connected", a, errA, b, errB)
	}
}
