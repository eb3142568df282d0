package notify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/thinlab/thinlab/platform/store"
)

// Worker delivers the outbox on one replica: cfg.Workers loops that each
// claim one due message at a time (FOR UPDATE SKIP LOCKED, so replicas
// never share one) and a digest loop. A message whose delivery fails is
// retried with exponential backoff and becomes a dead letter after
// cfg.MaxAttempts. The claim's transaction stays open during delivery: a
// replica that dies mid-delivery releases its message to the others.
type Worker struct {
	Store  *store.Store
	Logger *slog.Logger
	// BaseURL is the platform's address, for links in messages.
	BaseURL string

	cfg      Config
	notifier *Notifier
	mailer   *mailer
	guard    *guard
	http     *guardedPoster
	now      func() time.Time
	wake     chan struct{}
}

// guardedPoster posts through the guarded client.
type guardedPoster struct{ client *http.Client }

func (p *guardedPoster) post(ctx context.Context, url string, body []byte, headers map[string]string) error {
	return post(ctx, p.client, url, body, headers)
}

// NewWorker returns the delivery worker of n's configuration.
func NewWorker(st *store.Store, n *Notifier, baseURL string, logger *slog.Logger) (*Worker, error) {
	cfg := n.cfg
	if logger == nil {
		logger = slog.Default()
	}
	allow, err := parsePrefixes(cfg.Webhooks.AllowAddresses)
	if err != nil {
		return nil, err
	}
	w := &Worker{Store: st, Logger: logger, BaseURL: strings.TrimRight(baseURL, "/"), cfg: cfg, notifier: n, guard: &guard{allow: allow}, now: time.Now, wake: make(chan struct{}, 1)}
	w.http = &guardedPoster{client: w.guard.client(cfg.Webhooks.Timeout)}
	if cfg.SMTP.Host != "" {
		if w.mailer, err = newMailer(cfg.SMTP); err != nil {
			return nil, err
		}
	}
	return w, nil
}

// URLGuard checks Slack and webhook URLs as deliveries will.
func (w *Worker) URLGuard() interface{ ValidateURL(string) error } { return w.guard }

// Wake makes an idle loop look for due messages now (after a commit that
// wrote some), instead of at its next poll.
func (w *Worker) Wake() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Run delivers until ctx ends.
func (w *Worker) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for range w.cfg.Workers {
		wg.Go(func() { w.loop(ctx) })
	}
	wg.Go(func() { w.digestLoop(ctx) })
	wg.Wait()
}

func (w *Worker) loop(ctx context.Context) {
	t := time.NewTicker(w.cfg.PollInterval)
	defer t.Stop()
	for ctx.Err() == nil {
		found, err := w.Store.DeliverNext(ctx, w.deliver)
		if err != nil && ctx.Err() == nil {
			w.Logger.Error("notifications: claim a message", "err", err)
		}
		if found && err == nil {
			continue
		}
		select {
		case <-ctx.Done():
		case <-t.C:
		case <-w.wake:
		}
	}
}

func (w *Worker) digestLoop(ctx context.Context) {
	t := time.NewTicker(max(w.cfg.PollInterval, time.Second))
	defer t.Stop()
	for ctx.Err() == nil {
		if _, err := w.CheckProtections(ctx); err != nil && ctx.Err() == nil {
			w.Logger.Error("notifications: check clone protections", "err", err)
		}
		if _, err := w.CheckDisconnections(ctx); err != nil && ctx.Err() == nil {
			w.Logger.Error("notifications: check disconnected agents", "err", err)
		}
		n, err := w.Store.DeliverDigests(ctx, 500, w.deliverDigest)
		if err != nil && ctx.Err() == nil {
			w.Logger.Error("notifications: claim digest messages", "err", err)
		}
		if n > 0 && err == nil {
			continue
		}
		select {
		case <-ctx.Done():
		case <-t.C:
		}
	}
}

// DeliverDue delivers due messages until none is left (tests and
// benchmarks drive a worker step by step with it) and returns how many.
func (w *Worker) DeliverDue(ctx context.Context) (int, error) {
	n := 0
	for {
		found, err := w.Store.DeliverNext(ctx, w.deliver)
		if err != nil || !found {
			return n, err
		}
		n++
	}
}

// CheckProtections records clone.protection_expiring for protections
// ending within cfg.ProtectionWarning (once per protection end, whichever
// replica gets there first) and returns how many.
func (w *Worker) CheckProtections(ctx context.Context) (int, error) {
	n, err := w.Store.ExpiringProtections(ctx, w.cfg.ProtectionWarning, func(tx *store.Store, p store.CloneProtection) error {
		_, err := w.notifier.Record(ctx, tx, Event{
			OrgID: p.OrgID, Name: CloneProtectionExpiring, AgentID: p.AgentID, Target: p.CloneID,
			Message:   "protection ends at " + p.Till.UTC().Format("2006-01-02 15:04 UTC") + "; the clone may then be deleted when idle",
			SourceKey: fmt.Sprintf("protection:%s:%s:%d", p.AgentID, p.CloneID, p.Till.Unix()),
		})
		return err
	})
	if n > 0 && err == nil {
		w.Wake()
	}
	return n, err
}

