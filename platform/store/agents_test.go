package store_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

// enrollOrg is an organization with its owner, for enrollment tests.
func enrollOrg(t *testing.T, st *store.Store, slug string) (*store.Organization, *store.User) {
	t.Helper()
	u, err := st.UpsertOIDCUser(t.Context(), "iss", slug+"-owner", slug+"@example.com", "", true)
	if err != nil {
		t.Fatal(err)
	}
	org, err := st.CreateOrganization(t.Context(), slug, "", u.ID)
	if err != nil {
		t.Fatal(err)
	}
	return org, u
}

func facts(name string) tunnel.AgentFacts {
	return tunnel.AgentFacts{
		Name: name, Version: "v1.2.3", DLEAPIVersion: "3.5",
		Pools: []tunnel.PoolFact{{Name: "p1", Backend: "btrfs", Mode: "active", TotalBytes: 100, FreeBytes: 60, UsedBytes: 40, Snapshots: 2, Clones: 1}},
	}
}

func one() *int { n := 1; return &n }

func TestEnrollAndAuthenticateAgent(t *testing.T) {
	st := open(t)
	ctx := t.Context()
	org, owner := enrollOrg(t, st, "enroll")
	tok, secret, err := st.CreateEnrollmentToken(ctx, org.ID, owner.ID, "ci", time.Now().Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	agent, credential, used, err := st.Enroll(ctx, secret, facts("db1"))
	if err != nil {
		t.Fatal(err)
	}
	if agent.OrgID != org.ID || agent.Name != "db1" || agent.Version != "v1.2.3" || used.ID != tok.ID {
		t.Fatalf("enrolled %+v with token %+v", agent, used)
	}
	if got := agent.AgentFacts(); len(got.Pools) != 1 || got.Pools[0].Backend != "btrfs" {
		t.Fatalf("facts %+v", got)
	}
	if len(credential) < 40 || credential == secret {
		t.Fatalf("credential %q", credential)
	}
	// The credential is stored hashed only.
	var n int64
	if err := st.SQL().QueryRowContext(ctx, "SELECT count(*) FROM agents WHERE id = $1 AND credential_hash = sha256(convert_to($2, 'UTF8'))", agent.ID, credential).Scan(&n); err != nil || n != 1 {
		t.Fatalf("the agent row does not hold the credential's SHA-256: %d %v", n, err)
	}
	id, err := st.AuthenticateAgent(ctx, credential)
	if err != nil || id.AgentID != agent.ID || id.OrgID != org.ID {
		t.Fatalf("AuthenticateAgent = %+v, %v", id, err)
	}
	// A multi-use token enrolls a second agent of the same name: it gets
	// the next free name.
	second, _, _, err := st.Enroll(ctx, secret, facts("db1"))
	if err != nil || second.Name != "db1-2" {
		t.Fatalf("second enrollment: %+v %v, want the name db1-2", second, err)
	}
	if _, _, _, err := st.Enroll(ctx, secret, facts("  ")); err != nil {
		t.Fatalf("enrollment without a name: %v", err)
	}
	got, err := st.EnrollmentTokenByID(ctx, org.ID, tok.ID)
	if err != nil || got.Uses != 3 {
		t.Fatalf("token after three enrollments: %+v %v", got, err)
	}

	// Forged credentials and revoked agents are refused.
	for _, forged := range []string{"", "thla_nope", credential + "x", secret} {
		if _, err := st.AuthenticateAgent(ctx, forged); !errors.Is(err, store.ErrAgentCredentialInvalid) {
			t.Errorf("AuthenticateAgent(%q) = %v, want ErrAgentCredentialInvalid", forged, err)
		}
	}
	if err := st.RevokeAgent(ctx, org.ID, agent.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := st.AuthenticateAgent(ctx, credential); !errors.Is(err, store.ErrAgentRevoked) {
		t.Fatalf("revoked agent's credential: %v, want ErrAgentRevoked", err)
	}
	// Another organization cannot see, rename or revoke the agent.
	other, _ := enrollOrg(t, st, "other")
	if _, err := st.AgentByID(ctx, other.ID, second.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("AgentByID from another organization: %v", err)
	}
	if err := st.RenameAgent(ctx, other.ID, second.ID, "mine"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RenameAgent from another organization: %v", err)
	}
	if err := st.RevokeAgent(ctx, other.ID, second.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RevokeAgent from another organization: %v", err)
	}
	if err := st.RenameAgent(ctx, org.ID, second.ID, "db1"); !errors.Is(err, store.ErrConflict) {
		t.Errorf("rename to a taken name: %v, want ErrConflict", err)
	}
	if err := st.RenameAgent(ctx, org.ID, second.ID, "primary"); err != nil {
		t.Errorf("rename: %v", err)
	}
}

func TestEnrollRefusesBadTokens(t *testing.T) {
	st := open(t)
	ctx := t.Context()
	org, owner := enrollOrg(t, st, "refuse")
	_, expired, err := st.CreateEnrollmentToken(ctx, org.ID, owner.ID, "old", time.Now().Add(-time.Second), nil)
	if err != nil {
		t.Fatal(err)
	}
	rtok, revoked, err := st.CreateEnrollmentToken(ctx, org.ID, owner.ID, "gone", time.Now().Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.RevokeEnrollmentToken(ctx, org.ID, rtok.ID); err != nil {
		t.Fatal(err)
	}
	_, single, err := st.CreateEnrollmentToken(ctx, org.ID, owner.ID, "once", time.Now().Add(time.Hour), one())
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := st.Enroll(ctx, single, facts("first")); err != nil {
		t.Fatalf("first use of a single-use token: %v", err)
	}
	for _, c := range []struct {
		name, secret string
		want         error
	}{
		{"expired", expired, store.ErrEnrollmentExpired},
		{"revoked", revoked, store.ErrEnrollmentRevoked},
		{"used up", single, store.ErrEnrollmentUsedUp},
		{"forged", store.EnrollmentTokenPrefix + "forgedforgedforgedforgedforgedforgedforged1", store.ErrEnrollmentInvalid},
		{"an API token's shape", store.TokenPrefix + "abc", store.ErrEnrollmentInvalid},
		{"empty", "", store.ErrEnrollmentInvalid},
	} {
		agent, credential, _, err := st.Enroll(ctx, c.secret, facts(c.name))
		if !errors.Is(err, c.want) || agent != nil || credential != "" {
			t.Errorf("%s token: %+v %q %v, want %v", c.name, agent, credential, err, c.want)
		}
	}
	agents, err := st.ListAgents(ctx, org.ID)
	if err != nil || len(agents) != 1 || agents[0].Name != "first" {
		t.Fatalf("agents after refusals: %+v %v, want only the first", agents, err)
	}
}

// Many agents enrolling at once with one single-use token: exactly one
// gets a credential, the others are told the token is used up.
func TestConcurrentSingleUseEnrollExactlyOneWins(t *testing.T) {
	st := open(t)
	ctx := t.Context()
	org, owner := enrollOrg(t, st, "race")
	for round := range 5 {
		_, secret, err := st.CreateEnrollmentToken(ctx, org.ID, owner.ID, fmt.Sprint("r", round), time.Now().Add(time.Hour), one())
		if err != nil {
			t.Fatal(err)
		}
		const n = 8
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() { _, _, _, errs[i] = st.Enroll(ctx, secret, facts("racer")) })
		}
		wg.Wait()
		won := 0
		for _, err := range errs {
			switch {
			case err == nil:
				won++
			case !errors.Is(err, store.ErrEnrollmentUsedUp):
				t.Errorf("round %d: a loser got %v, want ErrEnrollmentUsedUp", round, err)
			}
		}
		if won != 1 {
			t.Fatalf("round %d: %d enrollments succeeded with a single-use token, want 1", round, won)
		}
	}
	agents, err := st.ListAgents(ctx, org.ID)
	if err != nil || len(agents) != 5 {
		t.Fatalf("agents: %d %v, want 5 (one per token)", len(agents), err)
	}
}

func TestAgentEventsStoredOnce(t *testing.T) {
	st := open(t)
	ctx := t.Context()
	org, owner := enrollOrg(t, st, "events")
	_, secret, err := st.CreateEnrollmentToken(ctx, org.ID, owner.ID, "", time.Now().Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	a1, _, _, err := st.Enroll(ctx, secret, facts("a1"))
	if err != nil {
		t.Fatal(err)
	}
	a2, _, _, err := st.Enroll(ctx, secret, facts("a2"))
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	batch := []store.NewAgentEvent{
		{EventID: "e1", Kind: "clone.created", Severity: "info", Time: at, Clone: "c1", Pool: "p1", Data: json.RawMessage(`{"port":6000}`)},
		{EventID: "e2", Kind: "clone.deleted", Severity: "info", Time: at.Add(time.Second), Clone: "c1"},
	}
	if n, err := st.InsertAgentEvents(ctx, a1.ID, batch); err != nil || n != 2 {
		t.Fatalf("first delivery: %d %v, want 2 new", n, err)
	}
	// Redelivered after a reconnect, with one new event: only that one is new.
	again := append(slices.Clone(batch), store.NewAgentEvent{EventID: "e3", Kind: "usage", Time: at.Add(2 * time.Second)})
	if n, err := st.InsertAgentEvents(ctx, a1.ID, again); err != nil || n != 1 {
		t.Fatalf("redelivery: %d %v, want 1 new", n, err)
	}
	// Event IDs are per agent: another agent's e1 is its own.
	if n, err := st.InsertAgentEvents(ctx, a2.ID, batch[:1]); err != nil || n != 1 {
		t.Fatalf("another agent's e1: %d %v, want 1 new", n, err)
	}
	evs, err := st.ListAgentEvents(ctx, org.ID, a1.ID, 10)
	if err != nil || len(evs) != 3 || evs[0].EventID != "e3" || evs[2].Data == nil || *evs[2].Data != `{"port": 6000}` {
		t.Fatalf("a1's events: %+v %v", evs, err)
	}
	if _, err := st.InsertAgentEvents(ctx, a1.ID, []store.NewAgentEvent{{Kind: "x", Time: at}}); err == nil {
		t.Fatal("an event without an ID was stored")
	}
}

func TestAgentConnectionState(t *testing.T) {
	st := open(t)
	ctx := t.Context()
	org, owner := enrollOrg(t, st, "conn")
	_, secret, err := st.CreateEnrollmentToken(ctx, org.ID, owner.ID, "", time.Now().Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	a, _, _, err := st.Enroll(ctx, secret, facts("a"))
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := st.MarkAgentConnected(ctx, a.ID, "replica-1", t0); err != nil {
		t.Fatal(err)
	}
	if ok, err := st.AgentHeartbeat(ctx, a.ID, "replica-1", t0.Add(5*time.Second)); !ok || err != nil {
		t.Fatalf("heartbeat: %v %v", ok, err)
	}
	// The agent moves to replica-2; replica-1's late news changes nothing.
	if err := st.MarkAgentConnected(ctx, a.ID, "replica-2", t0.Add(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	if ok, err := st.AgentHeartbeat(ctx, a.ID, "replica-1", t0.Add(11*time.Second)); ok || err != nil {
		t.Fatalf("stale heartbeat applied: %v %v", ok, err)
	}
	if ok, err := st.MarkAgentDisconnected(ctx, a.ID, "replica-1", t0.Add(12*time.Second)); ok || err != nil {
		t.Fatalf("stale disconnect applied: %v %v", ok, err)
	}
	got, err := st.AgentByID(ctx, org.ID, a.ID)
	if err != nil || !got.Connected() || got.ConnectedReplica != "replica-2" || !got.LastHeartbeatAt.Equal(t0.Add(10*time.Second)) {
		t.Fatalf("after the move: %+v %v", got, err)
	}
	if n, err := st.MarkReplicaAgentsDisconnected(ctx, "replica-2", t0.Add(20*time.Second)); n != 1 || err != nil {
		t.Fatalf("replica-2 restart: %d %v", n, err)
	}
	got, err = st.AgentByID(ctx, org.ID, a.ID)
	if err != nil || got.Connected() || !got.DisconnectedSince.Equal(t0.Add(20*time.Second)) {
		t.Fatalf("after disconnect: %+v %v", got, err)
	}
	f := facts("a")
	f.Version = "v2"
	if err := st.UpdateAgentFacts(ctx, a.ID, f); err != nil {
		t.Fatal(err)
	}
	if got, _ := st.AgentByID(ctx, org.ID, a.ID); got.Version != "v2" || got.AgentFacts().Version != "v2" {
		t.Fatalf("facts not updated: %+v", got)
	}
}

// An agent is found by ID or by name, only inside its organization.
func TestAgentByRef(t *testing.T) {
	st := open(t)
	ctx := t.Context()
	enroll := func(slug, name string) (*store.Organization, *store.Agent) {
		org, owner := enrollOrg(t, st, slug)
		_, secret, err := st.CreateEnrollmentToken(ctx, org.ID, owner.ID, "", time.Now().Add(time.Hour), nil)
		if err != nil {
			t.Fatal(err)
		}
		ag, _, _, err := st.Enroll(ctx, secret, facts(name))
		if err != nil {
			t.Fatal(err)
		}
		return org, ag
	}
	a, agA := enroll("ref-a", "db")
	_, agB := enroll("ref-b", "other-db")
	for _, ref := range []string{agA.ID, "db"} {
		if got, err := st.AgentByRef(ctx, a.ID, ref); err != nil || got.ID != agA.ID {
			t.Errorf("AgentByRef(A, %s) = %+v %v, want A's agent", ref, got, err)
		}
	}
	for _, ref := range []string{agB.ID, "other-db", "nope"} {
		if got, err := st.AgentByRef(ctx, a.ID, ref); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("AgentByRef(A, %s) = %+v %v, want not found", ref, got, err)
		}
	}
}
