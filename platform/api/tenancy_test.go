package api_test

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/thinlab/thinlab/platform/api"
	"github.com/thinlab/thinlab/platform/auth"
	"github.com/thinlab/thinlab/platform/hub"
	"github.com/thinlab/thinlab/platform/notify"
	"github.com/thinlab/thinlab/platform/platformtest"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/platform/web/webtest"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

const annEmail = "ann@a.example"

// tenants is two organizations with something of everything in each, on a
// platform with the web UI and the real Dex, and A's owner signed in
// through Dex in a browser (a real session cookie and CSRF token).
type tenants struct {
	p       *webtest.Platform
	env     *platformtest.Env // User, Org, Member, Token, Do on the same server (no DSN: Exec is unused)
	a, b    *store.Organization
	ownerA  *store.User
	ownerB  *store.User
	memberB *store.User
	tokenA  string // ownerA's API token in A
	tokenB  string
	// tokenIDB, invitationB: B's resources, named in paths under A and B.
	tokenIDB          string
	invitationB       string
	invitationSecretB string
	invitationBTo     string
	// agentB and enrollmentB: B's agent (enrolled with B's multi-use
	// enrollment token) and that token.
	agentB, agentNameB, enrollmentB string
	// B's notification channel, an inbox item of B's owner and a dead
	// letter of B.
	channelB, notificationB, deadLetterB string
	// session is ann's signed-in browser; csrf its session's token.
	session   *webtest.Browser
	csrf      string
	signInAnn func(*webtest.Browser) (webtest.Page, string) // through Dex; the landing page and its CSRF token
	seq       atomic.Int64
}

