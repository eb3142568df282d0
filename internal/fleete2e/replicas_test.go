package fleete2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/platform/platformtest"
	"github.com/thinlab/thinlab/platform/server"
	"github.com/thinlab/thinlab/sdk/agentapi"
)

// TestTwoReplicasRelayToTheHolder: two real platform replicas on one
// database, the relay configured as an operator would; the agent's tunnel
// lands on A. Through B a user reaches the agent's API (engine proxy) and
// a clone's postgres (clone connection route), and a revocation made on B
// closes the tunnel on A at once.
func TestTwoReplicasRelayToTheHolder(t *testing.T) {
	secret := strings.Repeat("r", 40)
	relay := func(c *server.Config) {
		c.Tunnel.RelayURL = "http://" + c.Listen
		c.Tunnel.RelaySecret = secret
		c.Tunnel.HeartbeatInterval = 200 * time.Millisecond
	}
	a := platformtest.New(t, platformtest.WithConfig(relay))
	b := platformtest.New(t, platformtest.WithConfig(func(c *server.Config) {
		relay(c)
		c.Database.URL = a.Server.Config().Database.URL // one platform database
	}))
	owner := a.User("owner@acme.example")
	org := a.Org("acme", owner)
	_, enroll, err := a.Store.CreateEnrollmentToken(t.Context(), org.ID, owner.ID, "hosts", time.Now().Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	startAgent(t, a.URL, enroll, "relay-db")
	var agentID string
	waitFor(t, "the agent's tunnel on A", func() bool {
		agents, err := a.Store.ListAgents(t.Context(), org.ID)
		if err != nil || len(agents) != 1 || !agents[0].Connected() {
			return false
		}
		agentID = agents[0].ID
		return true
	})
	if _, _, ok := b.Server.Hub().Connected(agentID); ok {
		t.Fatal("the agent's tunnel is on B too")
	}
	tok := a.Token(org, owner)

	// The engine proxy on B: a clone's whole life.
	c := engineClient(b, "acme", agentID, tok)
	if _, err := c.CreateClone(t.Context(), agentapi.CreateCloneRequest{ID: "via-b", DB: &agentapi.DatabaseRequest{Username: "dev", Password: clonePassword}}); err != nil {
		t.Fatalf("create through B: %v", err)
	}
	ready, err := c.WaitClone(t.Context(), "via-b")
	if err != nil || ready.Status.Code != "OK" {
		t.Fatalf("clone through B: %+v %v", ready, err)
	}

	// The clone connection route on B.
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=1 user=dev password=%s dbname=%s sslmode=disable", clonePassword, ready.DB.DBName))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DialFunc = func(ctx context.Context, _, _ string) (net.Conn, error) {
		return b.Client(tok).DialClone(ctx, "acme", agentID, "via-b")
	}
	conn, err := pgx.ConnectConfig(t.Context(), cfg)
	if err != nil {
		t.Fatalf("postgres through B: %v", err)
	}
	var v string
	err = conn.QueryRow(t.Context(), "SELECT v FROM t").Scan(&v)
	_ = conn.Close(context.Background()) // the test's session
	if err != nil || v != "through the platform" {
		t.Fatalf("query through B: %q %v", v, err)
	}
	if err := c.DestroyClone(t.Context(), "via-b"); err != nil {
		t.Fatalf("destroy through B: %v", err)
	}

	// Revoked on B: the tunnel A holds closes at once.
	if r := b.Do(http.MethodDelete, "/api/v1/orgs/acme/agents/"+agentID, tok, nil); r.Status != http.StatusNoContent {
		t.Fatalf("revoke on B: %d %s", r.Status, r.Body)
	}
	waitFor(t, "A to close the revoked agent's tunnel", func() bool {
		_, _, ok := a.Server.Hub().Connected(agentID)
		return !ok
	})
}
