package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// Notification channels: where a message goes. ChannelDigest is email
// collected into a periodic digest (a preference and an outbox channel).
const (
	ChannelEmail   = "email"
	ChannelInbox   = "inbox"
	ChannelSlack   = "slack"
	ChannelWebhook = "webhook"
	ChannelDigest  = "digest"
)

// Outbox message states.
const (
	OutboxPending   = "pending"
	OutboxDelivered = "delivered"
	OutboxDead      = "dead"
)

// InTx runs fn with a Store bound to one transaction: everything fn does
// through it commits together or not at all.
func (s *Store) InTx(ctx context.Context, fn func(tx *Store) error) error {
	return s.conn(ctx).Transaction(func(tx *gorm.DB) error {
		return fn(&Store{db: tx, now: s.now})
	})
}

// NotificationEvent is one event worth telling people about (the
// catalogue is platform/notify's). Count is how many repeats were folded
// into it between FirstAt and LastAt.
type NotificationEvent struct {
	ID       int64 `gorm:"primaryKey"`
	OrgID    string
	Name     string
	Severity string
	AgentID  string
	Target   string
	Message  string
	Count    int
	FirstAt  time.Time
	LastAt   time.Time
}

// TableName is the table of NotificationEvent.
func (NotificationEvent) TableName() string { return "notification_events" }

// NotificationChannel is one of an organization's Slack or webhook
// endpoints. Secret signs webhook deliveries.
type NotificationChannel struct {
	ID        string `gorm:"primaryKey"`
	OrgID     string
	Kind      string
	Name      string
	URL       string `gorm:"column:url"`
	Secret    string
	CreatedBy *string
	CreatedAt time.Time
}

// TableName is the table of NotificationChannel.
func (NotificationChannel) TableName() string { return "notification_channels" }

// NotificationPreference turns one event (or "*": all) on or off on one
// channel, for the organization (UserID "") or one member.
type NotificationPreference struct {
	OrgID     string `gorm:"primaryKey"`
	UserID    string `gorm:"primaryKey"`
	Event     string `gorm:"primaryKey"`
	Channel   string `gorm:"primaryKey"`
	Enabled   bool
	UpdatedAt time.Time
}

// TableName is the table of NotificationPreference.
func (NotificationPreference) TableName() string { return "notification_preferences" }

// OutboxMessage is one message to deliver on one channel.
type OutboxMessage struct {
	ID             int64 `gorm:"primaryKey"`
	OrgID          string
	EventID        int64
	Channel        string
	UserID         *string
	ChannelID      *string
	Address        string
	IdempotencyKey string
	Payload        string
	State          string
	Attempts       int
	NextAttemptAt  time.Time
	LastError      string
	CreatedAt      time.Time
	DeliveredAt    *time.Time
}

// TableName is the table of OutboxMessage.
func (OutboxMessage) TableName() string { return "notification_outbox" }

// InboxItem is one event in a member's in-app inbox.
type InboxItem struct {
	ID        int64 `gorm:"primaryKey"`
	OrgID     string
	UserID    string
	EventID   int64
	CreatedAt time.Time
	ReadAt    *time.Time
}

// TableName is the table of InboxItem.
func (InboxItem) TableName() string { return "notification_inbox" }

// NewNotification is an event as its producer reports it. SourceKey
// identifies the source (an agent's event ID, a tunnel session, an
// invitation) so that the same source recorded twice changes nothing.
type NewNotification struct {
	OrgID     string
	Name      string
	Severity  string
	AgentID   string
	Target    string
	Message   string
	SourceKey string
	At        time.Time
	// FoldWindow: a repeat of the same name, agent and target whose last
	// occurrence is more recent than this is folded into it (count+1);
	// zero never folds.
	FoldWindow time.Duration
}

// Recipients is what routing a new event needs: the organization's
// members, its preferences and its channels.
type Recipients struct {
	Members     []Member
	Preferences []NotificationPreference
	Channels    []NotificationChannel
}

// Delivery is one message that routing decided on. Inbox deliveries
// become inbox rows, the others outbox rows.
type Delivery struct {
	Channel   string
	UserID    string // members (email, digest, inbox)
	ChannelID string // slack, webhook
	Address   string // email address
	Payload   string
	NotBefore time.Time // digests: when the digest goes out
}

