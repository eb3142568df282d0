package api_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/platform/platformtest"
	"github.com/thinlab/thinlab/platform/server"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/platformapi"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

// TestInvitationAuditTargetMasked: the audit log (kept forever, exported)
// holds a masked form of invited addresses, never the full one, for
// accepted and refused invitation requests alike.
func TestInvitationAuditTargetMasked(t *testing.T) {
	env := platformtest.New(t)
	owner := env.User("owner@example.com")
	org := env.Org("inv", owner)
	c := env.Client(env.Token(org, owner))
	if _, err := c.Invite(t.Context(), "inv", platformapi.CreateInvitationRequest{Email: "grace.hopper@navy.example", Role: "viewer"}); err != nil {
		t.Fatal(err)
	}
	env.Do("POST", "/api/v1/orgs/inv/invitations", env.Token(org, owner), `{"email":"grace.hopper@navy.example","role":"god"}`)
	targets := env.QueryStrings("SELECT target FROM audit_events WHERE action = 'invitation.create' ORDER BY id")
	if len(targets) != 2 {
		t.Fatalf("invitation.create events: %v, want 2", targets)
	}
	for _, tg := range targets {
		if strings.Contains(tg, "grace.hopper") || !strings.Contains(tg, "g***@navy.example") {
			t.Errorf("audit target %q, want the masked g***@navy.example and not the address", tg)
		}
	}
}

// TestAuditLogTamperProofWithTwoRoles runs the platform against an
// external database the way docs/platform-config.md says: database.url is
// an ordinary runtime role, database.migrationURL the schema owner. As the
// runtime role, every way of rewriting or disabling the audit log fails.
func TestAuditLogTamperProofWithTwoRoles(t *testing.T) {
	superDSN := platformtest.Database(t) // only to reach the shared cluster
	ctx := t.Context()
	suffix := fmt.Sprintf("%d", time.Now().UnixNano())
	owner, app, db := "own_"+suffix, "app_"+suffix, "two_"+suffix
	su, err := pgx.Connect(ctx, superDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = su.Close(t.Context()) }()
	for _, q := range []string{
		"CREATE ROLE " + owner + " LOGIN", "CREATE ROLE " + app + " LOGIN",
		"CREATE DATABASE " + db + " OWNER " + owner,
	} {
		if _, err := su.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	// Background inside: t.Context() is already cancelled when cleanups run.
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), superDSN)
		if err != nil {
			return
		}
		defer func() { _ = c.Close(context.Background()) }()
		for _, q := range []string{"DROP DATABASE IF EXISTS " + db + " WITH (FORCE)", "DROP ROLE IF EXISTS " + app, "DROP ROLE IF EXISTS " + owner} {
			if _, err := c.Exec(context.Background(), q); err != nil {
				t.Errorf("cleanup %s: %v", q, err)
			}
		}
	})
	dsnAs := func(role string) string {
		return strings.NewReplacer("user=postgres", "user="+role, "dbname="+dbName(superDSN), "dbname="+db).Replace(superDSN)
	}
	cfg := server.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.Database.URL, cfg.Database.MigrationURL = dsnAs(app), dsnAs(owner)
	srv, err := server.New(ctx, cfg, server.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = srv.Close() }()
	u, err := srv.Store().UpsertOIDCUser(ctx, "iss", "sub", "a@example.com", "A", true)
	if err != nil {
		t.Fatalf("the runtime role cannot write users: %v", err)
	}
	org, err := srv.Store().CreateOrganization(ctx, "two", "Two", u.ID)
	if err != nil {
		t.Fatalf("the runtime role cannot write organizations: %v", err)
	}
	// The agent registry (migration 00004) works as the runtime role:
	// enrollment tokens, enrollment, connection state, events.
	_, enrSecret, err := srv.Store().CreateEnrollmentToken(ctx, org.ID, u.ID, "", time.Now().Add(time.Hour), nil)
	if err != nil {
		t.Fatalf("the runtime role cannot create enrollment tokens: %v", err)
	}
	agent, _, _, err := srv.Store().Enroll(ctx, enrSecret, tunnel.AgentFacts{Name: "two-db"})
	if err != nil {
		t.Fatalf("the runtime role cannot enroll agents: %v", err)
	}
	if err := srv.Store().MarkAgentConnected(ctx, agent.ID, "r1", time.Now()); err != nil {
		t.Fatalf("the runtime role cannot record connections: %v", err)
	}
	if _, err := srv.Store().InsertAgentEvents(ctx, agent.ID, []store.NewAgentEvent{{EventID: "e1", Kind: "agent.health", Time: time.Now()}}); err != nil {
		t.Fatalf("the runtime role cannot store agent events: %v", err)
	}
	conn, err := pgx.Connect(ctx, dsnAs(app))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(t.Context()) }()
	if _, err := conn.Exec(ctx, "INSERT INTO audit_events (action, result) VALUES ('probe', 'success')"); err != nil {
		t.Fatalf("the runtime role cannot append to the audit log: %v", err)
	}
	for _, q := range []string{
		"ALTER TABLE audit_events DISABLE TRIGGER ALL",
		"DROP TRIGGER audit_events_no_update_delete ON audit_events",
		"DROP TRIGGER audit_events_no_truncate ON audit_events",
		"UPDATE audit_events SET action = 'nothing.happened'",
		"DELETE FROM audit_events",
		"TRUNCATE audit_events",
		"DROP TABLE audit_events",
		"DROP FUNCTION audit_events_append_only() CASCADE",
	} {
		if _, err := conn.Exec(ctx, q); err == nil {
			t.Errorf("as the runtime role, %q succeeded; want refused", q)
		}
	}
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM audit_events WHERE action = 'probe'").Scan(&n); err != nil || n != 1 {
		t.Fatalf("probe events after the attacks: %d (%v), want 1", n, err)
	}
}