// CheckDisconnections records agent.disconnected for agents gone longer
// than cfg.DisconnectGrace (once per disconnection, whichever replica
// gets there first: the agents' rows are claimed with SKIP LOCKED and the
// source key is the disconnection's start) and returns how many it
// recorded now.
func (w *Worker) CheckDisconnections(ctx context.Context) (int, error) {
	now := w.now()
	recorded := 0
	err := w.Store.InTx(ctx, func(tx *store.Store) error {
		gone, err := tx.AgentsGone(ctx, now.Add(-w.cfg.DisconnectGrace), now.Add(-7*24*time.Hour))
		if err != nil {
			return err
		}
		for _, ag := range gone {
			rec, err := w.notifier.Record(ctx, tx, Event{
				OrgID: ag.OrgID, Name: AgentDisconnected, AgentID: ag.ID, At: *ag.DisconnectedSince,
				Message:   "the agent's tunnel to the platform closed at " + ag.DisconnectedSince.UTC().Format(time.RFC3339) + " and it has not come back",
				SourceKey: DisconnectedKey(ag.ID, *ag.DisconnectedSince),
			})
			if err != nil {
				return err
			}
			if rec.New || rec.Folded {
				recorded++
			}
		}
		return nil
	})
	if recorded > 0 && err == nil {
		w.Wake()
	}
	return recorded, err
}

// DeliverDigestsDue sends the due digests.
func (w *Worker) DeliverDigestsDue(ctx context.Context) (int, error) {
	return w.Store.DeliverDigests(ctx, 500, w.deliverDigest)
}

// outcome turns a delivery error into the next step: delivered, retry
// after RetryBase * 2^(attempts-1) (at most RetryMax), or dead.
func (w *Worker) outcome(attemptsBefore int, err error) store.Outcome {
	if err == nil {
		return store.Outcome{}
	}
	attempt := attemptsBefore + 1
	if attempt >= w.cfg.MaxAttempts || errors.Is(err, errPermanent) {
		return store.Outcome{Err: err, Dead: true}
	}
	wait := time.Duration(float64(w.cfg.RetryBase) * math.Pow(2, float64(attempt-1)))
	if wait > w.cfg.RetryMax || wait <= 0 {
		wait = w.cfg.RetryMax
	}
	return store.Outcome{Err: err, RetryAt: w.now().Add(wait)}
}

// errPermanent marks failures no retry can fix (a member without an
// address, email switched off).
var errPermanent = errors.New("permanent")

func (w *Worker) deliver(ctx context.Context, e *store.OutboxEntry) store.Outcome {
	err := w.send(ctx, e)
	res := w.outcome(e.Message.Attempts, err)
	if err != nil {
		w.Logger.Warn("notifications: delivery failed", "message", e.Message.ID, "channel", e.Message.Channel,
			"attempt", e.Message.Attempts+1, "dead", res.Dead, "err", err)
	}
	return res
}

func (w *Worker) send(ctx context.Context, e *store.OutboxEntry) error {
	switch e.Message.Channel {
	case store.ChannelEmail:
		if w.mailer == nil {
			return fmt.Errorf("%w: no SMTP server configured (notifications.smtp.host)", errPermanent)
		}
		to := e.Email
		if e.Message.UserID == nil {
			to = e.Message.Address
		} else if !e.StillMember {
			return fmt.Errorf("%w: the recipient is no longer a member of the organization", errPermanent)
		}
		if to == "" {
			return fmt.Errorf("%w: the recipient has no email address", errPermanent)
		}
		subject, body := w.renderEmail(e)
		return w.mailer.send(ctx, mail{To: to, Subject: subject, Body: body, MessageID: e.Message.IdempotencyKey})
	case store.ChannelSlack, store.ChannelWebhook:
		if e.Channel == nil {
			return fmt.Errorf("%w: the channel was deleted", errPermanent)
		}
		body, err := w.renderJSON(e)
		if err != nil {
			return err
		}
		headers := map[string]string{HeaderIdempotencyKey: e.Message.IdempotencyKey, HeaderEvent: e.Event.Name}
		if e.Message.Channel == store.ChannelWebhook {
			headers[HeaderSignature] = Sign([]byte(e.Channel.Secret), w.now(), body)
		}
		return w.http.post(ctx, e.Channel.URL, body, headers)
	}
	return fmt.Errorf("%w: unknown channel %q", errPermanent, e.Message.Channel)
}