func newTenants(t *testing.T) *tenants {
	t.Helper()
	ctx := t.Context()
	p, dex := webtest.StartDex(t, []string{annEmail}, nil)
	tt := &tenants{p: p, env: &platformtest.Env{T: t, Server: p.Server, Store: p.Store, URL: p.URL}}
	tt.signInAnn = func(b *webtest.Browser) (webtest.Page, string) {
		pg, _ := b.SignIn(dex, p.URL+"/auth/login/dex", annEmail)
		if pg.Status != http.StatusOK || !strings.HasPrefix(pg.URL.Path, "/o/") {
			t.Fatalf("sign-in of %s through Dex: HTTP %d at %s, want 200 on the personal organization", annEmail, pg.Status, pg.URL)
		}
		return pg, webtest.CSRF(t, pg.Body)
	}
	// A is ann's personal organization, made by her first sign-in.
	tt.session = webtest.NewBrowser(t)
	var home webtest.Page
	home, tt.csrf = tt.signInAnn(tt.session)
	var err error
	if tt.a, err = p.Store.OrganizationByRef(ctx, strings.TrimPrefix(home.URL.Path, "/o/")); err != nil {
		t.Fatalf("ann's personal organization %s: %v", home.URL.Path, err)
	}
	members, err := p.Store.ListMembers(ctx, tt.a.ID)
	if err != nil || len(members) != 1 || members[0].Email != annEmail || members[0].Role != rbac.Owner {
		t.Fatalf("members of ann's personal organization: %+v %v, want ann as the only owner", members, err)
	}
	if tt.ownerA, err = p.Store.UserByID(ctx, members[0].UserID); err != nil {
		t.Fatal(err)
	}
	tt.tokenA = tt.env.Token(tt.a, tt.ownerA)

	tt.ownerB = tt.env.User("bob@b.example")
	tt.b = tt.env.Org("org-b", tt.ownerB)
	tt.memberB = tt.env.Member(tt.b, "bea@b.example", rbac.Member)
	tok, secret, err := p.Store.CreateAPIToken(ctx, tt.b.ID, tt.memberB.ID, "b-ci", nil)
	if err != nil {
		t.Fatal(err)
	}
	tt.tokenB, tt.tokenIDB = secret, tok.ID
	inv, invSecret, err := p.Store.CreateInvitation(ctx, tt.b.ID, "new@b.example", rbac.Admin, tt.ownerB.ID)
	if err != nil {
		t.Fatal(err)
	}
	tt.invitationB, tt.invitationSecretB, tt.invitationBTo = inv.ID, invSecret, inv.Email
	enr, enrSecret, err := p.Store.CreateEnrollmentToken(ctx, tt.b.ID, tt.ownerB.ID, "b-hosts", time.Now().Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	agentB, _, _, err := p.Store.Enroll(ctx, enrSecret, tunnel.AgentFacts{Name: "b-secret-db", Version: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	tt.agentB, tt.agentNameB, tt.enrollmentB = agentB.ID, agentB.Name, enr.ID
	tt.channelB, tt.notificationB, tt.deadLetterB = tt.notifications(t, tt.b, tt.ownerB, "b")
	return tt
}

// notifications makes, in org, a webhook channel whose address the
// platform refuses (a dial to 127.0.0.1 without an allowlist), and an
// event: owner's inbox gets it and the channel's message becomes a dead
// letter at its first attempt. It returns the three IDs.
func (tt *tenants) notifications(t *testing.T, org *store.Organization, owner *store.User, tag string) (channel, notification, deadLetter string) {
	t.Helper()
	ctx := t.Context()
	n := tt.seq.Add(1)
	ch, err := tt.p.Store.CreateNotificationChannel(ctx, org.ID, store.ChannelWebhook, fmt.Sprintf("%s-hook-%d", tag, n), "http://127.0.0.1:1/hook", "secret", owner.ID)
	if err != nil {
		t.Fatal(err)
	}
	// Slack channels the walk adds (bodyFor) point at a name outside the
	// test's network: keep every event away from them.
	off := false
	if err := tt.p.Store.SetNotificationPreferences(ctx, org.ID, "", []store.PreferenceChange{{Event: "*", Channel: store.ChannelSlack, Enabled: &off}}); err != nil {
		t.Fatal(err)
	}
	target := fmt.Sprintf("%s-pool-%d", tag, n)
	notifier := tt.p.Server.Notifier()
	rec, err := notifier.Record(ctx, tt.p.Store, notify.Event{OrgID: org.ID, Name: notify.RefreshSkipped, Target: target, SourceKey: "walk:" + target})
	if err != nil {
		t.Fatal(err)
	}
	notifier.Committed()
	items, err := tt.p.Store.ListInbox(ctx, org.ID, owner.ID, false, 1000)
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range items {
		if it.Event.ID == rec.EventID {
			notification = strconv.FormatInt(it.Item.ID, 10)
		}
	}
	if notification == "" {
		t.Fatalf("event %d is not in %s's inbox", rec.EventID, owner.Email)
	}
	deadline := time.Now().Add(30 * time.Second)
	for deadLetter == "" {
		dls, err := tt.p.Store.ListDeadLetters(ctx, org.ID, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range dls {
			if d.Message.EventID == rec.EventID && d.Message.ChannelID != nil && *d.Message.ChannelID == ch.ID {
				deadLetter = strconv.FormatInt(d.Message.ID, 10)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the message to the refused webhook of %s did not become a dead letter", org.Slug)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return ch.ID, notification, deadLetter
}

// fillB replaces path parameters with org and B's resources.
func (tt *tenants) fillB(path, org string) string {
	return strings.NewReplacer(
		":org", org,
		":user", tt.memberB.ID,
		":invitation", tt.invitationB,
		":token", tt.tokenIDB,
		":agent", tt.agentB,
		":enrollment", tt.enrollmentB,
		":clone", "b-clone",
		":channel", tt.channelB,
		":notification", tt.notificationB,
		":message", tt.deadLetterB,
	).Replace(path)
}

// fillA replaces path parameters with A and fresh resources of A (a
// member, a token, an invitation), made for this one call so that
// removing or revoking them answers as it would the first time.
func (tt *tenants) fillA(t *testing.T, path string) string {
	t.Helper()
	ctx := t.Context()
	n := tt.seq.Add(1)
	r := []string{":org", tt.a.Slug, ":clone", "a-clone"}
	if strings.Contains(path, ":user") {
		m := tt.env.Member(tt.a, fmt.Sprintf("m%d@a.example", n), rbac.Member)
		r = append(r, ":user", m.ID)
	}
	if strings.Contains(path, ":invitation") {
		inv, _, err := tt.p.Store.CreateInvitation(ctx, tt.a.ID, fmt.Sprintf("i%d@a.example", n), rbac.Viewer, tt.ownerA.ID)
		if err != nil {
			t.Fatal(err)
		}
		r = append(r, ":invitation", inv.ID)
	}
	if strings.Contains(path, ":token") {
		tok, _, err := tt.p.Store.CreateAPIToken(ctx, tt.a.ID, tt.ownerA.ID, fmt.Sprintf("walk-%d", n), nil)
		if err != nil {
			t.Fatal(err)
		}
		r = append(r, ":token", tok.ID)
	}
	if strings.Contains(path, ":agent") || strings.Contains(path, ":enrollment") {
		enr, secret, err := tt.p.Store.CreateEnrollmentToken(ctx, tt.a.ID, tt.ownerA.ID, fmt.Sprintf("walk-%d", n), time.Now().Add(time.Hour), nil)
		if err != nil {
			t.Fatal(err)
		}
		ag, _, _, err := tt.p.Store.Enroll(ctx, secret, tunnel.AgentFacts{Name: fmt.Sprintf("walk-%d", n)})
		if err != nil {
			t.Fatal(err)
		}
		r = append(r, ":agent", ag.ID, ":enrollment", enr.ID)
	}
	if strings.Contains(path, ":channel") || strings.Contains(path, ":notification") || strings.Contains(path, ":message") {
		ch, item, dead := tt.notifications(t, tt.a, tt.ownerA, "a")
		r = append(r, ":channel", ch, ":notification", item, ":message", dead)
	}
	return strings.NewReplacer(r...).Replace(path)
}

// bodyFor is a valid request for the route, so that an answer cannot come
// from validation: JSON for the API, form values for the web UI.
func (tt *tenants) bodyFor(method, path string) any {
	n := tt.seq.Add(1)
	if !strings.HasPrefix(path, "/api/") {
		switch {
		case strings.HasSuffix(path, "/role"):
			return url.Values{"role": {"viewer"}}
		case strings.HasSuffix(path, "/invitations") && method == http.MethodPost:
			return url.Values{"email": {fmt.Sprintf("x%d@a.example", n)}, "role": {"viewer"}}
		case strings.HasSuffix(path, "/tokens") && method == http.MethodPost:
			return url.Values{"name": {fmt.Sprintf("leak-%d", n)}}
		case strings.HasSuffix(path, "/rename"):
			return url.Values{"name": {fmt.Sprintf("renamed-%d", n)}}
		case strings.HasSuffix(path, "/enrollment-tokens") && method == http.MethodPost:
			return url.Values{"name": {fmt.Sprintf("leak-%d", n)}, "uses": {"multi"}}
		case strings.HasSuffix(path, "/clones") && method == http.MethodPost:
			// B's agent named in a form field, not the path: still B's.
			return url.Values{"agent": {tt.agentB}, "username": {"u"}, "password": {"Vx9-kq2!Lm7#pz4Rw8"}}
		case strings.HasSuffix(path, "/protect"):
			return url.Values{"protected": {"true"}}
		case strings.HasSuffix(path, "/snapshots/delete"):
			return url.Values{"id": {"pool@snapshot_20260101000000"}}
		case strings.HasSuffix(path, "/notifications/channels") && method == http.MethodPost:
			return url.Values{"kind": {"slack"}, "name": {fmt.Sprintf("leak-%d", n)}, "url": {"https://hooks.example.com/in"}}
		case strings.HasSuffix(path, "/notifications/preferences"):
			return url.Values{"pref.*.email": {"off"}}
		case strings.HasSuffix(path, "/notifications/org-preferences"):
			return url.Values{"pref.*.slack": {"off"}, "pref.snapshot.created.inbox": {"on"}}
		}
		return url.Values{}
	}
	switch {
	case method == http.MethodPost && strings.HasSuffix(path, "/members"):
		return map[string]string{"user_id": tt.memberB.ID, "role": "viewer"}
	case method == http.MethodPatch && strings.Contains(path, "/members/"):
		return map[string]string{"role": "viewer"}
	case method == http.MethodPost && strings.HasSuffix(path, "/invitations"):
		return map[string]string{"email": fmt.Sprintf("x%d@a.example", n), "role": "viewer"}
	case method == http.MethodPost && strings.HasSuffix(path, "/tokens"):
		return map[string]string{"name": fmt.Sprintf("leak-%d", n)}
	case method == http.MethodPatch && strings.Contains(path, "/agents/"):
		return map[string]string{"name": fmt.Sprintf("renamed-%d", n)}
	case method == http.MethodPost && strings.HasSuffix(path, "/enrollment-tokens"):
		return map[string]string{"name": fmt.Sprintf("leak-%d", n)}
	case method == http.MethodPost && strings.HasSuffix(path, "/billing/checkout"):
		return map[string]string{"plan": "team"}
	case method == http.MethodPost && strings.HasSuffix(path, "/notifications/channels"):
		return map[string]string{"kind": "slack", "name": fmt.Sprintf("leak-%d", n), "url": "https://hooks.example.com/in"}
	case method == http.MethodPut && strings.HasSuffix(path, "/notifications/preferences"):
		return map[string]any{"preferences": []map[string]any{{"event": "*", "channel": "email", "enabled": false}}}
	case method == http.MethodPut && strings.HasSuffix(path, "/notifications/org-preferences"):
		return map[string]any{"preferences": []map[string]any{{"event": "*", "channel": "slack", "enabled": false}}}
	}
	return nil
}

// caller is one way of authenticating in the walk: A's API token, or
// ann's browser session (cookie jar) with its CSRF token.
type caller struct {
	name    string
	token   string
	browser *webtest.Browser
	csrf    string
}

func (c caller) session() bool { return c.browser != nil }

// answer is one raw HTTP answer.
type answer struct {
	Status int
	Header http.Header
	Body   string
}

// do sends one request without following redirects. A session sends its
// cookie from the jar and, when csrf is set, its CSRF token the way its
// client would: the X-CSRF-Token header for the API, the csrf_token form
// field for the web UI.
func (tt *tenants) do(t *testing.T, as caller, method, path string, body any, csrf bool) answer {
	t.Helper()
	var rd io.Reader
	contentType := ""
	web := !strings.HasPrefix(path, "/api/")
	switch b := body.(type) {
	case nil:
	case url.Values:
		if as.session() && csrf && web {
			b = maps.Clone(b) // Set replaces the slice: the caller's values stay as they were
			b.Set(auth.CSRFField, as.csrf)
		}
		rd, contentType = strings.NewReader(b.Encode()), "application/x-www-form-urlencoded"
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd, contentType = strings.NewReader(string(raw)), "application/json"
	}
	if rd == nil && web && method == http.MethodPost {
		form := url.Values{}
		if as.session() && csrf {
			form.Set(auth.CSRFField, as.csrf)
		}
		rd, contentType = strings.NewReader(form.Encode()), "application/x-www-form-urlencoded"
	}
	req, err := http.NewRequestWithContext(t.Context(), method, tt.p.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	if as.session() {
		client.Jar = as.browser.Jar
		if csrf && !web {
			req.Header.Set(auth.CSRFHeader, as.csrf)
		}
	} else {
		req.Header.Set("Authorization", "Bearer "+as.token)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }() // read in full below; nothing to report
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return answer{Status: resp.StatusCode, Header: resp.Header, Body: string(raw)}
}

// status is what a route answers A's owner in A, per caller.
type status struct{ session, token int }

// ownStatus is the exact answer of every organization route to A's owner
// in A, with a valid request and A's own resources: the walk fails on a
// route missing here. Token creation refuses API tokens (403); the
// retired add-by-user-id route is 410 for everyone.
var ownStatus = map[string]status{
	"GET /api/v1/orgs/:org/members":                    {http.StatusOK, http.StatusOK},
	"POST /api/v1/orgs/:org/members":                   {http.StatusGone, http.StatusGone},
	"PATCH /api/v1/orgs/:org/members/:user":            {http.StatusOK, http.StatusOK},
	"DELETE /api/v1/orgs/:org/members/:user":           {http.StatusNoContent, http.StatusNoContent},
	"GET /api/v1/orgs/:org/invitations":                {http.StatusOK, http.StatusOK},
	"POST /api/v1/orgs/:org/invitations":               {http.StatusCreated, http.StatusCreated},
	"DELETE /api/v1/orgs/:org/invitations/:invitation": {http.StatusNoContent, http.StatusNoContent},
	"GET /api/v1/orgs/:org/tokens":                     {http.StatusOK, http.StatusOK},
	"POST /api/v1/orgs/:org/tokens":                    {http.StatusCreated, http.StatusForbidden},
	"DELETE /api/v1/orgs/:org/tokens/:token":           {http.StatusNoContent, http.StatusNoContent},
	"GET /api/v1/orgs/:org/audit":                      {http.StatusOK, http.StatusOK},
	"GET /o/:org":                                      {http.StatusOK, http.StatusOK},
	"GET /o/:org/members":                              {http.StatusOK, http.StatusOK},
	"POST /o/:org/members/:user/role":                  {http.StatusSeeOther, http.StatusSeeOther},
	"POST /o/:org/members/:user/remove":                {http.StatusSeeOther, http.StatusSeeOther},
	"GET /o/:org/invitations":                          {http.StatusOK, http.StatusOK},
	"POST /o/:org/invitations":                         {http.StatusOK, http.StatusOK},
	"POST /o/:org/invitations/:invitation/revoke":      {http.StatusSeeOther, http.StatusSeeOther},
	"GET /o/:org/tokens":                               {http.StatusOK, http.StatusOK},
	"POST /o/:org/tokens":                              {http.StatusOK, http.StatusForbidden},
	"POST /o/:org/tokens/:token/revoke":                {http.StatusSeeOther, http.StatusSeeOther},
	"GET /o/:org/audit":                                {http.StatusOK, http.StatusOK},
	// Clone connections: a plain GET, not a websocket, is refused after
	// authorization and before any agent is asked (the websocket itself,
	// through a real tunnel: TestCLIThroughPlatform in cli).
	"GET /api/v1/orgs/:org/agents/:agent/clones/:clone/connect": {http.StatusBadRequest, http.StatusBadRequest},
	// Agents and enrollment tokens; API tokens may create enrollment
	// tokens (Terraform provisions agents).
	"GET /api/v1/orgs/:org/enrollment-tokens":                {http.StatusOK, http.StatusOK},
	"POST /api/v1/orgs/:org/enrollment-tokens":               {http.StatusCreated, http.StatusCreated},
	"DELETE /api/v1/orgs/:org/enrollment-tokens/:enrollment": {http.StatusNoContent, http.StatusNoContent},
	"GET /api/v1/orgs/:org/agents":                           {http.StatusOK, http.StatusOK},
	"GET /api/v1/orgs/:org/agents/:agent":                    {http.StatusOK, http.StatusOK},
	"PATCH /api/v1/orgs/:org/agents/:agent":                  {http.StatusOK, http.StatusOK},
	"DELETE /api/v1/orgs/:org/agents/:agent":                 {http.StatusNoContent, http.StatusNoContent},
	"GET /o/:org/agents":                                     {http.StatusOK, http.StatusOK},
	"POST /o/:org/agents/:agent/rename":                      {http.StatusSeeOther, http.StatusSeeOther},
	"POST /o/:org/agents/:agent/revoke":                      {http.StatusSeeOther, http.StatusSeeOther},
	"POST /o/:org/enrollment-tokens":                         {http.StatusOK, http.StatusOK},
	"POST /o/:org/enrollment-tokens/:enrollment/revoke":      {http.StatusSeeOther, http.StatusSeeOther},
	// The engine proxy: A's agent made for the call is enrolled but not
	// connected, so each call gets through the access chain and answers
	// 503 naming the agent (calls through a real tunnel: internal/fleete2e).
	"GET /api/v1/orgs/:org/agents/:agent/engine/healthz":             {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"GET /api/v1/orgs/:org/agents/:agent/engine/status":              {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"GET /api/v1/orgs/:org/agents/:agent/engine/instance/retrieval":  {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"POST /api/v1/orgs/:org/agents/:agent/engine/full-refresh":       {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"GET /api/v1/orgs/:org/agents/:agent/engine/snapshots":           {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"POST /api/v1/orgs/:org/agents/:agent/engine/snapshot":           {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"GET /api/v1/orgs/:org/agents/:agent/engine/snapshot/*id":        {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"PATCH /api/v1/orgs/:org/agents/:agent/engine/snapshot/*id":      {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"DELETE /api/v1/orgs/:org/agents/:agent/engine/snapshot/*id":     {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"GET /api/v1/orgs/:org/agents/:agent/engine/clones":              {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"POST /api/v1/orgs/:org/agents/:agent/engine/clone":              {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"GET /api/v1/orgs/:org/agents/:agent/engine/clone/:id":           {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"PATCH /api/v1/orgs/:org/agents/:agent/engine/clone/:id":         {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"DELETE /api/v1/orgs/:org/agents/:agent/engine/clone/:id":        {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"POST /api/v1/orgs/:org/agents/:agent/engine/clone/:id/reset":    {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"POST /api/v1/orgs/:org/agents/:agent/engine/clone/:id/replicas": {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"GET /api/v1/orgs/:org/agents/:agent/engine/snapshots/diff":      {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"GET /api/v1/orgs/:org/agents/:agent/engine/clone/:id/diff":      {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"GET /api/v1/orgs/:org/agents/:agent/engine/branches":            {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"POST /api/v1/orgs/:org/agents/:agent/engine/branch":             {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"POST /api/v1/orgs/:org/agents/:agent/engine/branch/snapshot":    {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"GET /api/v1/orgs/:org/agents/:agent/engine/branch/snapshot/*id": {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"GET /api/v1/orgs/:org/agents/:agent/engine/branch/:name/log":    {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"PATCH /api/v1/orgs/:org/agents/:agent/engine/branch/:name":      {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"DELETE /api/v1/orgs/:org/agents/:agent/engine/branch/:name":     {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"POST /api/v1/orgs/:org/agents/:agent/engine/snapshot/clone":     {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	// The clone pages: the list shows A's agents (not connected: said so
	// on the page); a clone of A's unconnected agent is 503; creating one
	// with B's agent in the form is "agent not found".
	"GET /o/:org/clones":                               {http.StatusOK, http.StatusOK},
	"POST /o/:org/clones":                              {http.StatusNotFound, http.StatusNotFound},
	"GET /o/:org/agents/:agent/clones/:clone":          {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"POST /o/:org/agents/:agent/clones/:clone/reset":   {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"POST /o/:org/agents/:agent/clones/:clone/protect": {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"POST /o/:org/agents/:agent/clones/:clone/destroy": {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"POST /o/:org/agents/:agent/snapshots":             {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"POST /o/:org/agents/:agent/snapshots/delete":      {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"GET /o/:org/agents/:agent/clones/:clone/diff":     {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"GET /o/:org/agents/:agent/branches":               {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	"GET /o/:org/agents/:agent/snapshots/diff":         {http.StatusBadRequest, http.StatusBadRequest},
	"GET /o/:org/agents/:agent/metrics":                {http.StatusOK, http.StatusOK},
	// Usage and billing; billing is off on this platform, so the
	// Stripe actions answer 409 billing_disabled (with billing on,
	// through stripe-mock: platform/billing).
	"GET /api/v1/orgs/:org/usage":             {http.StatusOK, http.StatusOK},
	"GET /api/v1/orgs/:org/usage/savings":     {http.StatusOK, http.StatusOK},
	"GET /api/v1/orgs/:org/billing":           {http.StatusOK, http.StatusOK},
	"POST /api/v1/orgs/:org/billing/checkout": {http.StatusConflict, http.StatusConflict},
	"POST /api/v1/orgs/:org/billing/portal":   {http.StatusConflict, http.StatusConflict},
	"GET /o/:org/usage":                       {http.StatusOK, http.StatusOK},
	"GET /o/:org/billing":                     {http.StatusOK, http.StatusOK},
	"POST /o/:org/billing/checkout":           {http.StatusConflict, http.StatusConflict},
	"POST /o/:org/billing/portal":             {http.StatusConflict, http.StatusConflict},
	// Notifications: the inbox and preferences are the caller's own; the
	// channel, inbox item and dead letter of a call are made for it
	// (tenants.notifications).
	"GET /api/v1/orgs/:org/notifications/inbox":                        {http.StatusOK, http.StatusOK},
	"POST /api/v1/orgs/:org/notifications/inbox/read-all":              {http.StatusNoContent, http.StatusNoContent},
	"POST /api/v1/orgs/:org/notifications/inbox/:notification/read":    {http.StatusNoContent, http.StatusNoContent},
	"GET /api/v1/orgs/:org/notifications/preferences":                  {http.StatusOK, http.StatusOK},
	"PUT /api/v1/orgs/:org/notifications/preferences":                  {http.StatusOK, http.StatusOK},
	"PUT /api/v1/orgs/:org/notifications/org-preferences":              {http.StatusOK, http.StatusOK},
	"GET /api/v1/orgs/:org/notifications/channels":                     {http.StatusOK, http.StatusOK},
	"POST /api/v1/orgs/:org/notifications/channels":                    {http.StatusCreated, http.StatusCreated},
	"DELETE /api/v1/orgs/:org/notifications/channels/:channel":         {http.StatusNoContent, http.StatusNoContent},
	"GET /api/v1/orgs/:org/notifications/dead-letters":                 {http.StatusOK, http.StatusOK},
	"POST /api/v1/orgs/:org/notifications/dead-letters/:message/retry": {http.StatusNoContent, http.StatusNoContent},
	"GET /o/:org/notifications":                                        {http.StatusOK, http.StatusOK},
	"POST /o/:org/notifications/inbox/read-all":                        {http.StatusSeeOther, http.StatusSeeOther},
	"POST /o/:org/notifications/inbox/:notification/read":              {http.StatusSeeOther, http.StatusSeeOther},
	"GET /o/:org/notifications/preferences":                            {http.StatusOK, http.StatusOK},
	"POST /o/:org/notifications/preferences":                           {http.StatusSeeOther, http.StatusSeeOther},
	"POST /o/:org/notifications/org-preferences":                       {http.StatusSeeOther, http.StatusSeeOther},
	"GET /o/:org/notifications/channels":                               {http.StatusOK, http.StatusOK},
	"POST /o/:org/notifications/channels":                              {http.StatusOK, http.StatusOK},
	"POST /o/:org/notifications/channels/:channel/delete":              {http.StatusSeeOther, http.StatusSeeOther},
	"POST /o/:org/notifications/dead-letters/:message/retry":           {http.StatusSeeOther, http.StatusSeeOther},
}

// TestTenantIsolation walks EVERY route of the route table (API and web
// UI) as the owner of organization A, with A's API token and with a real
// browser session (signed in through Dex; its cookie and CSRF token):
//   - against organization B and B's resources every attempt is 404, B's
//     existence never confirmed (403 only where the caller holds B's
//     invitation secret);
//   - in A itself, each route answers exactly its expected status, so that
//     the 404s above come from the membership check and not from a broken
//     route (a 500 fails);
//   - a session mutation without the CSRF token is refused on every route.
//
// A route the walk does not know how to cover fails the test.
func TestTenantIsolation(t *testing.T) {
	tt := newTenants(t)
	// noLeak fails when an answer names B or its resources, except what
	// the request itself sent (a "no such token: ID" echo is no leak).
	noLeak := func(t *testing.T, what string, a answer) {
		t.Helper()
		for _, secret := range []string{tt.b.ID, tt.b.Slug, tt.memberB.Email, tt.memberB.ID, tt.tokenIDB, tt.agentB, tt.agentNameB, tt.enrollmentB} {
			if strings.Contains(what, secret) {
				continue
			}
			if strings.Contains(a.Body, secret) || strings.Contains(a.Header.Get("Location"), secret) {
				t.Errorf("%s leaks B (%s): HTTP %d %s", what, secret, a.Status, a.Body)
			}
		}
	}
	expect := func(t *testing.T, as caller, method, path string, body any, want int) answer {
		t.Helper()
		a := tt.do(t, as, method, path, body, true)
		if a.Status != want {
			t.Errorf("%s: %s %s = %d, want %d\n%s", as.name, method, path, a.Status, want, snippet(a.Body))
		}
		return a
	}
	// Routes outside any organization: the exact answer per caller.
	global := map[string]func(t *testing.T, as caller){
		"GET /healthz": func(t *testing.T, as caller) {
			expect(t, as, http.MethodGet, "/healthz", nil, http.StatusOK)
		},
		"GET /api/v1/openapi.json": func(t *testing.T, as caller) {
			expect(t, as, http.MethodGet, "/api/v1/openapi.json", nil, http.StatusOK)
		},
		"GET /api/v1/me": func(t *testing.T, as caller) {
			noLeak(t, "/me", expect(t, as, http.MethodGet, "/api/v1/me", nil, http.StatusOK))
		},
		"GET /api/v1/orgs": func(t *testing.T, as caller) {
			a := expect(t, as, http.MethodGet, "/api/v1/orgs", nil, http.StatusOK)
			noLeak(t, "/orgs", a)
			if !strings.Contains(a.Body, tt.a.ID) {
				t.Errorf("%s: /orgs lacks A: %s", as.name, a.Body)
			}
		},
		"POST /api/v1/orgs": func(t *testing.T, as caller) {
			// Slugs are global names: B's is a plain conflict. Tokens act
			// inside one organization and create none.
			want := http.StatusConflict
			if !as.session() {
				want = http.StatusForbidden
			}
			expect(t, as, http.MethodPost, "/api/v1/orgs", map[string]string{"slug": tt.b.Slug, "name": "Mine"}, want)
		},
		"POST /api/v1/invitations/:token/accept": func(t *testing.T, as caller) {
			// B's invitation is for another address (session: 403); a token
			// joins nothing (403).
			a := expect(t, as, http.MethodPost, "/api/v1/invitations/"+tt.invitationSecretB+"/accept", nil, http.StatusForbidden)
			noLeak(t, "accepting B's invitation for "+tt.invitationBTo, a)
		},
		"POST " + tunnel.EnrollPath: func(t *testing.T, as caller) {
			// Public: only the enrollment token in the body counts, and a
			// forged one is refused without naming anything of B.
			a := expect(t, as, http.MethodPost, tunnel.EnrollPath, tunnel.EnrollRequest{
				Token: store.EnrollmentTokenPrefix + "forged" + tt.enrollmentB, Facts: tunnel.AgentFacts{Name: "intruder"},
			}, http.StatusUnauthorized)
			noLeak(t, "enrolling with a forged token", a)
		},
		"GET " + tunnel.TunnelPath: func(t *testing.T, as caller) {
			// Only an agent credential opens a tunnel: a user's token or
			// session is refused.
			noLeak(t, "the tunnel", expect(t, as, http.MethodGet, tunnel.TunnelPath, nil, http.StatusUnauthorized))
		},
		"GET " + hub.RelayPath: func(t *testing.T, as caller) {
			// Only a replica with the relay secret relays: a user's token
			// or session, for B's agent, is refused.
			noLeak(t, "the relay", expect(t, as, http.MethodGet, hub.RelayPath+"?agent="+tt.agentB+"&kind=api&port=0&ts=1", nil, http.StatusUnauthorized))
		},
		"POST " + api.StripeWebhookPath: func(t *testing.T, as caller) {
			// Stripe's webhook: billing is off here (404); with billing on
			// only Stripe's signature counts (platform/billing tests), never
			// a user's token or session.
			noLeak(t, "the Stripe webhook", expect(t, as, http.MethodPost, api.StripeWebhookPath, map[string]string{"id": "evt_" + tt.b.ID}, http.StatusNotFound))
		},
		"GET /static/*filepath": func(t *testing.T, as caller) {
			expect(t, as, http.MethodGet, "/static/style.css", nil, http.StatusOK)
		},
		"GET /signin": func(t *testing.T, as caller) {
			// A signed-in browser goes home; the sign-in page reads no token.
			want := http.StatusOK
			if as.session() {
				want = http.StatusSeeOther
			}
			expect(t, as, http.MethodGet, "/signin", nil, want)
		},
		"GET /auth/login/:provider": func(t *testing.T, as caller) {
			a := expect(t, as, http.MethodGet, "/auth/login/dex", nil, http.StatusFound)
			if !strings.Contains(a.Header.Get("Location"), "/dex/auth?") {
				t.Errorf("%s: sign-in start goes to %q, want Dex's authorization endpoint", as.name, a.Header.Get("Location"))
			}
		},
		"GET /auth/callback/:provider": func(t *testing.T, as caller) {
			// No sign-in was started in this request's cookies: refused.
			expect(t, as, http.MethodGet, "/auth/callback/dex?state=forged&code=forged", nil, http.StatusBadRequest)
		},
		"POST /auth/logout": func(t *testing.T, as caller) {
			if !as.session() {
				expect(t, as, http.MethodPost, "/auth/logout", nil, http.StatusSeeOther)
				return
			}
			// Logging out ends the session: use a second session of ann,
			// and check that only that one ended.
			other := webtest.NewBrowser(t)
			_, csrf := tt.signInAnn(other)
			oc := caller{name: "second session", browser: other, csrf: csrf}
			if a := expect(t, oc, http.MethodPost, "/auth/logout", nil, http.StatusSeeOther); !strings.HasPrefix(a.Header.Get("Location"), "/signin") {
				t.Errorf("logout redirects to %q, want /signin", a.Header.Get("Location"))
			}
			expect(t, oc, http.MethodGet, "/api/v1/me", nil, http.StatusUnauthorized)
			expect(t, as, http.MethodGet, "/api/v1/me", nil, http.StatusOK)
		},
		"GET /": func(t *testing.T, as caller) {
			a := expect(t, as, http.MethodGet, "/", nil, http.StatusSeeOther)
			if a.Header.Get("Location") != "/o/"+tt.a.Slug {
				t.Errorf("%s: home goes to %q, want /o/%s", as.name, a.Header.Get("Location"), tt.a.Slug)
			}
		},
		"GET /switch": func(t *testing.T, as caller) {
			// The switcher only redirects; B's page itself is walked below.
			a := expect(t, as, http.MethodGet, "/switch?org="+tt.b.Slug, nil, http.StatusSeeOther)
			if a.Header.Get("Location") != "/o/"+tt.b.Slug {
				t.Errorf("%s: switch goes to %q", as.name, a.Header.Get("Location"))
			}
		},
		"POST /orgs": func(t *testing.T, as caller) {
			want := http.StatusConflict
			if !as.session() {
				want = http.StatusForbidden
			}
			expect(t, as, http.MethodPost, "/orgs", url.Values{"slug": {tt.b.Slug}, "name": {"Mine"}}, want)
		},
		"GET /invitations/accept": func(t *testing.T, as caller) {
			// The link holder sees the invitation, but it is for another
			// address.
			expect(t, as, http.MethodGet, "/invitations/accept?secret="+url.QueryEscape(tt.invitationSecretB), nil, http.StatusForbidden)
		},
		"POST /invitations/accept": func(t *testing.T, as caller) {
			a := expect(t, as, http.MethodPost, "/invitations/accept", url.Values{"secret": {tt.invitationSecretB}}, http.StatusForbidden)
			noLeak(t, "accepting B's invitation in the UI", a)
		},
	}

	callers := []caller{
		{name: "api token of A", token: tt.tokenA},
		{name: "session of A's owner", browser: tt.session, csrf: tt.csrf},
	}
	routes := tt.p.Server.Routes()
	covered := map[string]bool{}
	for _, rt := range routes {
		key := rt.Method + " " + rt.Path
		if !rt.OrgRoute() {
			check, ok := global[key]
			if !ok {
				t.Errorf("route %s is not covered by the isolation walk: add it to the table of global routes", key)
				continue
			}
			covered[key] = true
			for _, as := range callers {
				t.Run(as.name+"/"+key, func(t *testing.T) { check(t, as) })
			}
			continue
		}
		want, ok := ownStatus[key]
		if !ok {
			t.Errorf("organization route %s has no expected status in A: add it to ownStatus", key)
			continue
		}
		covered[key] = true
		for _, as := range callers {
			t.Run(as.name+"/"+key, func(t *testing.T) {
				// B's organization, by slug and by ID: not a member -> 404.
				for _, ref := range []string{tt.b.Slug, tt.b.ID} {
					path := tt.fillB(rt.Path, ref)
					a := expect(t, as, rt.Method, path, tt.bodyFor(rt.Method, rt.Path), http.StatusNotFound)
					noLeak(t, rt.Method+" "+path, a)
				}
				// A's own organization, but B's resources in the path.
				if strings.Count(rt.Path, ":") > 1 {
					path := tt.fillB(rt.Path, tt.a.Slug)
					noLeak(t, rt.Method+" "+path, expect(t, as, rt.Method, path, tt.bodyFor(rt.Method, rt.Path), http.StatusNotFound))
				}
				// A itself: exactly the route's answer.
				wantA := want.token
				if as.session() {
					wantA = want.session
				}
				expect(t, as, rt.Method, tt.fillA(t, rt.Path), tt.bodyFor(rt.Method, rt.Path), wantA)
			})
		}
	}
	for key := range global {
		if !covered[key] {
			t.Errorf("isolation table lists %s, which is not a route any more", key)
		}
	}
	for key := range ownStatus {
		if !covered[key] {
			t.Errorf("ownStatus lists %s, which is not an organization route any more", key)
		}
	}

	// The session's CSRF token is checked on every mutation: without it,
	// in A, with A's resources, the session is refused (the API with 401
	// and the reason, the UI with a 403 page).
	session := callers[1]
	for _, rt := range routes {
		if rt.Public || !rt.Mutation() {
			continue
		}
		path := "/api/v1/invitations/" + tt.invitationSecretB + "/accept"
		if rt.Path != "/api/v1/invitations/:token/accept" {
			path = tt.fillA(t, rt.Path)
		}
		t.Run("session without CSRF token/"+rt.Method+" "+rt.Path, func(t *testing.T) {
			a := tt.do(t, session, rt.Method, path, tt.bodyFor(rt.Method, rt.Path), false)
			want := http.StatusUnauthorized
			if !strings.HasPrefix(rt.Path, "/api/") {
				want = http.StatusForbidden
			}
			if a.Status != want || !strings.Contains(a.Body, auth.CSRFRefusal) {
				t.Errorf("%s %s without the CSRF token = %d, want %d %q\n%s", rt.Method, path, a.Status, want, auth.CSRFRefusal, snippet(a.Body))
			}
		})
	}

	// B is untouched.
	ctx := t.Context()
	members, err := tt.p.Store.ListMembers(ctx, tt.b.ID)
	roles := map[string]rbac.Role{}
	for _, m := range members {
		roles[m.Email] = m.Role
	}
	if err != nil || len(members) != 2 || roles["bob@b.example"] != rbac.Owner || roles["bea@b.example"] != rbac.Member {
		t.Errorf("B's members changed: %+v %v; want bob owner and bea member", members, err)
	}
	tok, err := tt.p.Store.APITokenByID(ctx, tt.b.ID, tt.tokenIDB)
	if err != nil || tok.RevokedAt != nil {
		t.Errorf("B's token changed: %+v %v; want it unrevoked", tok, err)
	}
	invs, err := tt.p.Store.ListInvitations(ctx, tt.b.ID)
	if err != nil || len(invs) != 1 || invs[0].ID != tt.invitationB || invs[0].AcceptedAt != nil {
		t.Errorf("B's invitations changed: %+v %v; want the one open invitation", invs, err)
	}
	agB, err := tt.p.Store.AgentByID(ctx, tt.b.ID, tt.agentB)
	if err != nil || agB.RevokedAt != nil || agB.Name != tt.agentNameB {
		t.Errorf("B's agent changed: %+v %v; want it unrevoked and named %s", agB, err, tt.agentNameB)
	}
	enrB, err := tt.p.Store.EnrollmentTokenByID(ctx, tt.b.ID, tt.enrollmentB)
	if err != nil || enrB.RevokedAt != nil {
		t.Errorf("B's enrollment token changed: %+v %v; want it unrevoked", enrB, err)
	}
	// B's token still works in B, and only there.
	if r := tt.env.Do(http.MethodGet, "/api/v1/orgs/org-b/members", tt.tokenB, nil); r.Status != http.StatusOK {
		t.Errorf("B's token in B: %d %s, want 200", r.Status, r.Body)
	}
	if r := tt.env.Do(http.MethodGet, "/api/v1/orgs/"+tt.a.Slug+"/members", tt.tokenB, nil); r.Status != http.StatusNotFound {
		t.Errorf("B's token in A: %d %s, want 404", r.Status, r.Body)
	}
}

func snippet(s string) string {
	if len(s) > 600 {
		return s[:600] + "..."
	}
	return s
}

// TestPermissionsEnforcedOnEveryRoute calls every organization route with
// every role and expects 403 exactly where rbac denies the permission.
func TestPermissionsEnforcedOnEveryRoute(t *testing.T) {
	env := platformtest.New(t)
	owner := env.User("owner@example.com")
	org := env.Org("perm", owner)
	for _, role := range rbac.Roles {
		u := owner
		if role != rbac.Owner {
			u = env.Member(org, string(role)+"@example.com", role)
		}
		token := env.Token(org, u)
		for _, rt := range env.APIRoutes() {
			if !rt.OrgRoute() {
				continue
			}
			// Resource IDs that do not exist: an allowed call answers 404
			// for the resource, a denied one 403 before looking.
			path := strings.NewReplacer(":org", org.Slug, ":user", "usr_none", ":invitation", "inv_none", ":token", "tok_none", ":agent", "agt_none", ":enrollment", "enr_none",
				":channel", "nch_none", ":notification", "999999", ":message", "999999").Replace(rt.Path)
			r := env.Do(rt.Method, path, token, "{}")
			denied := r.Status == http.StatusForbidden && r.Error().Code == "forbidden"
			// Routes that refuse API tokens deny every role's token.
			if want := !rbac.Can(role, rt.Permission) || rt.TokenRefused != ""; denied != want {
				t.Errorf("%s: %s %s = %d %s; want denied=%v (needs %s)", role, rt.Method, rt.Path, r.Status, r.Body, want, rt.Permission)
			}
		}
	}
}
