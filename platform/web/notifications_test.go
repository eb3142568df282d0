package web_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/thinlab/thinlab/platform/notify"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/platform/web/webtest"
)

// TestNotificationPages: without JavaScript, a member sees the unread
// count in the navigation on every page, the inbox with a folded event's
// count, marks it read (the count goes), and saves a preference that the
// next event obeys; an admin adds a webhook channel (its secret shown
// once) and sees dead letters, a member may not open that page.
func TestNotificationPages(t *testing.T) {
	s := startSite(t, "ada@example.com", "max@example.com")
	b, home := s.signIn(t, "ada@example.com")
	slug := strings.TrimPrefix(home.URL.Path, "/o/")
	o := s.p.URL + "/o/" + slug
	ctx := t.Context()
	org, err := s.p.Store.OrganizationByRef(ctx, slug)
	if err != nil {
		t.Fatal(err)
	}
	n := s.p.Server.Notifier()
	for _, src := range []string{"a", "b"} { // one event, folded
		if _, err := n.Record(ctx, s.p.Store, notify.Event{OrgID: org.ID, Name: notify.LagHigh, Target: "pool-1", Message: "lag 20 min", SourceKey: src}); err != nil {
			t.Fatal(err)
		}
	}
	pg := b.Get(o + "/members")
	pg.Contains(t, `id="unread-count"`, `aria-label="1 unread"`)
	pg = b.Get(o + "/notifications")
	pg.Contains(t, `id="inbox"`, "Replication lag too high", "pool-1", "lag 20 min", "×2", `id="read-all"`, "1 unread")
	if strings.Contains(pg.Body, "<script") {
		t.Error("the inbox has a <script>")
	}
	csrf := webtest.CSRF(t, pg.Body)
	pg = b.PostForm(o+"/notifications/inbox/read-all", url.Values{"csrf_token": {csrf}})
	if pg.Status != http.StatusOK || strings.Contains(pg.Body, `id="unread-count"`) {
		t.Fatalf("after read-all: HTTP %d, unread count still shown: %v", pg.Status, strings.Contains(pg.Body, `id="unread-count"`))
	}

	// Turn the inbox off for that event: the next one stays out of it.
	pg = b.Get(o + "/notifications/preferences")
	pg.Contains(t, `id="prefs-mine"`, `id="prefs-org"`, `name="pref.replication.lag_high.inbox"`, `name="pref.*.slack"`)
	pg = b.PostForm(o+"/notifications/preferences", url.Values{"csrf_token": {webtest.CSRF(t, pg.Body)}, "pref.replication.lag_high.inbox": {"off"}})
	if pg.Status != http.StatusOK || !strings.Contains(pg.Body, "Preferences saved.") {
		t.Fatalf("save preferences: HTTP %d\n%s", pg.Status, pg.Body)
	}
	if _, err := n.Record(ctx, s.p.Store, notify.Event{OrgID: org.ID, Name: notify.LagHigh, Target: "pool-2", SourceKey: "c"}); err != nil {
		t.Fatal(err)
	}
	if u, _ := s.p.Store.UnreadCount(ctx, org.ID, s.userID(t, "ada@example.com")); u != 0 {
		t.Errorf("unread after turning the event's inbox off: %d, want 0", u)
	}

	// Channels: a webhook's secret is shown once; a refused address is
	// an error naming the URL.
	pg = b.Get(o + "/notifications/channels")
	pg.Contains(t, `id="channel-form"`, `id="dead-letters"`)
	csrf = webtest.CSRF(t, pg.Body)
	pg = b.PostForm(o+"/notifications/channels", url.Values{"csrf_token": {csrf}, "kind": {"webhook"}, "name": {"meta"}, "url": {"http://169.254.169.254/"}})
	if pg.Status != http.StatusBadRequest || !strings.Contains(pg.Body, "refused for notifications") {
		t.Errorf("a metadata address: HTTP %d, want 400 with the reason", pg.Status)
	}
	pg = b.PostForm(o+"/notifications/channels", url.Values{"csrf_token": {csrf}, "kind": {"webhook"}, "name": {"ops"}, "url": {"https://hooks.example.com/in"}})
	pg.Contains(t, `id="channel-secret"`, "whsec_", "Thinlab-Signature")
	chs, err := s.p.Store.ListNotificationChannels(ctx, org.ID)
	if err != nil || len(chs) != 1 || !strings.Contains(pg.Body, chs[0].Secret) {
		t.Fatalf("channels %+v %v, want the one whose secret the page showed", chs, err)
	}
	if strings.Contains(b.Get(o+"/notifications/channels").Body, chs[0].Secret) {
		t.Error("the channel's secret is shown again")
	}

	// A member has the inbox but not the channels page.
	if err := s.p.Store.AddMember(ctx, org.ID, mustUser(t, s, "max@example.com"), rbac.Member); err != nil {
		t.Fatal(err)
	}
	mb, _ := s.signIn(t, "max@example.com")
	if pg := mb.Get(o + "/notifications"); pg.Status != http.StatusOK {
		t.Errorf("a member's inbox: HTTP %d", pg.Status)
	}
	if pg := mb.Get(o + "/notifications/channels"); pg.Status != http.StatusForbidden {
		t.Errorf("a member on the channels page: HTTP %d, want 403", pg.Status)
	}
}

// mustUser signs email in once (creating the user) and returns its ID.
func mustUser(t *testing.T, s *site, email string) string {
	t.Helper()
	s.signIn(t, email)
	return s.userID(t, email)
}