// Recorded says what RecordNotification did.
type Recorded struct {
	EventID int64
	// New: a new event with its deliveries; Folded: a repeat added to an
	// earlier event; neither: the source was recorded before.
	New, Folded bool
	Deliveries  int
}

// RecordNotification records an event and, for a new one, the messages
// route decides on, in one transaction (the outbox): inbox rows and one
// outbox row per (recipient, channel), each with its idempotency key.
// A repeat within the folding window increments the earlier event's
// count and marks its inbox rows unread again; its messages not yet
// delivered go out with the new count.
func (s *Store) RecordNotification(ctx context.Context, n NewNotification, route func(ev *NotificationEvent, r Recipients) []Delivery) (Recorded, error) {
	if n.SourceKey == "" {
		return Recorded{}, errors.New("notification without a source key: events are deduplicated by it")
	}
	at := n.At.UTC()
	if at.IsZero() {
		at = s.now()
	}
	var out Recorded
	err := s.conn(ctx).Transaction(func(tx *gorm.DB) error {
		// The source first: a redelivered source stops here.
		var seen int64
		if err := tx.Raw(`SELECT count(*) FROM notification_sources WHERE source_key = ?`, n.SourceKey).Scan(&seen).Error; err != nil {
			return err
		}
		if seen > 0 {
			return nil
		}
		if n.FoldWindow > 0 {
			var prev NotificationEvent
			err := tx.Clauses(clause.Locking{Strength: "UPDATE"}).
				Where("org_id = ? AND name = ? AND agent_id = ? AND target = ? AND last_at > ?", n.OrgID, n.Name, n.AgentID, n.Target, at.Add(-n.FoldWindow)).
				Order("last_at DESC").Take(&prev).Error
			if err == nil {
				if err := tx.Model(&NotificationEvent{}).Where("id = ?", prev.ID).
					Updates(map[string]any{"count": gorm.Expr("count + 1"), "last_at": gorm.Expr("greatest(last_at, ?)", at), "message": n.Message}).Error; err != nil {
					return err
				}
				if err := tx.Model(&InboxItem{}).Where("event_id = ?", prev.ID).Update("read_at", nil).Error; err != nil {
					return err
				}
				out = Recorded{EventID: prev.ID, Folded: true}
				return tx.Exec(`INSERT INTO notification_sources (source_key, event_id) VALUES (?, ?)`, n.SourceKey, prev.ID).Error
			}
			if !errors.Is(err, gorm.ErrRecordNotFound) {
				return err
			}
		}
		ev := &NotificationEvent{
			OrgID: n.OrgID, Name: n.Name, Severity: n.Severity, AgentID: n.AgentID, Target: n.Target,
			Message: n.Message, Count: 1, FirstAt: at, LastAt: at,
		}
		if err := tx.Create(ev).Error; err != nil {
			return err
		}
		if err := tx.Exec(`INSERT INTO notification_sources (source_key, event_id) VALUES (?, ?)`, n.SourceKey, ev.ID).Error; err != nil {
			return err
		}
		out = Recorded{EventID: ev.ID, New: true}
		var r Recipients
		if err := tx.Table("memberships m").Select("m.user_id, u.email, u.name, m.role, m.created_at").
			Joins("JOIN users u ON u.id = m.user_id").Where("m.org_id = ?", n.OrgID).Order("m.user_id").Scan(&r.Members).Error; err != nil {
			return err
		}
		if err := tx.Where("org_id = ?", n.OrgID).Find(&r.Preferences).Error; err != nil {
			return err
		}
		if err := tx.Where("org_id = ?", n.OrgID).Order("id").Find(&r.Channels).Error; err != nil {
			return err
		}
		ds := route(ev, r)
		var inbox []InboxItem
		var outbox []OutboxMessage
		now := s.now()
		for _, d := range ds {
			if d.Channel == ChannelInbox {
				inbox = append(inbox, InboxItem{OrgID: n.OrgID, UserID: d.UserID, EventID: ev.ID, CreatedAt: now})
				continue
			}
			m := OutboxMessage{
				OrgID: n.OrgID, EventID: ev.ID, Channel: d.Channel, Address: d.Address, Payload: d.Payload,
				State: OutboxPending, NextAttemptAt: now, CreatedAt: now,
				IdempotencyKey: fmt.Sprintf("%s-%d-%s-%s", n.OrgID, ev.ID, d.Channel, d.UserID+d.ChannelID+hashKey(d.Address)),
			}
			if !d.NotBefore.IsZero() {
				m.NextAttemptAt = d.NotBefore.UTC()
			}
			if d.UserID != "" {
				u := d.UserID
				m.UserID = &u
			}
			if d.ChannelID != "" {
				c := d.ChannelID
				m.ChannelID = &c
			}
			outbox = append(outbox, m)
		}
		if len(inbox) > 0 {
			if err := tx.Clauses(clause.OnConflict{DoNothing: true}).Create(&inbox).Error; err != nil {
				return err
			}
		}
		if len(outbox) > 0 {
			if err := tx.Create(&outbox).Error; err != nil {
				return err
			}
		}
		out.Deliveries = len(ds)
		return nil
	})
	if err != nil {
		return Recorded{}, fmt.Errorf("record notification %s: %w", n.Name, err)
	}
	return out, nil
}