func (w *Worker) deliverDigest(ctx context.Context, es []*store.OutboxEntry) store.Outcome {
	first := es[0]
	if w.mailer == nil {
		return w.outcome(first.Message.Attempts, fmt.Errorf("%w: no SMTP server configured (notifications.smtp.host)", errPermanent))
	}
	if first.Email == "" || !first.StillMember {
		return w.outcome(first.Message.Attempts, fmt.Errorf("%w: the recipient has no email address or is no longer a member", errPermanent))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Low-severity events in %s since the last digest:\n\n", first.OrgName)
	for _, e := range es {
		fmt.Fprintf(&b, "- %s %s%s\n", e.Event.LastAt.UTC().Format("2006-01-02 15:04 UTC"), describe(e), countSuffix(e.Event.Count))
	}
	fmt.Fprintf(&b, "\nInbox: %s\nPreferences: %s\n", w.link(first.OrgSlug, "/notifications"), w.link(first.OrgSlug, "/notifications/preferences"))
	subject := fmt.Sprintf("[Thinlab] %s: digest of %d events", first.OrgName, len(es))
	err := w.mailer.send(ctx, mail{To: first.Email, Subject: subject, Body: b.String(), MessageID: "digest-" + first.Message.IdempotencyKey})
	if err != nil {
		w.Logger.Warn("notifications: digest delivery failed", "messages", len(es), "err", err)
	}
	return w.outcome(first.Message.Attempts, err)
}

func (w *Worker) link(slug, path string) string { return w.BaseURL + "/o/" + slug + path }

// describe is one line about an event: what, where, on which agent.
func describe(e *store.OutboxEntry) string {
	k, _ := Lookup(e.Event.Name)
	s := k.Description
	if s == "" {
		s = e.Event.Name
	}
	if e.Event.Target != "" {
		s += ": " + e.Event.Target
	}
	if e.AgentName != "" {
		s += " on agent " + e.AgentName
	}
	return s
}

func countSuffix(n int) string {
	if n > 1 {
		return fmt.Sprintf(" (%d times)", n)
	}
	return ""
}

func (w *Worker) renderEmail(e *store.OutboxEntry) (subject, body string) {
	if e.Event.Name == InvitationSent {
		return fmt.Sprintf("[Thinlab] You are invited to %s", e.OrgName), e.Message.Payload
	}
	subject = fmt.Sprintf("[Thinlab] %s: %s%s", e.OrgName, describe(e), countSuffix(e.Event.Count))
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n\n", describe(e))
	fmt.Fprintf(&b, "Event:        %s (%s)\n", e.Event.Name, e.Event.Severity)
	fmt.Fprintf(&b, "Organization: %s\n", e.OrgName)
	if e.AgentName != "" {
		fmt.Fprintf(&b, "Agent:        %s\n", e.AgentName)
	}
	if e.Event.Count > 1 {
		fmt.Fprintf(&b, "Occurred:     %d times, %s to %s\n", e.Event.Count, e.Event.FirstAt.UTC().Format(time.RFC3339), e.Event.LastAt.UTC().Format(time.RFC3339))
	} else {
		fmt.Fprintf(&b, "Occurred:     %s\n", e.Event.LastAt.UTC().Format(time.RFC3339))
	}
	if e.Event.Message != "" {
		fmt.Fprintf(&b, "\n%s\n", e.Event.Message)
	}
	fmt.Fprintf(&b, "\nInbox: %s\nChange what you receive: %s\n", w.link(e.OrgSlug, "/notifications"), w.link(e.OrgSlug, "/notifications/preferences"))
	return subject, b.String()
}

// WebhookPayload is the JSON body of a webhook delivery
// (docs/notifications.md).
type WebhookPayload struct {
	ID           string    `json:"id"`
	Event        string    `json:"event"`
	Severity     string    `json:"severity"`
	Description  string    `json:"description"`
	Organization string    `json:"organization"`
	AgentID      string    `json:"agent_id,omitempty"`
	AgentName    string    `json:"agent_name,omitempty"`
	Target       string    `json:"target,omitempty"`
	Message      string    `json:"message,omitempty"`
	Count        int       `json:"count"`
	FirstAt      time.Time `json:"first_at"`
	LastAt       time.Time `json:"last_at"`
	URL          string    `json:"url"`
}

func (w *Worker) renderJSON(e *store.OutboxEntry) ([]byte, error) {
	if e.Message.Channel == store.ChannelSlack {
		text := fmt.Sprintf("*%s* %s%s", e.OrgName, describe(e), countSuffix(e.Event.Count))
		if e.Event.Message != "" {
			text += "\n" + e.Event.Message
		}
		text += "\n<" + w.link(e.OrgSlug, "/notifications") + "|Open the inbox>"
		return json.Marshal(map[string]string{"text": text})
	}
	k, _ := Lookup(e.Event.Name)
	return json.Marshal(WebhookPayload{
		ID: e.Message.IdempotencyKey, Event: e.Event.Name, Severity: e.Event.Severity, Description: k.Description,
		Organization: e.OrgSlug, AgentID: e.Event.AgentID, AgentName: e.AgentName, Target: e.Event.Target,
		Message: e.Event.Message, Count: e.Event.Count, FirstAt: e.Event.FirstAt.UTC(), LastAt: e.Event.LastAt.UTC(),
		URL: w.link(e.OrgSlug, "/notifications"),
	})
}
