package api_test

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/platform/platformtest"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/sdk/platformapi"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

// The clone connection route's answers that need no agent: a replica
// without a hub (503, after authorization), a viewer (403 naming
// clone:connect), another site's Origin (403), a request that is not a
// websocket (400), a clone ID that is not one (400 naming the field). Through a real tunnel and agent:
// TestCLIThroughPlatform in cli.
func TestCloneConnectWithoutAgent(t *testing.T) {
	env := platformtest.New(t)
	ctx := t.Context()
	owner := env.User("owner@example.com")
	org := env.Org("conn", owner)
	_, secret, err := env.Store.CreateEnrollmentToken(ctx, org.ID, owner.ID, "hosts", time.Now().Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	ag, _, _, err := env.Store.Enroll(ctx, secret, tunnel.AgentFacts{Name: "db1"})
	if err != nil {
		t.Fatal(err)
	}
	ownerTok := env.Token(org, owner)
	viewerTok := env.Token(org, env.Member(org, "viewer@example.com", rbac.Viewer))

	_, err = env.Client(ownerTok).DialClone(ctx, "conn", ag.ID, "c1")
	if !platformapi.IsStatus(err, http.StatusServiceUnavailable) || !strings.Contains(err.Error(), "not connected") {
		t.Errorf("agent not connected: %v, want 503 saying so", err)
	}
	_, err = env.Client(viewerTok).DialClone(ctx, "conn", ag.ID, "c1")
	if !platformapi.IsStatus(err, http.StatusForbidden) || !strings.Contains(err.Error(), "clone:connect") {
		t.Errorf("viewer: %v, want 403 naming clone:connect", err)
	}
	_, err = env.Client(ownerTok).DialClone(ctx, "conn", ag.ID, "-bad")
	var apiErr *platformapi.APIError
	if !platformapi.IsStatus(err, http.StatusBadRequest) || !errors.As(err, &apiErr) || apiErr.Field != "clone" {
		t.Errorf("bad clone ID: %v, want 400 naming the field clone", err)
	}
	r := env.Do(http.MethodGet, "/api/v1/orgs/conn/agents/"+ag.ID+"/clones/c1/connect", ownerTok, nil)
	if r.Status != http.StatusBadRequest || !strings.Contains(r.Error().Message, "websocket") {
		t.Errorf("plain GET: %d %s, want 400 saying it is a websocket", r.Status, r.Body)
	}
	// Another site's page cannot open one (a browser would send the
	// session cookie along).
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, env.URL+"/api/v1/orgs/conn/agents/"+ag.ID+"/clones/c1/connect", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+ownerTok)
	req.Header.Set("Origin", "https://evil.example")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("foreign Origin: %d, want 403", resp.StatusCode)
	}
	// Refusals are audited under clone.connect with the reason.
	var refused int
	for _, ev := range env.AuditEvents() {
		if ev.Action == "clone.connect" && ev.Result == "error" && ev.Target == ag.ID+"/c1" {
			refused++
		}
	}
	if refused != 3 { // no hub, plain GET, foreign Origin (the viewer is refused before the clone is named)
		t.Errorf("%d refused clone.connect events for %s/c1, want 3", refused, ag.ID)
	}
}
