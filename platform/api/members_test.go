package api_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/thinlab/thinlab/platform/platformtest"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/sdk/platformapi"
)

func TestLastOwnerCannotBeRemovedOrDemoted(t *testing.T) {
	env := platformtest.New(t)
	ctx := t.Context()
	owner := env.User("owner@example.com")
	org := env.Org("own", owner)
	admin := env.Member(org, "adm@example.com", rbac.Admin)
	oc := env.Client(env.Token(org, owner))
	ac := env.Client(env.Token(org, admin))

	for _, try := range []struct {
		name string
		call func() error
	}{
		{"demote", func() error { _, err := oc.SetMemberRole(ctx, "own", owner.ID, "admin"); return err }},
		{"remove", func() error { return oc.RemoveMember(ctx, "own", owner.ID) }},
	} {
		err := try.call()
		apiErr, ok := err.(*platformapi.APIError)
		if !ok || apiErr.Status != http.StatusConflict || apiErr.Code != "last_owner" || !strings.Contains(apiErr.Message, "last owner") {
			t.Fatalf("%s the last owner: %v", try.name, err)
		}
	}
	// An admin cannot touch an owner, nor make anyone owner.
	if _, err := ac.SetMemberRole(ctx, "own", owner.ID, "viewer"); !isStatus(err, http.StatusForbidden) {
		t.Fatalf("admin demoting the owner: %v", err)
	}
	if _, err := ac.SetMemberRole(ctx, "own", admin.ID, "owner"); !isStatus(err, http.StatusForbidden) {
		t.Fatalf("admin promoting self to owner: %v", err)
	}
	// With a second owner, the first can step down and then be removed.
	if _, err := oc.SetMemberRole(ctx, "own", admin.ID, "owner"); err != nil {
		t.Fatal(err)
	}
	if _, err := oc.SetMemberRole(ctx, "own", owner.ID, "member"); err != nil {
		t.Fatal(err)
	}
	if err := ac.RemoveMember(ctx, "own", owner.ID); err != nil {
		t.Fatal(err)
	}
	members, err := ac.Members(ctx, "own")
	if err != nil || len(members) != 1 || members[0].UserID != admin.ID || members[0].Role != "owner" {
		t.Fatalf("members: %+v %v", members, err)
	}
	// The removed member's token stopped working.
	if _, err := oc.Members(ctx, "own"); !isStatus(err, http.StatusUnauthorized) {
		t.Fatalf("removed member's token: %v", err)
	}
}

func TestMemberValidation(t *testing.T) {
	env := platformtest.New(t)
	owner := env.User("owner@example.com")
	org := env.Org("mem", owner)
	other := env.Member(org, "zed@example.com", rbac.Viewer)
	tok := env.Token(org, owner)
	cases := []struct {
		method, path, body string
		status             int
		field              string
	}{
		{"PATCH", "/api/v1/orgs/mem/members/" + other.ID, `{"role":""}`, 400, "role"},
		{"PATCH", "/api/v1/orgs/mem/members/usr_nobody", `{"role":"admin"}`, 404, ""},
		{"POST", "/api/v1/orgs/mem/invitations", `{"email":"not an address","role":"viewer"}`, 400, "email"},
	}
	for _, tc := range cases {
		r := env.Do(tc.method, tc.path, tok, tc.body)
		if r.Status != tc.status || r.Error().Field != tc.field || r.Error().Message == "" {
			t.Errorf("%s %s %s: %d %s, want %d naming %q", tc.method, tc.path, tc.body, r.Status, r.Body, tc.status, tc.field)
		}
	}
}

// TestMemberEnumerationRefused is the attack: the owner of organization A
// feeds user IDs of organization B's members (and made-up ones) to every
// members route of A, with an API token and signed in. Adding by user id
// used to answer 201 with the user's email and name; now nothing joins A
// and no answer carries B's emails or names.
func TestMemberEnumerationRefused(t *testing.T) {
	env := platformtest.New(t, platformtest.WithAuthenticator(fakeSession))
	ctx := t.Context()
	ownerA := env.User("ann@a.example")
	a := env.Org("org-a", ownerA)
	b := env.Org("org-b", env.User("bob@b.example"))
	victim := env.Member(b, "secret-person@b.example", rbac.Member)
	tokA := env.Token(a, ownerA)
	as := []struct {
		name          string
		header, value string
	}{
		{"token", "Authorization", "Bearer " + tokA},
		{"session", testUserHeader, ownerA.ID},
	}
	for _, who := range as {
		t.Run(who.name, func(t *testing.T) {
			for _, id := range []string{victim.ID, "usr_doesnotexist"} {
				for _, call := range []struct{ method, path, body string }{
					{http.MethodPost, "/api/v1/orgs/org-a/members", `{"user_id":"` + id + `","role":"viewer"}`},
					{http.MethodPost, "/api/v1/orgs/org-a/members", `{"user_id":"` + id + `","role":"owner"}`},
					{http.MethodPatch, "/api/v1/orgs/org-a/members/" + id, `{"role":"viewer"}`},
					{http.MethodDelete, "/api/v1/orgs/org-a/members/" + id, ""},
					{http.MethodGet, "/api/v1/orgs/org-a/members", ""},
				} {
					var body any
					if call.body != "" {
						body = call.body
					}
					r := env.DoWithHeader(call.method, call.path, who.header, who.value, body)
					if strings.Contains(string(r.Body), "secret-person") || strings.Contains(string(r.Body), "b.example") {
						t.Errorf("%s %s as %s: %d %s: the answer carries B's member", call.method, call.path, who.name, r.Status, r.Body)
					}
					if call.method == http.MethodPost && (r.Status != http.StatusGone || !strings.Contains(r.Error().Message, "invite people by email")) {
						t.Errorf("add by user id: %d %s, want 410 pointing to invitations", r.Status, r.Body)
					}
					if call.method != http.MethodGet && call.method != http.MethodPost && r.Status != http.StatusNotFound {
						t.Errorf("%s %s: %d %s, want 404 (not a member of A)", call.method, call.path, r.Status, r.Body)
					}
				}
			}
		})
	}
	if _, err := env.Store.MembershipOf(ctx, a.ID, victim.ID); err == nil {
		t.Fatal("B's member was added to A without an invitation")
	}
}

