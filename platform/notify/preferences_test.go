package notify_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/internal/mailpittest"
	"github.com/thinlab/thinlab/platform/notify"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/platformapi"
)

// TestPreferencesOffAndOverride: the organization turns an event's email
// off and a member turns it back on for themselves (their override
// wins); another member turns their inbox off. Only the member who
// wants it gets the email, only the others get the inbox entry; the
// organization's Slack channel is switched off for the event and gets
// nothing, a webhook still gets it.
func TestPreferencesOffAndOverride(t *testing.T) {
	mp := mailpittest.Start(t)
	env := platform(t, testConfig(mp))
	owner := env.User("owner@acme.example")
	org := env.Org("acme", owner)
	ann := env.Member(org, "ann@acme.example", rbac.Member)
	bob := env.Member(org, "bob@acme.example", rbac.Member)
	ownerTok, annTok, bobTok := env.Token(org, owner), env.Token(org, ann), env.Token(org, bob)
	slack, hook := newReceiver(t, nil), newReceiver(t, nil)
	createChannel(t, env, "acme", ownerTok, "slack", "s", slack.URL+"/services/x")
	createChannel(t, env, "acme", ownerTok, "webhook", "w", hook.URL)
	put := func(path, tok string, ps ...platformapi.NotificationPreference) {
		t.Helper()
		r := env.Do(http.MethodPut, "/api/v1/orgs/acme/notifications/"+path, tok, platformapi.SetNotificationPreferencesRequest{Preferences: ps})
		if r.Status != http.StatusOK {
			t.Fatalf("PUT %s: %d %s", path, r.Status, r.Body)
		}
	}
	put("org-preferences", ownerTok,
		platformapi.NotificationPreference{Event: notify.LagHigh, Channel: "email", Enabled: new(false)},
		platformapi.NotificationPreference{Event: notify.LagHigh, Channel: "slack", Enabled: new(false)})
	put("preferences", annTok, platformapi.NotificationPreference{Event: notify.LagHigh, Channel: "email", Enabled: new(true)})
	put("preferences", bobTok, platformapi.NotificationPreference{Event: "*", Channel: "inbox", Enabled: new(false)})
	// A member may not set the organization's defaults nor its channels.
	if r := env.Do(http.MethodPut, "/api/v1/orgs/acme/notifications/org-preferences", annTok, platformapi.SetNotificationPreferencesRequest{}); r.Status != http.StatusForbidden {
		t.Errorf("a member setting organization defaults: %d, want 403", r.Status)
	}
	if r := env.Do(http.MethodPut, "/api/v1/orgs/acme/notifications/preferences", annTok, platformapi.SetNotificationPreferencesRequest{Preferences: []platformapi.NotificationPreference{{Event: "*", Channel: "slack", Enabled: new(false)}}}); r.Status != http.StatusBadRequest {
		t.Errorf("a member's own slack setting: %d, want 400 (slack is the organization's)", r.Status)
	}
	if r := env.Do(http.MethodPut, "/api/v1/orgs/acme/notifications/preferences", annTok, platformapi.SetNotificationPreferencesRequest{Preferences: []platformapi.NotificationPreference{{Event: "disk.melted", Channel: "email", Enabled: new(false)}}}); r.Status != http.StatusBadRequest || !strings.Contains(r.Error().Message, "disk.melted") {
		t.Errorf("an unknown event: %d %s, want 400 naming it", r.Status, r.Body)
	}

	record(t, env, notify.Event{OrgID: org.ID, Name: notify.LagHigh, Target: "pool-a", SourceKey: "p1"})
	outboxDone(t, env)
	mp.WaitFor(1)
	if got := mailTo(mp, ann.Email); len(got) != 1 {
		t.Errorf("ann (override on) got %d emails, want 1", len(got))
	}
	for _, u := range []*store.User{owner, bob} {
		if got := mailTo(mp, u.Email); len(got) != 0 {
			t.Errorf("%s (organization default off) got %d emails, want none", u.Email, len(got))
		}
	}
	if all := mp.Messages(); len(all) != 1 {
		t.Errorf("mailpit holds %d messages, want only ann's", len(all))
	}
	for u, want := range map[*store.User]int64{owner: 1, ann: 1, bob: 0} {
		if n, _ := env.Store.UnreadCount(t.Context(), org.ID, u.ID); n != want {
			t.Errorf("%s's inbox: %d unread, want %d", u.Email, n, want)
		}
	}
	if n := len(slack.deliveries()); n != 0 {
		t.Errorf("slack (off for the event) got %d messages", n)
	}
	if n := len(hook.deliveries()); n != 1 {
		t.Errorf("webhook got %d messages, want 1", n)
	}
	// Clearing ann's override (enabled null) makes her inherit "off".
	put("preferences", annTok, platformapi.NotificationPreference{Event: notify.LagHigh, Channel: "email", Enabled: nil})
	record(t, env, notify.Event{OrgID: org.ID, Name: notify.LagHigh, Target: "pool-other", SourceKey: "p2"})
	outboxDone(t, env)
	if got := mailTo(mp, ann.Email); len(got) != 1 {
		t.Errorf("ann after clearing her override got %d emails in all, want still 1", len(got))
	}
}

