package notify

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

// Notifier records events into the outbox. Its methods take the store (or
// a transaction of it, store.InTx) of the change they report, so that an
// event and its messages commit with that change or not at all.
type Notifier struct {
	cfg    Config
	logger *slog.Logger
	// emailOn: an SMTP server is configured (no email rows otherwise).
	emailOn bool
	now     func() time.Time
}

// New returns a Notifier for cfg (defaults filled in).
func New(cfg Config, logger *slog.Logger) *Notifier {
	if logger == nil {
		logger = slog.Default()
	}
	cfg = cfg.Defaults()
	return &Notifier{cfg: cfg, logger: logger, emailOn: cfg.SMTP.Host != "", now: time.Now}
}

// Config returns the configuration with defaults.
func (n *Notifier) Config() Config { return n.cfg }

// Event is one event to record.
type Event struct {
	OrgID   string
	Name    string // from the Catalogue
	AgentID string
	Target  string
	Message string
	// Severity overrides the catalogue's (agent health reports carry theirs).
	Severity string
	// SourceKey identifies the source; recording the same one again is a no-op.
	SourceKey string
	At        time.Time
	// To and Payload: an event with its own recipient (an invitation):
	// the address, and the text only the message carries.
	To      string
	Payload string
}

// Record records e in st (a transaction, usually) with its messages.
func (n *Notifier) Record(ctx context.Context, st *store.Store, e Event) (store.Recorded, error) {
	k, ok := Lookup(e.Name)
	if !ok {
		return store.Recorded{}, fmt.Errorf("notification %q is not in the catalogue", e.Name)
	}
	sev := k.Severity
	if e.Severity != "" {
		sev = e.Severity
	}
	fold := n.cfg.FoldWindow
	if !k.Members {
		fold = 0 // an invitation is its own message, never folded
	}
	return st.RecordNotification(ctx, store.NewNotification{
		OrgID: e.OrgID, Name: e.Name, Severity: sev, AgentID: e.AgentID, Target: e.Target,
		Message: e.Message, SourceKey: e.SourceKey, At: e.At, FoldWindow: fold,
	}, func(ev *store.NotificationEvent, r store.Recipients) []store.Delivery {
		return n.route(k, ev, r, e)
	})
}

// AgentEvents records the notifiable ones of an agent's events (the
// tunnel's batch) in st. Events it records again (a redelivered batch)
// change nothing.
func (n *Notifier) AgentEvents(ctx context.Context, st *store.Store, orgID, agentID string, events []tunnel.Event) error {
	for _, e := range events {
		name, sev, target, ok := fromAgent(e)
		if !ok {
			continue
		}
		if _, err := n.Record(ctx, st, Event{
			OrgID: orgID, Name: name, Severity: sev, AgentID: agentID, Target: target, Message: e.Message,
			SourceKey: "agent:" + agentID + ":" + e.ID, At: e.Time,
		}); err != nil {
			return err
		}
	}
	return nil
}

// prefs resolves preferences: a member's override of the event, their
// override of every event, the organization's default of the event, of
// every event, then the catalogue's default.
type prefs map[[3]string]bool // (user, event, channel)

func (p prefs) enabled(user, event, channel string, def bool) bool {
	keys := [][3]string{{"", event, channel}, {"", "*", channel}}
	if user != "" {
		keys = append([][3]string{{user, event, channel}, {user, "*", channel}}, keys...)
	}
	for _, key := range keys {
		if v, ok := p[key]; ok {
			return v
		}
	}
	return def
}

// route decides the messages of a new event: per member the inbox and
// email (or the digest, for info events of members who chose it), per
// organization channel a Slack or webhook message; an event with its own
// recipient (an invitation) goes to that address only.
func (n *Notifier) route(k Kind, ev *store.NotificationEvent, r store.Recipients, e Event) []store.Delivery {
	p := prefs{}
	for _, x := range r.Preferences {
		p[[3]string{x.UserID, x.Event, x.Channel}] = x.Enabled
	}
	var out []store.Delivery
	if !k.Members {
		if e.To != "" && n.emailOn && p.enabled("", k.Name, store.ChannelEmail, k.Email) {
			out = append(out, store.Delivery{Channel: store.ChannelEmail, Address: e.To, Payload: e.Payload})
		}
		return out
	}
	for _, m := range r.Members {
		if p.enabled(m.UserID, k.Name, store.ChannelInbox, true) {
			out = append(out, store.Delivery{Channel: store.ChannelInbox, UserID: m.UserID})
		}
		if !n.emailOn || !p.enabled(m.UserID, k.Name, store.ChannelEmail, k.Email) {
			continue
		}
		if ev.Severity == Info && p.enabled(m.UserID, k.Name, store.ChannelDigest, false) {
			out = append(out, store.Delivery{Channel: store.ChannelDigest, UserID: m.UserID, NotBefore: n.nextDigest()})
			continue
		}
		out = append(out, store.Delivery{Channel: store.ChannelEmail, UserID: m.UserID})
	}
	for _, ch := range r.Channels {
		if p.enabled("", k.Name, ch.Kind, true) {
			out = append(out, store.Delivery{Channel: ch.Kind, ChannelID: ch.ID})
		}
	}
	return out
}

// nextDigest is the end of the current digest period: every digest
// message of a period goes out together.
func (n *Notifier) nextDigest() time.Time {
	now := n.now().UTC()
	return now.Truncate(n.cfg.DigestInterval).Add(n.cfg.DigestInterval)
}
