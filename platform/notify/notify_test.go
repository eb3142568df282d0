package notify_test

import (
	"encoding/json"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/internal/mailpittest"
	"github.com/thinlab/thinlab/platform/notify"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/platformapi"
)

// TestEmailThroughRealSMTP: a warning event reaches every member by email
// through a real SMTP server that requires STARTTLS and AUTH (Mailpit),
// once per member, with the message's idempotency key as its Message-ID
// and a link to the inbox; the inbox has it with the unread count.
func TestEmailThroughRealSMTP(t *testing.T) {
	mp := mailpittest.Start(t)
	env := platform(t, testConfig(mp))
	owner := env.User("owner@acme.example")
	org := env.Org("acme", owner)
	ann := env.Member(org, "ann@acme.example", rbac.Viewer)
	rec := record(t, env, notify.Event{OrgID: org.ID, Name: notify.RefreshSkipped, Target: "pool-a", Message: "all pools are busy", SourceKey: "t1"})
	if !rec.New || rec.Deliveries != 4 { // two inboxes, two emails
		t.Fatalf("recorded %+v, want a new event with 4 deliveries", rec)
	}
	mp.WaitFor(2)
	for _, u := range []*store.User{owner, ann} {
		ms := mailTo(mp, u.Email)
		if len(ms) != 1 {
			t.Fatalf("%d emails to %s, want 1", len(ms), u.Email)
		}
		m := ms[0]
		if !strings.Contains(m.Subject, "Refresh impossible") || !strings.Contains(m.Subject, "pool-a") || m.From.Address != "thinlab@platform.example" {
			t.Errorf("email %+v: want the event's description and target in the subject, from the configured sender", m)
		}
		if !strings.HasPrefix(m.MessageID, org.ID+"-") {
			t.Errorf("Message-ID %q, want the message's idempotency key", m.MessageID)
		}
		if text := mp.Text(m.ID); !strings.Contains(text, env.URL+"/o/acme/notifications") || !strings.Contains(text, "all pools are busy") {
			t.Errorf("email text lacks the inbox link or the message:\n%s", text)
		}
	}
	counts := outboxDone(t, env)
	if counts[store.OutboxDelivered] != 2 {
		t.Errorf("outbox %v, want 2 delivered", counts)
	}
	tok := env.Token(org, ann)
	var inbox platformapi.Inbox
	r := env.Do(http.MethodGet, "/api/v1/orgs/acme/notifications/inbox", tok, nil)
	if err := json.Unmarshal(r.Body, &inbox); err != nil || inbox.Unread != 1 || len(inbox.Items) != 1 || inbox.Items[0].Event != notify.RefreshSkipped {
		t.Fatalf("ann's inbox: %d %s, want the one unread event", r.Status, r.Body)
	}
	if r := env.Do(http.MethodPost, "/api/v1/orgs/acme/notifications/inbox/read-all", tok, nil); r.Status != http.StatusNoContent {
		t.Fatalf("read all: %d %s", r.Status, r.Body)
	}
	if n, _ := env.Store.UnreadCount(t.Context(), org.ID, ann.ID); n != 0 {
		t.Errorf("unread after read-all: %d", n)
	}
	if n, _ := env.Store.UnreadCount(t.Context(), org.ID, owner.ID); n != 1 {
		t.Errorf("owner's unread after ann read hers: %d, want 1", n)
	}

}

