package api_test

import (
	"encoding/csv"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/platform/notify"
	"github.com/thinlab/thinlab/platform/platformtest"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/platformapi"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

func allEvents(t *testing.T, env *platformtest.Env) []store.AuditEvent {
	t.Helper()
	return env.AuditEvents()
}

// TestEveryMutationIsAudited calls every mutating route of the route table
// once as it should succeed and once as it must fail, and expects exactly
// one new audit event each time, with the route's action and the result.
func TestEveryMutationIsAudited(t *testing.T) {
	env := platformtest.New(t, platformtest.WithAuthenticator(fakeSession))
	ctx := t.Context()
	owner := env.User("owner@example.com")
	org := env.Org("aud", owner)
	viewer := env.Member(org, "vic@example.com", rbac.Viewer)
	target := env.Member(org, "tim@example.com", rbac.Member)
	outsider := env.User("out@example.com")
	leaver := env.Member(org, "lea@example.com", rbac.Member)
	ownerTok, viewerTok := env.Token(org, owner), env.Token(org, viewer)
	victimTok, _, err := env.Store.CreateAPIToken(ctx, org.ID, target.ID, "victim", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, invSecret, err := env.Store.CreateInvitation(ctx, org.ID, "out@example.com", rbac.Viewer, owner.ID)
	if err != nil {
		t.Fatal(err)
	}
	inv2, _, err := env.Store.CreateInvitation(ctx, org.ID, "gone@example.com", rbac.Viewer, owner.ID)
	if err != nil {
		t.Fatal(err)
	}
	enr, enrSecret, err := env.Store.CreateEnrollmentToken(ctx, org.ID, owner.ID, "hosts", time.Now().Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	ag, _, _, err := env.Store.Enroll(ctx, enrSecret, tunnel.AgentFacts{Name: "db"})
	if err != nil {
		t.Fatal(err)
	}

	// A channel of the organization whose address the platform refuses:
	// the event below lands in the owner's inbox and, at the channel's
	// first attempt, among the dead letters.
	hook, err := env.Store.CreateNotificationChannel(ctx, org.ID, store.ChannelWebhook, "refused", "http://127.0.0.1:1/hook", "s", owner.ID)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := env.Server.Notifier().Record(ctx, env.Store, notify.Event{OrgID: org.ID, Name: notify.LagHigh, Target: "pool1", SourceKey: "audit-test"})
	if err != nil {
		t.Fatal(err)
	}
	env.Server.Notifier().Committed()
	inbox, err := env.Store.ListInbox(ctx, org.ID, owner.ID, false, 10)
	if err != nil || len(inbox) != 1 {
		t.Fatalf("owner's inbox: %+v %v, want the one event", inbox, err)
	}
	item := strconv.FormatInt(inbox[0].Item.ID, 10)
	spare, err := env.Store.CreateNotificationChannel(ctx, org.ID, store.ChannelSlack, "spare", "https://hooks.slack.example/services/T/B/Y", "", owner.ID)
	if err != nil {
		t.Fatal(err)
	}
	outsiderTok := env.Token(env.Org("outside", outsider), outsider)
	var dead string
	waitUntil(t, "the refused webhook's message to become a dead letter", func() bool {
		dls, err := env.Store.ListDeadLetters(ctx, org.ID, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(dls) == 1 && dls[0].Message.EventID == rec.EventID {
			dead = strconv.FormatInt(dls[0].Message.ID, 10)
		}
		return dead != ""
	})

	type call = auditCall
	// Per mutation route: a failing call, then a succeeding one.
	calls := map[string][]call{
		"POST /api/v1/orgs": {
			{"/api/v1/orgs", `{"slug":"aud"}`, testUserHeader, owner.ID, false},
			{"/api/v1/orgs", `{"slug":"aud-two"}`, testUserHeader, owner.ID, true},
		},
		"POST /api/v1/orgs/:org/members": {
			// Removed (410): people join through invitations only.
			{"/api/v1/orgs/aud/members", `{"user_id":"` + outsider.ID + `","role":"viewer"}`, "Authorization", "Bearer " + viewerTok, false},
			{"/api/v1/orgs/aud/members", `{"user_id":"` + outsider.ID + `","role":"viewer"}`, "Authorization", "Bearer " + ownerTok, false},
		},
		"PATCH /api/v1/orgs/:org/members/:user": {
			{"/api/v1/orgs/aud/members/" + owner.ID, `{"role":"viewer"}`, "Authorization", "Bearer " + ownerTok, false},
			{"/api/v1/orgs/aud/members/" + target.ID, `{"role":"admin"}`, "Authorization", "Bearer " + ownerTok, true},
		},
		"DELETE /api/v1/orgs/:org/members/:user": {
			{"/api/v1/orgs/aud/members/" + owner.ID, "", "Authorization", "Bearer " + ownerTok, false},
			{"/api/v1/orgs/aud/members/" + leaver.ID, "", "Authorization", "Bearer " + ownerTok, true},
		},
		"POST /api/v1/orgs/:org/invitations": {
			{"/api/v1/orgs/aud/invitations", `{"email":"x","role":"viewer"}`, "Authorization", "Bearer " + ownerTok, false},
			{"/api/v1/orgs/aud/invitations", `{"email":"x@example.com","role":"viewer"}`, "Authorization", "Bearer " + ownerTok, true},
		},
		"DELETE /api/v1/orgs/:org/invitations/:invitation": {
			{"/api/v1/orgs/aud/invitations/inv_nope", "", "Authorization", "Bearer " + ownerTok, false},
			{"/api/v1/orgs/aud/invitations/" + inv2.ID, "", "Authorization", "Bearer " + ownerTok, true},
		},
		"POST /api/v1/invitations/:token/accept": {
			{"/api/v1/invitations/" + invSecret + "/accept", "", testUserHeader, viewer.ID, false},
			{"/api/v1/invitations/" + invSecret + "/accept", "", testUserHeader, outsider.ID, true},
		},
		"POST /api/v1/orgs/:org/tokens": {
			{"/api/v1/orgs/aud/tokens", `{"name":"ci"}`, "Authorization", "Bearer " + ownerTok, false},
			{"/api/v1/orgs/aud/tokens", `{"name":""}`, testUserHeader, owner.ID, false},
			{"/api/v1/orgs/aud/tokens", `{"name":"ci"}`, testUserHeader, owner.ID, true},
		},
		"POST /api/v1/orgs/:org/enrollment-tokens": {
			{"/api/v1/orgs/aud/enrollment-tokens", `{"name":"x"}`, "Authorization", "Bearer " + viewerTok, false},
			{"/api/v1/orgs/aud/enrollment-tokens", `{"name":"tf","single_use":true}`, "Authorization", "Bearer " + ownerTok, true},
		},
		"DELETE /api/v1/orgs/:org/enrollment-tokens/:enrollment": {
			{"/api/v1/orgs/aud/enrollment-tokens/enr_nope", "", "Authorization", "Bearer " + ownerTok, false},
			{"/api/v1/orgs/aud/enrollment-tokens/" + enr.ID, "", "Authorization", "Bearer " + ownerTok, true},
		},
		"PATCH /api/v1/orgs/:org/agents/:agent": {
			{"/api/v1/orgs/aud/agents/" + ag.ID, `{"name":""}`, "Authorization", "Bearer " + ownerTok, false},
			{"/api/v1/orgs/aud/agents/" + ag.ID, `{"name":"primary"}`, "Authorization", "Bearer " + ownerTok, true},
		},
		"DELETE /api/v1/orgs/:org/agents/:agent": {
			{"/api/v1/orgs/aud/agents/" + ag.ID, "", "Authorization", "Bearer " + viewerTok, false},
			{"/api/v1/orgs/aud/agents/" + ag.ID, "", "Authorization", "Bearer " + ownerTok, true},
		},
		// The engine proxy's mutations: refused by permission (viewer) and
		// by the agent's state (enrolled, never connected: 503). Calls the
		// agent answers are audited in internal/fleete2e
		// (TestEngineProxyThroughRealTunnel).
		"POST /api/v1/orgs/:org/agents/:agent/engine/full-refresh":       engineRefusals(ag.ID, "/full-refresh", viewerTok, ownerTok),
		"POST /api/v1/orgs/:org/agents/:agent/engine/snapshot":           engineRefusals(ag.ID, "/snapshot", viewerTok, ownerTok),
		"POST /api/v1/orgs/:org/agents/:agent/engine/branch":             engineRefusals(ag.ID, "/branch", viewerTok, ownerTok),
		"POST /api/v1/orgs/:org/agents/:agent/engine/branch/snapshot":    engineRefusals(ag.ID, "/branch/snapshot", viewerTok, ownerTok),
		"PATCH /api/v1/orgs/:org/agents/:agent/engine/branch/:name":      engineRefusals(ag.ID, "/branch/feature", viewerTok, ownerTok),
		"DELETE /api/v1/orgs/:org/agents/:agent/engine/branch/:name":     engineRefusals(ag.ID, "/branch/feature", viewerTok, ownerTok),
		"POST /api/v1/orgs/:org/agents/:agent/engine/snapshot/clone":     engineRefusals(ag.ID, "/snapshot/clone", viewerTok, ownerTok),
		"PATCH /api/v1/orgs/:org/agents/:agent/engine/snapshot/*id":      engineRefusals(ag.ID, "/snapshot/pool@snapshot_20260101000000", viewerTok, ownerTok),
		"DELETE /api/v1/orgs/:org/agents/:agent/engine/snapshot/*id":     engineRefusals(ag.ID, "/snapshot/pool@snapshot_20260101000000", viewerTok, ownerTok),
		"POST /api/v1/orgs/:org/agents/:agent/engine/clone":              engineRefusals(ag.ID, "/clone", viewerTok, ownerTok),
		"PATCH /api/v1/orgs/:org/agents/:agent/engine/clone/:id":         engineRefusals(ag.ID, "/clone/c1", viewerTok, ownerTok),
		"DELETE /api/v1/orgs/:org/agents/:agent/engine/clone/:id":        engineRefusals(ag.ID, "/clone/c1", viewerTok, ownerTok),
		"POST /api/v1/orgs/:org/agents/:agent/engine/clone/:id/reset":    engineRefusals(ag.ID, "/clone/c1/reset", viewerTok, ownerTok),
		"POST /api/v1/orgs/:org/agents/:agent/engine/clone/:id/replicas": engineRefusals(ag.ID, "/clone/c1/replicas", viewerTok, ownerTok),
		// Billing is off on this platform: the owner's call is refused
		// too (409); calls that reach stripe-mock: platform/billing.
		"POST /api/v1/orgs/:org/billing/checkout": {
			{"/api/v1/orgs/aud/billing/checkout", `{"plan":"team"}`, "Authorization", "Bearer " + viewerTok, false},
			{"/api/v1/orgs/aud/billing/checkout", `{"plan":"team"}`, "Authorization", "Bearer " + ownerTok, false},
		},
		"POST /api/v1/orgs/:org/billing/portal": {
			{"/api/v1/orgs/aud/billing/portal", "", "Authorization", "Bearer " + viewerTok, false},
			{"/api/v1/orgs/aud/billing/portal", "", "Authorization", "Bearer " + ownerTok, false},
		},
		"POST /api/v1/orgs/:org/notifications/inbox/read-all": {
			// A token of another organization: 404, audited.
			{"/api/v1/orgs/aud/notifications/inbox/read-all", "", "Authorization", "Bearer " + outsiderTok, false},
			{"/api/v1/orgs/aud/notifications/inbox/read-all", "", "Authorization", "Bearer " + viewerTok, true},
		},
		"POST /api/v1/orgs/:org/notifications/inbox/:notification/read": {
			// Another member's notification is not found for the viewer.
			{"/api/v1/orgs/aud/notifications/inbox/" + item + "/read", "", "Authorization", "Bearer " + viewerTok, false},
			{"/api/v1/orgs/aud/notifications/inbox/" + item + "/read", "", "Authorization", "Bearer " + ownerTok, true},
		},
		"PUT /api/v1/orgs/:org/notifications/preferences": {
			{"/api/v1/orgs/aud/notifications/preferences", `{"preferences":[{"event":"*","channel":"slack","enabled":false}]}`, "Authorization", "Bearer " + viewerTok, false},
			{"/api/v1/orgs/aud/notifications/preferences", `{"preferences":[{"event":"*","channel":"email","enabled":false}]}`, "Authorization", "Bearer " + viewerTok, true},
		},
		"PUT /api/v1/orgs/:org/notifications/org-preferences": {
			{"/api/v1/orgs/aud/notifications/org-preferences", `{"preferences":[{"event":"*","channel":"slack","enabled":false}]}`, "Authorization", "Bearer " + viewerTok, false},
			{"/api/v1/orgs/aud/notifications/org-preferences", `{"preferences":[{"event":"snapshot.created","channel":"slack","enabled":false}]}`, "Authorization", "Bearer " + ownerTok, true},
		},
		"POST /api/v1/orgs/:org/notifications/channels": {
			{"/api/v1/orgs/aud/notifications/channels", `{"kind":"webhook","name":"meta","url":"http://169.254.169.254/latest"}`, "Authorization", "Bearer " + ownerTok, false},
			{"/api/v1/orgs/aud/notifications/channels", `{"kind":"slack","name":"ops","url":"https://hooks.slack.example/services/T/B/X"}`, "Authorization", "Bearer " + ownerTok, true},
		},
		"DELETE /api/v1/orgs/:org/notifications/channels/:channel": {
			{"/api/v1/orgs/aud/notifications/channels/" + hook.ID, "", "Authorization", "Bearer " + viewerTok, false},
			{"/api/v1/orgs/aud/notifications/channels/nch_nope", "", "Authorization", "Bearer " + ownerTok, false},
			{"/api/v1/orgs/aud/notifications/channels/" + spare.ID, "", "Authorization", "Bearer " + ownerTok, true},
		},
		"POST /api/v1/orgs/:org/notifications/dead-letters/:message/retry": {
			{"/api/v1/orgs/aud/notifications/dead-letters/" + dead + "/retry", "", "Authorization", "Bearer " + viewerTok, false},
			{"/api/v1/orgs/aud/notifications/dead-letters/" + dead + "/retry", "", "Authorization", "Bearer " + ownerTok, true},
		},
		"DELETE /api/v1/orgs/:org/tokens/:token": {
			{"/api/v1/orgs/aud/tokens/" + victimTok.ID, "", "Authorization", "Bearer " + viewerTok, false},
			{"/api/v1/orgs/aud/tokens/" + victimTok.ID, "", "Authorization", "Bearer " + ownerTok, true},
		},
	}
	for _, rt := range env.APIRoutes() {
		if !rt.Mutation() {
			continue
		}
		key := rt.Method + " " + rt.Path
		cs, ok := calls[key]
		if !ok {
			t.Errorf("mutation %s has no audit test case: add one", key)
			continue
		}
		for _, c := range cs {
			before := len(allEvents(t, env))
			r := env.DoWithHeader(rt.Method, c.path, c.header, c.value, c.body)
			if ok := r.Status < http.StatusBadRequest; ok != c.wantOK {
				t.Fatalf("%s %s: %d %s, want success=%v", key, c.path, r.Status, r.Body, c.wantOK)
			}
			events := allEvents(t, env)
			if len(events) != before+1 {
				t.Fatalf("%s %s: %d new audit events, want 1", key, c.path, len(events)-before)
			}
			ev := events[len(events)-1]
			wantResult := store.ResultSuccess
			if !c.wantOK {
				wantResult = store.ResultError
			}
			if ev.Action != rt.Action || ev.Result != wantResult || ev.ActorID == nil || ev.IP == "" || ev.UserAgent != "platformtest" {
				t.Errorf("%s: event %+v, want action %s result %s with actor, IP and user agent", key, ev, rt.Action, wantResult)
			}
			if !c.wantOK && ev.Error != r.Error().Message {
				t.Errorf("%s: event error %q, want the message sent: %q", key, ev.Error, r.Error().Message)
			}
			if c.wantOK && (ev.OrgID == nil || ev.Target == "") {
				t.Errorf("%s: successful event lacks org or target: %+v", key, ev)
			}
		}
	}
}

type auditCall struct {
	path, body, header, value string
	wantOK                    bool
}

// engineRefusals are two failing calls of an engine proxy mutation: a
// viewer (403; the revoke test below revokes ag later) and the owner to
// an agent that is not connected (503).
func engineRefusals(agentID, path, viewerTok, ownerTok string) []auditCall {
	p := "/api/v1/orgs/aud/agents/" + agentID + "/engine" + path
	return []auditCall{
		{p, `{}`, "Authorization", "Bearer " + viewerTok, false},
		{p, `{}`, "Authorization", "Bearer " + ownerTok, false},
	}
}

func TestAuditLogIsAppendOnly(t *testing.T) {
	env := platformtest.New(t)
	owner := env.User("owner@example.com")
	org := env.Org("aud", owner)
	tok := env.Token(org, owner)
	env.Do("POST", "/api/v1/orgs/aud/tokens", tok, `{"name":"x"}`)
	if n := len(allEvents(t, env)); n != 1 {
		t.Fatalf("%d events", n)
	}
	for _, q := range []string{
		"UPDATE audit_events SET action = 'nothing.happened'",
		"DELETE FROM audit_events",
		"TRUNCATE audit_events",
	} {
		err := env.Exec(q)
		if err == nil || !strings.Contains(err.Error(), "append-only") {
			t.Errorf("%s as superuser: %v, want rejected as append-only", q, err)
		}
	}
	if evs := allEvents(t, env); len(evs) != 1 || evs[0].Action != "token.create" {
		t.Fatalf("events changed: %+v", evs)
	}
}

func TestAuditFiltersAndExport(t *testing.T) {
	env := platformtest.New(t, platformtest.WithAuthenticator(fakeSession))
	ctx := t.Context()
	owner := env.User("owner@example.com")
	org := env.Org("aud", owner)
	admin := env.Member(org, "adm@example.com", rbac.Admin)
	oc, ac := env.Client(env.Token(org, owner)), env.Client(env.Token(org, admin))

	created := createToken(t, env, "aud", owner.ID, platformapi.CreateTokenRequest{Name: "one"})
	mid := time.Now().UTC().Truncate(time.Second).Add(time.Second)
	// Wait for the next whole second so since/until (RFC 3339, seconds)
	// split the events into before and after.
	for time.Now().Before(mid) {
		time.Sleep(50 * time.Millisecond)
	}
	if err := ac.RevokeToken(ctx, "aud", created.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := ac.Invite(ctx, "aud", platformapi.CreateInvitationRequest{Email: "n@example.com", Role: "viewer"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ac.SetMemberRole(ctx, "aud", owner.ID, "viewer"); err == nil {
		t.Fatal("admin demoted the owner")
	}

	check := func(q platformapi.AuditQuery, want ...string) {
		t.Helper()
		evs, err := oc.Audit(ctx, "aud", q)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range evs {
			got = append(got, e.Action+":"+e.Result)
		}
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("audit %+v = %v, want %v", q, got, want)
		}
	}
	check(platformapi.AuditQuery{}, "member.update:error", "invitation.create:success", "token.revoke:success", "token.create:success")
	check(platformapi.AuditQuery{Actor: admin.ID}, "member.update:error", "invitation.create:success", "token.revoke:success")
	check(platformapi.AuditQuery{Actor: "owner@example.com"}, "token.create:success")
	check(platformapi.AuditQuery{Action: "token."}, "token.revoke:success", "token.create:success")
	check(platformapi.AuditQuery{Action: "token.create"}, "token.create:success")
	check(platformapi.AuditQuery{Target: created.ID}, "token.revoke:success", "token.create:success")
	check(platformapi.AuditQuery{Until: mid}, "token.create:success")
	check(platformapi.AuditQuery{Since: mid, Action: "token."}, "token.revoke:success")

	// CSV export: header plus one row per event, with the filter applied.
	raw, err := oc.AuditCSV(ctx, "aud", platformapi.AuditQuery{Action: "token."})
	if err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(strings.NewReader(string(raw))).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 3 || strings.Join(rows[0], ",") != "id,time,actor_id,actor,action,target,ip,user_agent,result,error" ||
		rows[1][4] != "token.revoke" || rows[1][3] != "adm@example.com" || rows[2][5] != created.ID || rows[1][8] != "success" {
		t.Fatalf("CSV export:\n%s", raw)
	}
	// JSON export with the format parameter, and the error message kept.
	r := env.Do("GET", "/api/v1/orgs/aud/audit?format=json&action=member.update", env.Token(org, owner), nil)
	var doc platformapi.List[platformapi.AuditEvent]
	if err := json.Unmarshal(r.Body, &doc); err != nil || len(doc.Items) != 1 || doc.Items[0].Result != "error" || !strings.Contains(doc.Items[0].Error, "cannot change a member whose role is owner") {
		t.Fatalf("JSON export: %s", r.Body)
	}
	// Bad filters name the parameter.
	for _, q := range []string{"since=yesterday", "until=1", "format=xml", "limit=0"} {
		field, _, _ := strings.Cut(q, "=")
		r := env.Do("GET", "/api/v1/orgs/aud/audit?"+q, env.Token(org, owner), nil)
		if r.Status != http.StatusBadRequest || r.Error().Field != field {
			t.Errorf("?%s: %d %s", url.PathEscape(q), r.Status, r.Body)
		}
	}
	// Members without audit:read are refused.
	viewer := env.Member(org, "v@example.com", rbac.Viewer)
	if _, err := env.Client(env.Token(org, viewer)).Audit(ctx, "aud", platformapi.AuditQuery{}); !isStatus(err, http.StatusForbidden) {
		t.Fatalf("viewer reading audit: %v", err)
	}
}

// waitUntil polls cond; the bound only keeps a broken test from hanging.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