// TestFoldingAndDigest: repeats of an event for the same target within
// the folding window are one event with a count (one inbox entry, one
// email saying how often), a redelivered source counts once, another
// target is its own event; a member who chose the digest gets low-
// severity events in one periodic email instead of one each.
func TestFoldingAndDigest(t *testing.T) {
	mp := mailpittest.Start(t)
	cfg := testConfig(mp)
	cfg.PollInterval = time.Hour // the test delivers itself, after the repeats
	env := platform(t, cfg)
	owner := env.User("owner@acme.example")
	org := env.Org("acme", owner)
	dan := env.Member(org, "dan@acme.example", rbac.Member)
	n := env.Server.Notifier()
	w, err := notify.NewWorker(env.Store, n, env.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	rec := func(name, target, source string) store.Recorded {
		t.Helper()
		r, err := n.Record(t.Context(), env.Store, notify.Event{OrgID: org.ID, Name: name, Target: target, SourceKey: source})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	first := rec(notify.AgentUnhealthy, "", "h1")
	if r := rec(notify.AgentUnhealthy, "", "h2"); !r.Folded || r.EventID != first.EventID {
		t.Fatalf("second report %+v, want folded into event %d", r, first.EventID)
	}
	rec(notify.AgentUnhealthy, "", "h3")
	if r := rec(notify.AgentUnhealthy, "", "h3"); r.New || r.Folded {
		t.Fatalf("a redelivered source %+v, want no change", r)
	}
	if r := rec(notify.LagHigh, "pool-b", "l1"); !r.New {
		t.Fatalf("another event %+v, want new", r)
	}
	items, err := env.Store.ListInbox(t.Context(), org.ID, owner.ID, false, 10)
	if err != nil || len(items) != 2 {
		t.Fatalf("owner's inbox %+v %v, want 2 entries", items, err)
	}
	for _, it := range items {
		if it.Event.Name == notify.AgentUnhealthy && it.Event.Count != 3 {
			t.Errorf("folded event count %d, want 3", it.Event.Count)
		}
	}
	if _, err := w.DeliverDue(t.Context()); err != nil {
		t.Fatal(err)
	}
	mp.WaitFor(4)
	ms := mailTo(mp, owner.Email)
	if len(ms) != 2 {
		t.Fatalf("owner got %d emails, want 2 (one per event)", len(ms))
	}
	folded := false
	for _, m := range ms {
		folded = folded || strings.Contains(m.Subject, "Agent reports a problem (3 times)")
	}
	if !folded {
		t.Errorf("no email says the problem came 3 times: %+v", ms)
	}

	// Dan takes info events as a digest (and turns their email on).
	if err := env.Store.SetNotificationPreferences(t.Context(), org.ID, dan.ID, []store.PreferenceChange{
		{Event: "*", Channel: store.ChannelDigest, Enabled: new(true)}, {Event: "*", Channel: store.ChannelEmail, Enabled: new(true)},
	}); err != nil {
		t.Fatal(err)
	}
	rec(notify.SnapshotCreated, "pool@s1", "d1")
	rec(notify.SnapshotDeleted, "pool@s0", "d2")
	rec(notify.RetrievalFailed, "pool", "d3") // an error: emailed at once
	if _, err := w.DeliverDue(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := mailTo(mp, dan.Email); len(got) != 3 { // the two warnings earlier, the error now
		t.Fatalf("dan got %d emails before the digest, want 3 (two warnings and the error)", len(got))
	}
	if sent, err := w.DeliverDigestsDue(t.Context()); err != nil || sent != 0 {
		t.Fatalf("digest before its time: %d %v, want nothing due", sent, err)
	}
	if err := env.Exec(`UPDATE notification_outbox SET next_attempt_at = now() - interval '1 second' WHERE channel = 'digest'`); err != nil {
		t.Fatal(err)
	}
	if sent, err := w.DeliverDigestsDue(t.Context()); err != nil || sent != 2 {
		t.Fatalf("digest: %d messages %v, want 2", sent, err)
	}
	got := mailTo(mp, dan.Email)
	var digest *mailpittest.Message
	for i := range got {
		if strings.Contains(got[i].Subject, "digest of 2 events") {
			digest = &got[i]
		}
	}
	if len(got) != 4 || digest == nil {
		t.Fatalf("dan's emails %+v, want the three and one digest of 2 events", got)
	}
	if text := mp.Text(digest.ID); !strings.Contains(text, "Snapshot created: pool@s1") || !strings.Contains(text, "Snapshot deleted: pool@s0") {
		t.Errorf("digest text:\n%s\nwant both snapshots", text)
	}
}

// TestRemovedMemberGetsNothingMore: a member removed from the
// organization after an event was recorded does not get its email; the
// message is a dead letter saying why, the others' are delivered.
func TestRemovedMemberGetsNothingMore(t *testing.T) {
	mp := mailpittest.Start(t)
	cfg := testConfig(mp)
	cfg.PollInterval = time.Hour
	env := platform(t, cfg)
	owner := env.User("owner@acme.example")
	org := env.Org("acme", owner)
	gone := env.Member(org, "gone@acme.example", rbac.Member)
	if _, err := env.Server.Notifier().Record(t.Context(), env.Store, notify.Event{OrgID: org.ID, Name: notify.LagHigh, Target: "p", SourceKey: "rm"}); err != nil {
		t.Fatal(err)
	}
	if err := env.Store.RemoveMember(t.Context(), org.ID, gone.ID); err != nil {
		t.Fatal(err)
	}
	w, err := notify.NewWorker(env.Store, env.Server.Notifier(), env.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.DeliverDue(t.Context()); err != nil {
		t.Fatal(err)
	}
	mp.WaitFor(1)
	if got := mailTo(mp, gone.Email); len(got) != 0 {
		t.Errorf("the removed member got %d emails", len(got))
	}
	dl, err := env.Store.ListDeadLetters(t.Context(), org.ID, 10)
	if err != nil || len(dl) != 1 || dl[0].Recipient != gone.Email || !strings.Contains(dl[0].Message.LastError, "no longer a member") {
		t.Errorf("dead letters %+v %v, want the removed member's email with the reason", dl, err)
	}
}