// TestSMTPAuthFailureIsRetried: with a wrong SMTP password the AUTH step
// fails, the error names it, nothing arrives, and the message waits for
// its retry; a worker with the right password then delivers it.
func TestSMTPAuthFailureIsRetried(t *testing.T) {
	mp := mailpittest.Start(t)
	cfg := testConfig(mp)
	cfg.PollInterval = time.Hour // the test's workers deliver, not the platform's
	env := platform(t, cfg)
	owner := env.User("owner@acme.example")
	org := env.Org("acme", owner)
	bad := cfg
	bad.SMTP.Password = "wrong"
	bad.RetryBase, bad.RetryMax = time.Hour, time.Hour
	worker := func(c notify.Config) *notify.Worker {
		w, err := notify.NewWorker(env.Store, notify.New(c, nil), env.URL, nil)
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	if _, err := env.Server.Notifier().Record(t.Context(), env.Store, notify.Event{OrgID: org.ID, Name: notify.LagHigh, Target: "pool-b", SourceKey: "t2"}); err != nil {
		t.Fatal(err)
	}
	if n, err := worker(bad).DeliverDue(t.Context()); err != nil || n != 1 {
		t.Fatalf("delivered %d %v, want one attempt", n, err)
	}
	errs := env.QueryStrings(`SELECT last_error FROM notification_outbox WHERE attempts = 1 AND state = 'pending' AND channel = 'email'`)
	if len(errs) != 1 || !strings.Contains(errs[0], "AUTH") {
		t.Fatalf("after a wrong password: %q, want a pending email whose error names AUTH", errs)
	}
	if n := len(mp.Messages()); n != 0 {
		t.Fatalf("%d messages arrived with a wrong password", n)
	}
	if err := env.Exec(`UPDATE notification_outbox SET next_attempt_at = now()`); err != nil {
		t.Fatal(err)
	}
	if n, err := worker(cfg).DeliverDue(t.Context()); err != nil || n != 1 {
		t.Fatalf("retry delivered %d %v, want 1", n, err)
	}
	if ms := mp.WaitFor(1); len(mailTo(mp, owner.Email)) != 1 {
		t.Fatalf("after the retry: %+v, want the owner's email", ms)
	}
}

// TestInvitationIsMailed: an invitation made through the API is emailed
// to the invited address with a link that works; the link (it holds the
// secret) is gone from the outbox once the mail is delivered.
func TestInvitationIsMailed(t *testing.T) {
	mp := mailpittest.Start(t)
	env := platform(t, testConfig(mp))
	owner := env.User("owner@acme.example")
	org := env.Org("acme", owner)
	r := env.Do(http.MethodPost, "/api/v1/orgs/acme/invitations", env.Token(org, owner), platformapi.CreateInvitationRequest{Email: "new@acme.example", Role: "member"})
	var inv platformapi.Invitation
	if r.Status != http.StatusCreated || json.Unmarshal(r.Body, &inv) != nil {
		t.Fatalf("invite: %d %s", r.Status, r.Body)
	}
	mp.WaitFor(1)
	ms := mailTo(mp, "new@acme.example")
	if len(ms) != 1 || !strings.Contains(ms[0].Subject, "invited to Acme") {
		t.Fatalf("mails to the invitee: %+v, want one invitation", ms)
	}
	text := mp.Text(ms[0].ID)
	link := regexp.MustCompile(`http://\S+/invitations/accept\?secret=\S+`).FindString(text)
	if link == "" || !strings.Contains(text, "owner@acme.example invited you") || !strings.Contains(text, "as member") {
		t.Fatalf("invitation email:\n%s\nwant the inviter, the role and the link", text)
	}
	if !strings.HasSuffix(link, inv.Token) {
		t.Errorf("link %s does not carry the invitation's secret", link)
	}
	// The invitee accepts with the link's secret.
	invitee := env.User("new@acme.example")
	secret := link[strings.Index(link, "secret=")+len("secret="):]
	if _, err := env.Store.AcceptInvitation(t.Context(), secret, invitee); err != nil {
		t.Fatalf("accept with the emailed secret: %v", err)
	}
	outboxDone(t, env)
	if left := env.QueryStrings(`SELECT payload FROM notification_outbox WHERE payload <> ''`); len(left) != 0 {
		t.Errorf("delivered invitation still holds its link in the outbox: %q", left)
	}
	// Not in anybody's inbox: the event is the invitee's email only.
	if n, _ := env.Store.UnreadCount(t.Context(), org.ID, owner.ID); n != 0 {
		t.Errorf("owner has %d unread notifications, want none for an invitation", n)
	}
}

// TestWebhookSignedAndSlack: a webhook delivery carries the event as
// JSON, its idempotency key, and an HMAC-SHA256 signature over
// timestamp and body that verifies with the channel's secret (and fails
// with another secret, a changed body or a stale timestamp); Slack gets
// a text message.
func TestWebhookSignedAndSlack(t *testing.T) {
	env := platform(t, testConfig(nil))
	owner := env.User("owner@acme.example")
	org := env.Org("acme", owner)
	tok := env.Token(org, owner)
	hook, slack := newReceiver(t, nil), newReceiver(t, nil)
	wh := createChannel(t, env, "acme", tok, "webhook", "ops-hook", hook.URL+"/in")
	createChannel(t, env, "acme", tok, "slack", "ops-slack", slack.URL+"/services/T0/B0/secret")
	if !strings.HasPrefix(wh.Secret, "whsec_") {
		t.Fatalf("webhook secret %q, want one shown at creation", wh.Secret)
	}
	r := env.Do(http.MethodGet, "/api/v1/orgs/acme/notifications/channels", tok, nil)
	if strings.Contains(string(r.Body), wh.Secret) || strings.Contains(string(r.Body), "/services/T0/B0/secret") {
		t.Errorf("channel list shows a secret: %s", r.Body)
	}
	record(t, env, notify.Event{OrgID: org.ID, Name: notify.SnapshotCreated, Target: "pool@snap1", Message: "nightly", SourceKey: "w1"})
	waitFor(t, "both receivers to get the event", func() bool { return len(hook.deliveries()) == 1 && len(slack.deliveries()) == 1 })
	d := hook.deliveries()[0]
	if err := notify.Verify([]byte(wh.Secret), d.Header.Get(notify.HeaderSignature), d.Body, time.Now(), 5*time.Minute); err != nil {
		t.Fatalf("signature %q does not verify: %v", d.Header.Get(notify.HeaderSignature), err)
	}
	for what, err := range map[string]error{
		"another secret":    notify.Verify([]byte("whsec_other"), d.Header.Get(notify.HeaderSignature), d.Body, time.Now(), 5*time.Minute),
		"a changed body":    notify.Verify([]byte(wh.Secret), d.Header.Get(notify.HeaderSignature), append(d.Body, ' '), time.Now(), 5*time.Minute),
		"a stale timestamp": notify.Verify([]byte(wh.Secret), d.Header.Get(notify.HeaderSignature), d.Body, time.Now().Add(10*time.Minute), 5*time.Minute),
	} {
		if err == nil {
			t.Errorf("signature verified with %s", what)
		}
	}
	var p notify.WebhookPayload
	if err := json.Unmarshal(d.Body, &p); err != nil || p.Event != notify.SnapshotCreated || p.Target != "pool@snap1" || p.Organization != "acme" || p.Count != 1 || p.ID != d.Header.Get(notify.HeaderIdempotencyKey) || p.ID == "" {
		t.Errorf("webhook payload %s (%v), want the event with its idempotency key", d.Body, err)
	}
	var sl map[string]string
	if err := json.Unmarshal(slack.deliveries()[0].Body, &sl); err != nil || !strings.Contains(sl["text"], "Snapshot created: pool@snap1") {
		t.Errorf("slack message %s, want its text", slack.deliveries()[0].Body)
	}
}

// TestRetriesThenDeadLetter: a receiver that fails is retried with the
// same idempotency key until it answers; one that keeps failing ends as
// a dead letter after MaxAttempts, listed for admins, and an admin's
// retry delivers it.
func TestRetriesThenDeadLetter(t *testing.T) {
	env := platform(t, testConfig(nil))
	owner := env.User("owner@acme.example")
	org := env.Org("acme", owner)
	tok := env.Token(org, owner)
	healthy := false
	flaky := newReceiver(t, func(n int, _ delivery) int {
		if n <= 2 {
			return http.StatusServiceUnavailable
		}
		return 0
	})
	broken := newReceiver(t, func(int, delivery) int {
		if healthy {
			return 0
		}
		return http.StatusInternalServerError
	})
	createChannel(t, env, "acme", tok, "webhook", "flaky", flaky.URL)
	createChannel(t, env, "acme", tok, "webhook", "broken", broken.URL)
	record(t, env, notify.Event{OrgID: org.ID, Name: notify.LagHigh, Target: "pool-a", SourceKey: "r1"})
	outboxDone(t, env)
	fd := flaky.deliveries()
	if len(fd) != 3 || fd[0].Header.Get(notify.HeaderIdempotencyKey) != fd[2].Header.Get(notify.HeaderIdempotencyKey) {
		t.Fatalf("flaky receiver got %d attempts, want 3 with one idempotency key", len(fd))
	}
	if n := len(broken.deliveries()); n != 3 {
		t.Fatalf("broken receiver got %d attempts, want MaxAttempts (3)", n)
	}
	var dead platformapi.List[platformapi.DeadLetter]
	r := env.Do(http.MethodGet, "/api/v1/orgs/acme/notifications/dead-letters", tok, nil)
	if err := json.Unmarshal(r.Body, &dead); err != nil || len(dead.Items) != 1 || dead.Items[0].Recipient != "broken" || !strings.Contains(dead.Items[0].LastError, "HTTP 500") || dead.Items[0].Attempts != 3 {
		t.Fatalf("dead letters: %d %s, want the broken channel's message with its error", r.Status, r.Body)
	}
	// A member sees no dead letters; the admin's retry delivers.
	if r := env.Do(http.MethodGet, "/api/v1/orgs/acme/notifications/dead-letters", env.Token(org, env.Member(org, "m@acme.example", rbac.Member)), nil); r.Status != http.StatusForbidden {
		t.Errorf("a member listing dead letters: %d, want 403", r.Status)
	}
	healthy = true
	if r := env.Do(http.MethodPost, "/api/v1/orgs/acme/notifications/dead-letters/"+itoa(dead.Items[0].ID)+"/retry", tok, nil); r.Status != http.StatusNoContent {
		t.Fatalf("retry: %d %s", r.Status, r.Body)
	}
	outboxDone(t, env)
	if n := len(broken.deliveries()); n != 4 {
		t.Errorf("broken receiver got %d requests after the retry, want 4", n)
	}
	if c, _ := env.Store.OutboxCounts(t.Context(), org.ID); c[store.OutboxDead] != 0 || c[store.OutboxDelivered] != 2 {
		t.Errorf("outbox %v, want both delivered", c)
	}
}

// TestWebhookAddressesRefused: channel URLs that are not http(s), carry
// credentials or name a metadata or loopback address are refused with
// the url field named; a host name that resolves to loopback passes the
// form but every dial to it is refused (checked on the address dialled),
// so the receiver gets nothing and the message is a dead letter at once.
func TestWebhookAddressesRefused(t *testing.T) {
	cfg := testConfig(nil)
	cfg.Webhooks.AllowAddresses = nil
	env := platform(t, cfg)
	owner := env.User("owner@acme.example")
	org := env.Org("acme", owner)
	tok := env.Token(org, owner)
	for _, url := range []string{
		"ftp://hooks.example.com/x", "file:///etc/passwd", "gopher://127.0.0.1/", "http://169.254.169.254/latest/meta-data/",
		"http://[fd00:ec2::254]/", "http://127.0.0.1:9/", "http://[::1]/", "http://user:pw@hooks.example.com/", "http://0.0.0.0/", "//nohost",
	} {
		r := env.Do(http.MethodPost, "/api/v1/orgs/acme/notifications/channels", tok, platformapi.CreateNotificationChannelRequest{Kind: "webhook", Name: "x", URL: url})
		if r.Status != http.StatusBadRequest || r.Error().Field != "url" {
			t.Errorf("channel %s: %d %s, want 400 naming url", url, r.Status, r.Body)
		}
	}
	rcv := newReceiver(t, nil)
	port := rcv.URL[strings.LastIndex(rcv.URL, ":"):]
	createChannel(t, env, "acme", tok, "webhook", "sneaky", "http://localhost"+port+"/hook")
	record(t, env, notify.Event{OrgID: org.ID, Name: notify.LagHigh, Target: "p", SourceKey: "s1"})
	outboxDone(t, env)
	if n := len(rcv.deliveries()); n != 0 {
		t.Fatalf("the loopback receiver got %d requests through a name resolving to it", n)
	}
	dl, err := env.Store.ListDeadLetters(t.Context(), org.ID, 10)
	if err != nil || len(dl) != 1 || dl[0].Message.Attempts != 1 || !strings.Contains(dl[0].Message.LastError, "refused for notifications") {
		t.Fatalf("dead letters %+v %v, want the refused delivery after one attempt", dl, err)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
