package notify

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/thinlab/thinlab/platform/rbac"
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
	// OnCommit is called by Committed: the server wakes its delivery
	// worker, so that a message goes out without waiting for a poll.
	OnCommit func()
}

// Committed tells the notifier that a transaction with recorded events
// committed.
func (n *Notifier) Committed() {
	if n != nil && n.OnCommit != nil {
		n.OnCommit()
	}
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
		if err := trackProtection(ctx, st, orgID, agentID, e); err != nil {
			return err
		}
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

// trackProtection keeps clone_protections up to date from the agent's
// clone events, for the clone.protection_expiring warning.
func trackProtection(ctx context.Context, st *store.Store, orgID, agentID string, e tunnel.Event) error {
	switch e.Kind {
	case "clone.ready", "clone.protected":
		var p struct {
			Protected bool      `json:"protected"`
			Till      time.Time `json:"till"`
		}
		if len(e.Data) > 0 {
			_ = json.Unmarshal(e.Data, &p) // unreadable data reads as unprotected
		}
		if e.Kind == "clone.ready" && !p.Protected {
			return nil // created unprotected: nothing to track
		}
		return st.SetCloneProtection(ctx, orgID, agentID, e.Clone, p.Protected, p.Till)
	case "clone.destroyed":
		return st.SetCloneProtection(ctx, orgID, agentID, e.Clone, false, time.Time{})
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

// Invitation is an invitation to create and mail.
type Invitation struct {
	Org       *store.Organization
	Email     string
	Role      rbac.Role
	InvitedBy string // user ID
	Inviter   string // how the email names who invited (their address)
	// AcceptURL makes the acceptance link from the secret.
	AcceptURL func(secret string) string
}

// Invite creates an invitation and its email in one transaction: the
// invitation exists only with its message in the outbox (when SMTP is
// configured and the organization has not turned invitation emails
// off). mailed says whether an email was queued. The link (it holds the
// secret) stays in the outbox row until the message is delivered.
func (n *Notifier) Invite(ctx context.Context, st *store.Store, in Invitation) (inv *store.Invitation, secret string, mailed bool, err error) {
	if n == nil { // a server without notifications: the link is shown only
		inv, secret, err = st.CreateInvitation(ctx, in.Org.ID, in.Email, in.Role, in.InvitedBy)
		return inv, secret, false, err
	}
	err = st.InTx(ctx, func(tx *store.Store) error {
		var err error
		inv, secret, err = tx.CreateInvitation(ctx, in.Org.ID, in.Email, in.Role, in.InvitedBy)
		if err != nil {
			return err
		}
		body := fmt.Sprintf("%s invited you to join the organization %s on Thinlab as %s.\n\nAccept the invitation (sign in with this address, %s):\n%s\n\nThe link works once and until %s.\nIf you did not expect this email, ignore it.\n",
			in.Inviter, in.Org.Name, in.Role, inv.Email, in.AcceptURL(secret), inv.ExpiresAt.UTC().Format("2006-01-02 15:04 UTC"))
		rec, err := n.Record(ctx, tx, Event{
			OrgID: in.Org.ID, Name: InvitationSent, Target: inv.ID, Message: "invitation as " + string(in.Role),
			SourceKey: "invitation:" + inv.ID, To: inv.Email, Payload: body,
		})
		mailed = rec.Deliveries > 0
		return err
	})
	if err != nil {
		return nil, "", false, err
	}
	n.Committed()
	return inv, secret, mailed, nil
}

// Effective says whether event (or "*") goes to channel for user ("":
// the organization's default) under ps, as routing decides it.
func Effective(ps []store.NotificationPreference, user, event, channel string) bool {
	p := prefs{}
	for _, x := range ps {
		p[[3]string{x.UserID, x.Event, x.Channel}] = x.Enabled
	}
	def := channel != store.ChannelDigest && channel != store.ChannelEmail
	if k, ok := Lookup(event); ok && channel == store.ChannelEmail {
		def = k.Email
	}
	return p.enabled(user, event, channel, def)
}

// EmailOn says whether an SMTP server is configured.
func (n *Notifier) EmailOn() bool { return n != nil && n.emailOn }

// DisconnectedKey is the source key of the agent.disconnected notification
// of the disconnection that began at since (as the database holds it).
func DisconnectedKey(agentID string, since time.Time) string {
	return fmt.Sprintf("agent-disconnected:%s:%d", agentID, since.UnixMicro())
}

// AgentReconnected records agent.reconnected for ag (as it was before this
// connection) in st, if its organization was told that it had gone.
func (n *Notifier) AgentReconnected(ctx context.Context, st *store.Store, ag *store.Agent, at time.Time) error {
	if ag.DisconnectedSince == nil || ag.RevokedAt != nil {
		return nil
	}
	told, err := st.SourceRecorded(ctx, DisconnectedKey(ag.ID, *ag.DisconnectedSince))
	if err != nil || !told {
		return err // a blip nobody heard of stays unheard
	}
	_, err = n.Record(ctx, st, Event{
		OrgID: ag.OrgID, Name: AgentReconnected, AgentID: ag.ID, At: at,
		Message:   "disconnected since " + ag.DisconnectedSince.UTC().Format(time.RFC3339),
		SourceKey: fmt.Sprintf("agent-connected:%s:%d", ag.ID, at.UnixMicro()),
	})
	return err
}
