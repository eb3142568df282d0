package web_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/thinlab/thinlab/internal/browsertest"
	"github.com/thinlab/thinlab/internal/dextest"
	"github.com/thinlab/thinlab/platform/auth"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/platform/web/webtest"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

// TestE2EEnrollAgentInBrowser: sign in through the real Dex in headless
// Chromium, create an enrollment token on the Agents page, read it (and
// the enroll command) from the page, enroll an agent with it the way the
// agent does (POST tunnel.EnrollPath), see the agent listed with its
// connection and health apart and its pools, then revoke it in the
// browser and see its credential refused.
func TestE2EEnrollAgentInBrowser(t *testing.T) {
	var dex *dextest.Dex
	p := webtest.Start(t, func(base string) auth.Config {
		dex = dextest.Start(t, dextest.Options{RedirectURIs: []string{base + "/auth/callback/dex"}})
		return auth.Config{Providers: []auth.ProviderConfig{{
			Name: "dex", DisplayName: "Dex", Issuer: dex.Issuer,
			ClientID: dex.ClientID, ClientSecret: dex.ClientSecret,
		}}}
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("dex log:\n%s", dex.LogContent())
		}
	})
	user := dex.Users[0]
	ctx := browsertest.New(t)

	browsertest.Step(t, ctx, "sign in through Dex",
		chromedp.Navigate(p.URL+"/"),
		chromedp.WaitVisible(`a[href^="/auth/login/dex"]`),
		chromedp.Click(`a[href^="/auth/login/dex"]`),
		chromedp.WaitVisible("#login"),
		chromedp.SendKeys("#login", user.Email),
		chromedp.SendKeys("#password", user.Password),
		chromedp.Submit("#password"),
		chromedp.WaitVisible("#my-role"),
	)
	browsertest.Step(t, ctx, "open Agents",
		chromedp.Click(`nav a[href$="/agents"]`),
		chromedp.WaitVisible("#enrollment-name"),
	)
	if empty := browsertest.Get(t, ctx, "empty list", chromedp.Text("#agents tbody")); !strings.Contains(empty, "No agents enrolled yet") {
		t.Fatalf("agents table before enrollment: %q", empty)
	}
	browsertest.Step(t, ctx, "create a single-use enrollment token",
		chromedp.SendKeys("#enrollment-name", "e2e-hosts"),
		chromedp.Submit("#enrollment-name"),
		chromedp.WaitVisible("#enroll-command"),
	)
	secret := strings.TrimSpace(browsertest.Get(t, ctx, "read the token", chromedp.Text("#enrollment-secret")))
	command := strings.TrimSpace(browsertest.Get(t, ctx, "read the command", chromedp.Text("#enroll-command")))
	if !strings.HasPrefix(secret, store.EnrollmentTokenPrefix) {
		t.Fatalf("enrollment token on the page: %q", secret)
	}
	if want := "thinlab agent run --platform " + p.URL + " --enroll-token " + secret; command != want {
		t.Fatalf("command on the page %q, want %q", command, want)
	}

	// The agent enrolls with the token from the page.
	raw, err := json.Marshal(tunnel.EnrollRequest{Token: secret, Facts: tunnel.AgentFacts{
		Name: "e2e-db", Version: "v1.0.0", PostgresVersions: []string{"17"},
		Pools:     []tunnel.PoolFact{{Name: "pool1", Backend: "btrfs", Mode: "active", UsedBytes: 3 << 30, FreeBytes: 7 << 30, Snapshots: 2, Clones: 1}},
		Retrieval: tunnel.RetrievalFact{Mode: "logical", Status: "finished"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(p.URL+tunnel.EnrollPath, "application/json", bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	var enrolled tunnel.EnrollResponse
	err = json.NewDecoder(resp.Body).Decode(&enrolled)
	_ = resp.Body.Close() // read in full by the decoder
	if err != nil || resp.StatusCode != http.StatusCreated || enrolled.Credential == "" {
		t.Fatalf("enroll with the token from the page: HTTP %d %+v %v", resp.StatusCode, enrolled, err)
	}
	// What the hub records when the tunnel comes up, and a health report.
	st := p.Store
	if err := st.MarkAgentConnected(t.Context(), enrolled.AgentID, "replica-e2e", time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := st.InsertAgentEvents(t.Context(), enrolled.AgentID, []store.NewAgentEvent{{
		EventID: "h1", Kind: "agent.health", Severity: "warning", Time: time.Now(), Message: "pool1 is 70% full",
	}}); err != nil {
		t.Fatal(err)
	}

	row := `tr[data-agent="` + enrolled.AgentID + `"]`
	browsertest.Step(t, ctx, "see the agent listed", chromedp.Reload(), chromedp.WaitVisible(row))
	text := browsertest.Get(t, ctx, "agent row", chromedp.Text(row))
	for _, want := range []string{"e2e-db", "connected", "last heartbeat", "warning", "pool1 is 70% full", "v1.0.0", "pool1", "btrfs", "3.0 GiB used", "7.0 GiB free", "2 snapshots", "1 clone", "logical: finished"} {
		if !strings.Contains(text, want) {
			t.Errorf("agent row lacks %q: %q", want, text)
		}
	}
	tokens := browsertest.Get(t, ctx, "enrollment tokens", chromedp.Text("#enrollment-tokens"))
	if !strings.Contains(tokens, "e2e-hosts") || !strings.Contains(tokens, "1 of 1") || strings.Contains(tokens, secret) {
		t.Errorf("enrollment tokens table: %q (used once, secret never listed)", tokens)
	}

	browsertest.Step(t, ctx, "rename the agent",
		chromedp.SetValue(row+" input.agent-rename-name", "primary-db"),
		chromedp.Submit(row+" input.agent-rename-name"),
		chromedp.WaitVisible(".flash"),
	)
	if name := browsertest.Get(t, ctx, "renamed", chromedp.Text(row+" .agent-name")); name != "primary-db" {
		t.Fatalf("agent name after rename: %q", name)
	}
	browsertest.Step(t, ctx, "revoke the agent",
		chromedp.Submit(row+" button.agent-revoke"),
		chromedp.WaitVisible(row+`[data-state="revoked"]`),
	)
	if _, err := st.AuthenticateAgent(t.Context(), enrolled.Credential); err == nil {
		t.Fatal("the revoked agent's credential still authenticates")
	}
}
