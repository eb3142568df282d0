package store

import (
	"context"
	"time"
)

// AuditEvent is one entry of the append-only audit log. The database
// rejects UPDATE, DELETE and TRUNCATE on its table.
type AuditEvent struct {
	ID        int64 `gorm:"primaryKey"`
	OrgID     *string
	ActorID   *string
	Actor     string // readable label (email) copied at the time
	Action    string // such as member.update or token.create
	Target    string // what was acted on, such as usr_... or tok_...
	IP        string `gorm:"column:ip"`
	UserAgent string
	Result    string // "success" or "error"
	Error     string // the error text when Result is "error"
	CreatedAt time.Time
}

// Audit results.
const (
	ResultSuccess = "success"
	ResultError   = "error"
)

// AppendAuditEvent writes ev; the database assigns ID.
func (s *Store) AppendAuditEvent(ctx context.Context, ev *AuditEvent) error {
	if ev.CreatedAt.IsZero() {
		ev.CreatedAt = s.now()
	}
	return s.conn(ctx).Create(ev).Error
}

// AuditFilter narrows ListAuditEvents; zero fields match everything.
type AuditFilter struct {
	Actor  string // actor ID or label
	Action string // exact action, or a prefix ending in "." (member.)
	Target string
	Since  time.Time // inclusive
	Until  time.Time // exclusive
	Limit  int       // default and maximum 10000
}

// MaxAuditEvents caps one listing or export.
const MaxAuditEvents = 10000

// ListAuditEvents returns orgID's events matching f, newest first.
func (s *Store) ListAuditEvents(ctx context.Context, orgID string, f AuditFilter) ([]AuditEvent, error) {
	q := s.conn(ctx).Where("org_id = ?", orgID)
	if f.Actor != "" {
		q = q.Where("(actor_id = ? OR actor = ?)", f.Actor, f.Actor)
	}
	if f.Action != "" {
		if f.Action[len(f.Action)-1] == '.' {
			q = q.Where("starts_with(action, ?)", f.Action)
		} else {
			q = q.Where("action = ?", f.Action)
		}
	}
	if f.Target != "" {
		q = q.Where("target = ?", f.Target)
	}
	if !f.Since.IsZero() {
		q = q.Where("created_at >= ?", f.Since)
	}
	if !f.Until.IsZero() {
		q = q.Where("created_at < ?", f.Until)
	}
	if f.Limit <= 0 || f.Limit > MaxAuditEvents {
		f.Limit = MaxAuditEvents
	}
	var out []AuditEvent
	err := q.Order("created_at DESC, id DESC").Limit(f.Limit).Find(&out).Error
	return out, err
}
