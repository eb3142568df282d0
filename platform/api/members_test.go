package api_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/thinlab/thinlab/platform/platformtest"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/sdk/platformapi"
)

func TestLastOwnerCannotBeRemovedOrDemoted(t *testing.T) {
	env := platformtest.New(t)
	ctx := context.Background()
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
	if _, err := ac.SetMemberRole(ctx, "own", owner.ID, "viewer"); !isStatus(err, 403) {
		t.Fatalf("admin demoting the owner: %v", err)
	}
	if _, err := ac.SetMemberRole(ctx, "own", admin.ID, "owner"); !isStatus(err, 403) {
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
	if _, err := oc.Members(ctx, "own"); !isStatus(err, 401) {
		t.Fatalf("removed member's token: %v", err)
	}
}

func TestMemberAddAndValidation(t *testing.T) {
	env := platformtest.New(t)
	ctx := context.Background()
	owner := env.User("owner@example.com")
	org := env.Org("mem", owner)
	other := env.User("zed@example.com")
	tok := env.Token(org, owner)
	c := env.Client(tok)

	m, err := c.AddMember(ctx, "mem", platformapi.AddMemberRequest{UserID: other.ID, Role: "viewer"})
	if err != nil || m.Role != "viewer" || m.Email != "zed@example.com" {
		t.Fatalf("add: %+v %v", m, err)
	}
	cases := []struct {
		method, path, body string
		status             int
		field              string
	}{
		{"POST", "/api/v1/orgs/mem/members", `{"user_id":"` + other.ID + `","role":"viewer"}`, 409, "user_id"},
		{"POST", "/api/v1/orgs/mem/members", `{"user_id":"usr_nobody","role":"viewer"}`, 400, "user_id"},
		{"POST", "/api/v1/orgs/mem/members", `{"user_id":"` + other.ID + `","role":"god"}`, 400, "role"},
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

func TestInvitationAcceptedByInvitedEmailOnly(t *testing.T) {
	env := platformtest.New(t, platformtest.WithSetup(fakeSession))
	ctx := context.Background()
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
	if r.Status != 403 || !strings.Contains(r.Error().Message, "another email") {
		t.Fatalf("accept by another address: %d %s", r.Status, r.Body)
	}
	if _, err := env.Store.MembershipOf(ctx, org.ID, intruder.ID); err == nil {
		t.Fatal("intruder became a member")
	}
	if r := env.DoWithHeader("POST", "/api/v1/invitations/thinv_wrong/accept", testUserHeader, intruder.ID, nil); r.Status != 404 {
		t.Fatalf("unknown invitation: %d %s", r.Status, r.Body)
	}

	newcomer := env.User("newcomer@example.com") // same address, other case
	r = env.DoWithHeader("POST", accept, testUserHeader, newcomer.ID, nil)
	if r.Status != 200 || !strings.Contains(string(r.Body), `"slug":"inv"`) {
		t.Fatalf("accept by the invited address: %d %s", r.Status, r.Body)
	}
	m, err := env.Store.MembershipOf(ctx, org.ID, newcomer.ID)
	if err != nil || m.Role != rbac.Member {
		t.Fatalf("membership after accept: %+v %v", m, err)
	}
	if r := env.DoWithHeader("POST", accept, testUserHeader, newcomer.ID, nil); r.Status != 409 {
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
	if r := env.DoWithHeader("POST", "/api/v1/invitations/"+inv2.Token+"/accept", testUserHeader, late.ID, nil); r.Status != 404 {
		t.Fatalf("accept withdrawn: %d %s", r.Status, r.Body)
	}
	// A member manager cannot invite above their own role.
	admin := env.Member(org, "adm@example.com", rbac.Admin)
	if _, err := env.Client(env.Token(org, admin)).Invite(ctx, "inv", platformapi.CreateInvitationRequest{Email: "boss@example.com", Role: "owner"}); !isStatus(err, 403) {
		t.Fatalf("admin inviting an owner: %v", err)
	}
}