func dbName(dsn string) string {
	for kv := range strings.FieldsSeq(dsn) {
		if v, ok := strings.CutPrefix(kv, "dbname="); ok {
			return v
		}
	}
	return ""
}

// TestInvitationAcceptRateLimited guesses invitation secrets as one
// signed-in user: after the configured burst the next accept is 429 with
// Retry-After, before the secret is even looked up.
func TestInvitationAcceptRateLimited(t *testing.T) {
	const burst = 3
	env := platformtest.New(t, platformtest.WithAuthenticator(fakeSession), platformtest.WithConfig(func(c *server.Config) {
		c.RateLimits.InvitationAccept.Burst = burst
	}))
	guesser := env.User("guess@example.com")
	for i := range burst {
		r := env.DoWithHeader(http.MethodPost, fmt.Sprintf("/api/v1/invitations/thinv_guess%d/accept", i), testUserHeader, guesser.ID, nil)
		if r.Status != http.StatusNotFound {
			t.Fatalf("guess %d: %d %s, want 404 (within the burst)", i+1, r.Status, r.Body)
		}
	}
	r := env.DoWithHeader(http.MethodPost, "/api/v1/invitations/thinv_last/accept", testUserHeader, guesser.ID, nil)
	if r.Status != http.StatusTooManyRequests || r.Header.Get("Retry-After") == "" || r.Error().Code != platformapi.CodeRateLimited {
		t.Fatalf("guess %d: %d %s Retry-After=%q, want 429 with Retry-After", burst+1, r.Status, r.Body, r.Header.Get("Retry-After"))
	}
	// The refused attempt is in the audit log.
	if n := env.QueryStrings("SELECT error FROM audit_events WHERE action = 'invitation.accept' AND error LIKE 'too many%'"); len(n) != 1 {
		t.Fatalf("rate-limited accepts in the audit log: %v, want 1", n)
	}
}
