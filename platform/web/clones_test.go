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

// A viewer sees the Clones page without the create form, and posting the
// clone forms anyway is refused (403) before any agent is asked; an agent
// that is not connected is said so on the page, and its clone pages
// answer 503 naming it.
func TestClonesPageForViewersIsReadOnly(t *testing.T) {
	s := startSite(t, "ada@example.com", "vic@example.com")
	ctx := t.Context()
	ada, home := s.signIn(t, "ada@example.com")
	org, err := s.p.Store.OrganizationByRef(ctx, strings.TrimPrefix(home.URL.Path, "/o/"))
	if err != nil {
		t.Fatal(err)
	}
	vic, _ := s.signIn(t, "vic@example.com")
	if err := s.p.Store.AddMember(ctx, org.ID, s.userID(t, "vic@example.com"), rbac.Viewer); err != nil {
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
	base := s.p.URL + "/o/" + org.Slug
	pg := vic.Get(base + "/clones")
	if pg.Status != http.StatusOK {
		t.Fatalf("clones page for a viewer: HTTP %d", pg.Status)
	}
	pg.Contains(t, `id="clones"`, "shared-db", "is not connected to the platform")
	if strings.Contains(pg.Body, "clone-form") {
		t.Error("a viewer's clones page shows the create form")
	}
	csrf := webtest.CSRF(t, pg.Body)
	for _, path := range []string{"/clones", "/agents/" + ag.ID + "/clones/c1/destroy", "/agents/" + ag.ID + "/clones/c1/reset", "/agents/" + ag.ID + "/clones/c1/protect"} {
		r := vic.PostForm(base+path, url.Values{auth.CSRFField: {csrf}, "agent": {ag.ID}, "username": {"u"}, "password": {"p"}})
		if r.Status != http.StatusForbidden {
			t.Errorf("viewer posts %s: HTTP %d, want 403", path, r.Status)
		}
	}
	// The owner: the form is there; the agent is not connected.
	pg = ada.Get(base + "/clones")
	pg.Contains(t, `id="clone-form"`)
	r := ada.Get(base + "/agents/" + ag.ID + "/clones/c1")
	if r.Status != http.StatusServiceUnavailable || !strings.Contains(r.Body, "shared-db") {
		t.Errorf("clone page of an unconnected agent: HTTP %d, want 503 naming the agent", r.Status)
	}
	if n := s.p.Count(`SELECT count(*) FROM audit_events WHERE action LIKE 'clone.%' AND result = 'error'`); n != 4 {
		t.Errorf("%d refused clone actions audited, want 4", n)
	}
}
