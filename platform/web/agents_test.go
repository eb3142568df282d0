package web_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/platform/auth"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/platform/web/webtest"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

// A member sees the organization's agents but no rename, revoke or
// enrollment forms, and posting them anyway is refused (403) with the
// agent left as it was.
func TestAgentsPageForMembersIsReadOnly(t *testing.T) {
	s := startSite(t, "ada@example.com", "bea@example.com")
	ctx := t.Context()
	_, home := s.signIn(t, "ada@example.com")
	org, err := s.p.Store.OrganizationByRef(ctx, strings.TrimPrefix(home.URL.Path, "/o/"))
	if err != nil {
		t.Fatal(err)
	}
	bea, _ := s.signIn(t, "bea@example.com")
	if err := s.p.Store.AddMember(ctx, org.ID, s.userID(t, "bea@example.com"), rbac.Member); err != nil {
		t.Fatal(err)
	}
	_, secret, err := s.p.Store.CreateEnrollmentToken(ctx, org.ID, s.userID(t, "ada@example.com"), "", time.Now().Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	ag, _, _, err := s.p.Store.Enroll(ctx, secret, tunnel.AgentFacts{Name: "shared-db"})
	if err != nil {
		t.Fatal(err)
	}
	pg := bea.Get(s.p.URL + "/o/" + org.Slug + "/agents")
	if pg.Status != http.StatusOK {
		t.Fatalf("agents page for a member: HTTP %d", pg.Status)
	}
	pg.Contains(t, `data-agent="`+ag.ID+`"`, "shared-db", "never connected")
	for _, hidden := range []string{"agent-revoke", "/rename", "enrollment-form", "Enrollment tokens"} {
		if strings.Contains(pg.Body, hidden) {
			t.Errorf("a member's agents page shows %q", hidden)
		}
	}
	csrf := webtest.CSRF(t, pg.Body)
	for _, path := range []string{"/agents/" + ag.ID + "/revoke", "/agents/" + ag.ID + "/rename", "/enrollment-tokens"} {
		r := bea.PostForm(s.p.URL+"/o/"+org.Slug+path, url.Values{auth.CSRFField: {csrf}, "name": {"mine"}})
		if r.Status != http.StatusForbidden {
			t.Errorf("member posts %s: HTTP %d, want 403", path, r.Status)
		}
	}
	got, err := s.p.Store.AgentByID(ctx, org.ID, ag.ID)
	if err != nil || got.RevokedAt != nil || got.Name != "shared-db" {
		t.Fatalf("agent after the member's attempts: %+v %v", got, err)
	}
}