func TestInvitationAcceptedByInvitedEmailOnly(t *testing.T) {
	env := platformtest.New(t, platformtest.WithAuthenticator(fakeSession))
	ctx := t.Context()
	owner := env.User("owner@example.com")
	org := env.Org("inv", owner)
	c := env.Client(env.Token(org, owner))

	inv, err := c.Invite(ctx, "inv", platformapi.CreateInvitationRequest{Email: "Newcomer@Example.com", Role: "member"})
	if err != nil || inv.Token == "" {
		t.Fatalf("invite: %+v %v", inv, err)
	}
	listed, err := c.Invitations(ctx, "inv")
	if err != nil || len(listed) != 1 || listed[0].Token != "" {
		t.Fatalf("invitations list must not carry the secret: %+v %v", listed, err)
	}
	if rows := env.QueryStrings("SELECT i::text FROM invitations i"); strings.Contains(rows[0], inv.Token) {
		t.Fatal("invitation secret stored in plaintext")
	}
	accept := "/api/v1/invitations/" + inv.Token + "/accept"

	intruder := env.User("intruder@example.com")
	r := env.DoWithHeader("POST", accept, testUserHeader, intruder.ID, nil)
	if r.Status != http.StatusForbidden || !strings.Contains(r.Error().Message, "another email") {
		t.Fatalf("accept by another address: %d %s", r.Status, r.Body)
	}
	if _, err := env.Store.MembershipOf(ctx, org.ID, intruder.ID); err == nil {
		t.Fatal("intruder became a member")
	}
	if r := env.DoWithHeader("POST", "/api/v1/invitations/thinv_wrong/accept", testUserHeader, intruder.ID, nil); r.Status != http.StatusNotFound {
		t.Fatalf("unknown invitation: %d %s", r.Status, r.Body)
	}

	newcomer := env.User("newcomer@example.com") // same address, other case
	r = env.DoWithHeader("POST", accept, testUserHeader, newcomer.ID, nil)
	if r.Status != http.StatusOK || !strings.Contains(string(r.Body), `"slug":"inv"`) {
		t.Fatalf("accept by the invited address: %d %s", r.Status, r.Body)
	}
	m, err := env.Store.MembershipOf(ctx, org.ID, newcomer.ID)
	if err != nil || m.Role != rbac.Member {
		t.Fatalf("membership after accept: %+v %v", m, err)
	}
	if r := env.DoWithHeader("POST", accept, testUserHeader, newcomer.ID, nil); r.Status != http.StatusConflict {
		t.Fatalf("second accept: %d %s", r.Status, r.Body)
	}
	if listed, _ := c.Invitations(ctx, "inv"); len(listed) != 0 {
		t.Fatalf("accepted invitation still open: %+v", listed)
	}

	// Withdrawn invitations cannot be accepted.
	inv2, err := c.Invite(ctx, "inv", platformapi.CreateInvitationRequest{Email: "late@example.com", Role: "viewer"})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteInvitation(ctx, "inv", inv2.ID); err != nil {
		t.Fatal(err)
	}
	late := env.User("late@example.com")
	if r := env.DoWithHeader("POST", "/api/v1/invitations/"+inv2.Token+"/accept", testUserHeader, late.ID, nil); r.Status != http.StatusNotFound {
		t.Fatalf("accept withdrawn: %d %s", r.Status, r.Body)
	}
	// A member manager cannot invite above their own role.
	admin := env.Member(org, "adm@example.com", rbac.Admin)
	if _, err := env.Client(env.Token(org, admin)).Invite(ctx, "inv", platformapi.CreateInvitationRequest{Email: "boss@example.com", Role: "owner"}); !isStatus(err, http.StatusForbidden) {
		t.Fatalf("admin inviting an owner: %v", err)
	}
}