// hashKey shortens an address for an idempotency key (addresses are
// only in outbox rows without a user: invitations).
func hashKey(addr string) string {
	if addr == "" {
		return ""
	}
	return fmt.Sprintf("%x", hashSecret(addr)[:8])
}

// OutboxEntry is a claimed message with what rendering it needs.
type OutboxEntry struct {
	Message OutboxMessage
	Event   NotificationEvent
	OrgSlug string
	OrgName string
	// AgentName is the agent's current name ("" for platform events).
	AgentName string
	// Email is the recipient member's address (email, digest).
	Email string
	// StillMember: the recipient member is still in the organization (a
	// member removed meanwhile gets nothing more about it).
	StillMember bool
	// Channel is the Slack or webhook endpoint.
	Channel *NotificationChannel
}

// Outcome is what a delivery attempt decided: delivered, or retry at
// RetryAt, or dead (no more attempts).
type Outcome struct {
	Err     error
	RetryAt time.Time
	Dead    bool
}

// DeliverNext claims the oldest due message that no other worker holds
// (FOR UPDATE SKIP LOCKED) other than digests, calls deliver with it
// while the claim's transaction stays open, and records the outcome in
// that same transaction. A worker that dies mid-delivery ends its
// transaction and releases the message for another. It reports whether
// there was a message.
func (s *Store) DeliverNext(ctx context.Context, deliver func(ctx context.Context, e *OutboxEntry) Outcome) (bool, error) {
	found := false
	err := s.conn(ctx).Transaction(func(tx *gorm.DB) error {
		var m OutboxMessage
		err := tx.Clauses(clause.Locking{Strength: "UPDATE", Options: "SKIP LOCKED"}).
			Where("state = ? AND next_attempt_at <= ? AND channel <> ?", OutboxPending, s.now(), ChannelDigest).
			Order("next_attempt_at, id").Take(&m).Error
		if errors.Is(err, gorm.ErrRecordNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		found = true
		e, err := loadEntry(tx, m)
		if err != nil {
			return err
		}
		res := deliver(ctx, e)
		return recordOutcome(tx, s.now(), []int64{m.ID}, res)
	})
	return found, err
}

// DeliverDigests claims due digest messages (FOR UPDATE SKIP LOCKED, at
// most limit), groups them per member and calls deliver once per member
// with all of theirs, recording each outcome in the same transaction.
func (s *Store) DeliverDigests(ctx context.Context, limit int, deliver func(ctx context.Context, es []*OutboxEntry) Outcome) (int, error) {
	n := 0
	err := s.conn(ctx).Transaction(func(tx *gorm.DB) error {
		var ms []OutboxMessage
		if err := tx.Clauses(clause.Locking{Strength: "UPDATE", Options: "SKIP LOCKED"}).
			Where("state = ? AND next_attempt_at <= ? AND channel = ?", OutboxPending, s.now(), ChannelDigest).
			Order("user_id, id").Limit(limit).Find(&ms).Error; err != nil {
			return err
		}
		n = len(ms)
		groups := map[string][]*OutboxEntry{}
		var order []string
		for _, m := range ms {
			e, err := loadEntry(tx, m)
			if err != nil {
				return err
			}
			key := m.OrgID + "/" + deref(m.UserID)
			if _, ok := groups[key]; !ok {
				order = append(order, key)
			}
			groups[key] = append(groups[key], e)
		}
		for _, key := range order {
			es := groups[key]
			ids := make([]int64, 0, len(es))
			for _, e := range es {
				ids = append(ids, e.Message.ID)
			}
			if err := recordOutcome(tx, s.now(), ids, deliver(ctx, es)); err != nil {
				return err
			}
		}
		return nil
	})
	return n, err
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func loadEntry(tx *gorm.DB, m OutboxMessage) (*OutboxEntry, error) {
	e := &OutboxEntry{Message: m}
	if err := tx.Where("id = ?", m.EventID).Take(&e.Event).Error; err != nil {
		return nil, fmt.Errorf("load event %d of message %d: %w", m.EventID, m.ID, err)
	}
	var org Organization
	if err := tx.Where("id = ?", m.OrgID).Take(&org).Error; err != nil {
		return nil, err
	}
	e.OrgSlug, e.OrgName = org.Slug, org.Name
	if e.Event.AgentID != "" {
		var names []string
		if err := tx.Model(&Agent{}).Where("id = ?", e.Event.AgentID).Pluck("name", &names).Error; err != nil {
			return nil, err
		}
		if len(names) == 1 {
			e.AgentName = names[0]
		}
	}
	if m.UserID != nil {
		var emails []string
		if err := tx.Model(&User{}).Where("id = ?", *m.UserID).Pluck("email", &emails).Error; err != nil {
			return nil, err
		}
		if len(emails) == 1 {
			e.Email = emails[0]
		}
		var n int64
		if err := tx.Model(&Membership{}).Where("org_id = ? AND user_id = ?", m.OrgID, *m.UserID).Count(&n).Error; err != nil {
			return nil, err
		}
		e.StillMember = n > 0
	}
	if m.ChannelID != nil {
		var ch NotificationChannel
		if err := tx.Where("id = ?", *m.ChannelID).Take(&ch).Error; err != nil {
			return nil, err
		}
		e.Channel = &ch
	}
	return e, nil
}

func recordOutcome(tx *gorm.DB, now time.Time, ids []int64, res Outcome) error {
	q := tx.Model(&OutboxMessage{}).Where("id IN ?", ids)
	switch {
	case res.Err == nil:
		// The payload (an invitation's link) is not kept once sent.
		return q.Updates(map[string]any{"state": OutboxDelivered, "delivered_at": now, "attempts": gorm.Expr("attempts + 1"), "last_error": "", "payload": ""}).Error
	case res.Dead:
		return q.Updates(map[string]any{"state": OutboxDead, "attempts": gorm.Expr("attempts + 1"), "last_error": truncate(res.Err.Error(), 1000)}).Error
	default:
		return q.Updates(map[string]any{"attempts": gorm.Expr("attempts + 1"), "next_attempt_at": res.RetryAt.UTC(), "last_error": truncate(res.Err.Error(), 1000)}).Error
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// OutboxCounts counts orgID's messages per state (all organizations when
// orgID is empty).
func (s *Store) OutboxCounts(ctx context.Context, orgID string) (map[string]int64, error) {
	var rows []struct {
		State string
		N     int64
	}
	q := s.conn(ctx).Model(&OutboxMessage{}).Select("state, count(*) AS n").Group("state")
	if orgID != "" {
		q = q.Where("org_id = ?", orgID)
	}
	if err := q.Scan(&rows).Error; err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, r := range rows {
		out[r.State] = r.N
	}
	return out, nil
}

// DeadLetter is a message that ran out of attempts, with its event.
type DeadLetter struct {
	Message OutboxMessage
	Event   NotificationEvent
	// Recipient is the member's email or the channel's name.
	Recipient string
}

// ListDeadLetters lists orgID's dead messages, newest first, at most limit.
func (s *Store) ListDeadLetters(ctx context.Context, orgID string, limit int) ([]DeadLetter, error) {
	var ms []OutboxMessage
	if err := s.conn(ctx).Where("org_id = ? AND state = ?", orgID, OutboxDead).Order("id DESC").Limit(limit).Find(&ms).Error; err != nil {
		return nil, err
	}
	out := make([]DeadLetter, 0, len(ms))
	for _, m := range ms {
		d := DeadLetter{Message: m}
		if err := s.conn(ctx).Where("id = ?", m.EventID).Take(&d.Event).Error; err != nil {
			return nil, err
		}
		switch {
		case m.ChannelID != nil:
			var names []string
			_ = s.conn(ctx).Model(&NotificationChannel{}).Where("id = ?", *m.ChannelID).Pluck("name", &names).Error // a name for display only
			if len(names) == 1 {
				d.Recipient = names[0]
			}
		case m.UserID != nil:
			var emails []string
			_ = s.conn(ctx).Model(&User{}).Where("id = ?", *m.UserID).Pluck("email", &emails).Error // a label for display only
			if len(emails) == 1 {
				d.Recipient = emails[0]
			}
		default:
			d.Recipient = m.Address
		}
		d.Message.Payload = "" // never shown: it can hold an invitation's link
		out = append(out, d)
	}
	return out, nil
}

// RetryDeadLetter puts one of orgID's dead messages back in the queue
// with fresh attempts. ErrNotFound when orgID has no such dead message.
func (s *Store) RetryDeadLetter(ctx context.Context, orgID string, id int64) error {
	res := s.conn(ctx).Model(&OutboxMessage{}).Where("org_id = ? AND id = ? AND state = ?", orgID, id, OutboxDead).
		Updates(map[string]any{"state": OutboxPending, "attempts": 0, "next_attempt_at": s.now(), "last_error": ""})
	if res.Error != nil {
		return res.Error
	}
	if res.RowsAffected == 0 {
		return ErrNotFound
	}
	return nil
}

// InboxEntry is an inbox item with its event.
type InboxEntry struct {
	Item      InboxItem
	Event     NotificationEvent
	AgentName string
}

// ListInbox lists userID's inbox in orgID, newest event first, at most limit.
func (s *Store) ListInbox(ctx context.Context, orgID, userID string, unreadOnly bool, limit int) ([]InboxEntry, error) {
	var rows []struct {
		InboxItem
		EName     string `gorm:"column:e_name"`
		ESeverity string `gorm:"column:e_severity"`
		EAgentID  string `gorm:"column:e_agent_id"`
		ETarget   string `gorm:"column:e_target"`
		EMessage  string `gorm:"column:e_message"`
		ECount    int    `gorm:"column:e_count"`
		EFirstAt  time.Time
		ELastAt   time.Time
		AgentName *string
	}
	q := s.conn(ctx).Table("notification_inbox i").
		Select(`i.*, e.name AS e_name, e.severity AS e_severity, e.agent_id AS e_agent_id, e.target AS e_target,
			e.message AS e_message, e.count AS e_count, e.first_at AS e_first_at, e.last_at AS e_last_at, a.name AS agent_name`).
		Joins("JOIN notification_events e ON e.id = i.event_id").
		Joins("LEFT JOIN agents a ON a.id = e.agent_id AND a.org_id = e.org_id").
		Where("i.org_id = ? AND i.user_id = ?", orgID, userID)
	if unreadOnly {
		q = q.Where("i.read_at IS NULL")
	}
	if err := q.Order("e.last_at DESC, i.id DESC").Limit(limit).Scan(&rows).Error; err != nil {
		return nil, err
	}
	out := make([]InboxEntry, 0, len(rows))
	for _, r := range rows {
		out = append(out, InboxEntry{
			Item: r.InboxItem,
			Event: NotificationEvent{
				ID: r.EventID, OrgID: r.OrgID, Name: r.EName, Severity: r.ESeverity, AgentID: r.EAgentID,
				Target: r.ETarget, Message: r.EMessage, Count: r.ECount, FirstAt: r.EFirstAt, LastAt: r.ELastAt,
			},
			AgentName: deref(r.AgentName),
		})
	}
	return out, nil
}

// UnreadCount counts userID's unread inbox items in orgID.
func (s *Store) UnreadCount(ctx context.Context, orgID, userID string) (int64, error) {
	var n int64
	err := s.conn(ctx).Model(&InboxItem{}).Where("org_id = ? AND user_id = ? AND read_at IS NULL", orgID, userID).Count(&n).Error
	return n, err
}

// MarkInboxRead marks one of userID's inbox items in orgID read.
// ErrNotFound when it is not theirs.
func (s *Store) MarkInboxRead(ctx context.Context, orgID, userID string, id int64) error {
	var item InboxItem
	if err := s.conn(ctx).Where("org_id = ? AND user_id = ? AND id = ?", orgID, userID, id).Take(&item).Error; err != nil {
		return notFound(err)
	}
	if item.ReadAt != nil {
		return nil
	}
	return s.conn(ctx).Model(&InboxItem{}).Where("id = ?", id).Update("read_at", s.now()).Error
}

// MarkInboxAllRead marks all of userID's inbox items in orgID read and
// returns how many were unread.
func (s *Store) MarkInboxAllRead(ctx context.Context, orgID, userID string) (int64, error) {
	res := s.conn(ctx).Model(&InboxItem{}).Where("org_id = ? AND user_id = ? AND read_at IS NULL", orgID, userID).Update("read_at", s.now())
	return res.RowsAffected, res.Error
}

// ListNotificationPreferences lists orgID's preferences: the
// organization's defaults and userID's overrides (userID "": defaults only).
func (s *Store) ListNotificationPreferences(ctx context.Context, orgID, userID string) ([]NotificationPreference, error) {
	var out []NotificationPreference
	err := s.conn(ctx).Where("org_id = ? AND user_id IN ?", orgID, []string{"", userID}).Order("user_id, event, channel").Find(&out).Error
	return out, err
}

// PreferenceChange sets (Enabled non-nil) or clears (nil: inherit) one
// preference.
type PreferenceChange struct {
	Event, Channel string
	Enabled        *bool
}

// SetNotificationPreferences applies changes to the organization's
// defaults (userID "") or userID's overrides in orgID, in one transaction.
func (s *Store) SetNotificationPreferences(ctx context.Context, orgID, userID string, changes []PreferenceChange) error {
	return s.conn(ctx).Transaction(func(tx *gorm.DB) error {
		for _, c := range changes {
			if c.Enabled == nil {
				if err := tx.Where("org_id = ? AND user_id = ? AND event = ? AND channel = ?", orgID, userID, c.Event, c.Channel).
					Delete(&NotificationPreference{}).Error; err != nil {
					return err
				}
				continue
			}
			p := NotificationPreference{OrgID: orgID, UserID: userID, Event: c.Event, Channel: c.Channel, Enabled: *c.Enabled, UpdatedAt: s.now()}
			if err := tx.Clauses(clause.OnConflict{
				Columns:   []clause.Column{{Name: "org_id"}, {Name: "user_id"}, {Name: "event"}, {Name: "channel"}},
				DoUpdates: clause.AssignmentColumns([]string{"enabled", "updated_at"}),
			}).Create(&p).Error; err != nil {
				return err
			}
		}
		return nil
	})
}

// CreateNotificationChannel adds a Slack or webhook channel to orgID;
// ErrConflict when orgID has one of that name.
func (s *Store) CreateNotificationChannel(ctx context.Context, orgID, kind, name, url, secret, createdBy string) (*NotificationChannel, error) {
	ch := &NotificationChannel{ID: newID("nch"), OrgID: orgID, Kind: kind, Name: name, URL: url, Secret: secret, CreatedAt: s.now()}
	if createdBy != "" {
		ch.CreatedBy = &createdBy
	}
	if err := s.conn(ctx).Create(ch).Error; err != nil {
		if uniqueViolation(err) {
			return nil, ErrConflict
		}
		return nil, err
	}
	return ch, nil
}

// ListNotificationChannels lists orgID's channels by name.
func (s *Store) ListNotificationChannels(ctx context.Context, orgID string) ([]NotificationChannel, error) {
	var out []NotificationChannel
	err := s.conn(ctx).Where("org_id = ?", orgID).Order("name, id").Find(&out).Error
	return out, err
}

// NotificationChannelByID returns one of orgID's channels.
func (s *Store) NotificationChannelByID(ctx context.Context, orgID, id string) (*NotificationChannel, error) {
	var ch NotificationChannel
	if err := s.conn(ctx).Where("org_id = ? AND id = ?", orgID, id).Take(&ch).Error; err != nil {
		return nil, notFound(err)
	}
	return &ch, nil
}

// DeleteNotificationChannel removes one of orgID's channels and its
// undelivered messages.
func (s *Store) DeleteNotificationChannel(ctx context.Context, orgID, id string) error {
	res := s.conn(ctx).Where("org_id = ? AND id = ?", orgID, id).Delete(&NotificationChannel{})
	if res.Error != nil {
		return res.Error
	}
	if res.RowsAffected == 0 {
		return ErrNotFound
	}
	return nil
}

// SetCloneProtection records that a clone of agentID is protected until
// till (zero till, or protected false: not protected, forgotten).
func (s *Store) SetCloneProtection(ctx context.Context, orgID, agentID, cloneID string, protected bool, till time.Time) error {
	if !protected || till.IsZero() {
		return s.conn(ctx).Exec(`DELETE FROM clone_protections WHERE agent_id = ? AND clone_id = ?`, agentID, cloneID).Error
	}
	return s.conn(ctx).Exec(`INSERT INTO clone_protections (agent_id, clone_id, org_id, till) VALUES (?, ?, ?, ?)
		ON CONFLICT (agent_id, clone_id) DO UPDATE SET till = excluded.till`, agentID, cloneID, orgID, till.UTC()).Error
}

// CloneProtection is a protection about to end.
type CloneProtection struct {
	AgentID, CloneID, OrgID string
	Till                    time.Time
}

// ExpiringProtections claims (FOR UPDATE SKIP LOCKED) the protections
// ending within lead that were not warned of for this end yet, calls
// warn with each in the same transaction, marks them warned, and forgets
// protections that ended a day ago.
func (s *Store) ExpiringProtections(ctx context.Context, lead time.Duration, warn func(tx *Store, p CloneProtection) error) (int, error) {
	n := 0
	err := s.InTx(ctx, func(tx *Store) error {
		now := s.now()
		if err := tx.conn(ctx).Exec(`DELETE FROM clone_protections WHERE till < ?`, now.Add(-24*time.Hour)).Error; err != nil {
			return err
		}
		var ps []CloneProtection
		if err := tx.conn(ctx).Raw(`SELECT agent_id, clone_id, org_id, till FROM clone_protections
			WHERE till <= ? AND till > ? AND (notified_till IS NULL OR notified_till <> till)
			ORDER BY till LIMIT 500 FOR UPDATE SKIP LOCKED`, now.Add(lead), now).Scan(&ps).Error; err != nil {
			return err
		}
		for _, p := range ps {
			if err := warn(tx, p); err != nil {
				return err
			}
			if err := tx.conn(ctx).Exec(`UPDATE clone_protections SET notified_till = till WHERE agent_id = ? AND clone_id = ?`, p.AgentID, p.CloneID).Error; err != nil {
				return err
			}
		}
		n = len(ps)
		return nil
	})
	return n, err
}

// SourceRecorded reports whether a notification source key was recorded.
func (s *Store) SourceRecorded(ctx context.Context, key string) (bool, error) {
	var n int64
	err := s.conn(ctx).Raw(`SELECT count(*) FROM notification_sources WHERE source_key = ?`, key).Scan(&n).Error
	return n > 0, err
}

// AgentsGone locks (FOR UPDATE SKIP LOCKED) and returns the agents, not
// revoked, that have been disconnected since before `before` but after
// `after`, at most 500: the ones to tell their organization about. Call it
// in a transaction (InTx) that records the notifications.
func (s *Store) AgentsGone(ctx context.Context, before, after time.Time) ([]Agent, error) {
	var out []Agent
	err := s.conn(ctx).Clauses(clause.Locking{Strength: "UPDATE", Options: "SKIP LOCKED"}).
		Where("disconnected_since IS NOT NULL AND disconnected_since < ? AND disconnected_since > ? AND revoked_at IS NULL", before.UTC(), after.UTC()).
		Order("disconnected_since").Limit(500).Find(&out).Error
	return out, err
}
