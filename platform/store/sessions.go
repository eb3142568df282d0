package store

import (
	"context"
	"time"
)

// Session is a signed-in browser. Sessions belong to a user, not to an
// organization, so no query here takes an organization ID.
type Session struct {
	// IDHash is the SHA-256 of the cookie's secret: a stolen database does
	// not yield live sessions.
	IDHash    []byte `gorm:"primaryKey;column:id_hash"`
	UserID    string
	Provider  string
	CSRFToken string `gorm:"column:csrf_token"`
	IP        string `gorm:"column:ip"`
	UserAgent string
	CreatedAt time.Time
	ExpiresAt time.Time
}

// TableName is the sessions table (migrations/ creates it).
func (Session) TableName() string { return "web_sessions" }

// CreateSession inserts se.
func (s *Store) CreateSession(ctx context.Context, se *Session) error {
	return s.conn(ctx).Create(se).Error
}

// LookupSession returns the session with idHash that has not expired at
// now, or ErrNotFound.
func (s *Store) LookupSession(ctx context.Context, idHash []byte, now time.Time) (*Session, error) {
	var se Session
	if err := s.conn(ctx).Where("id_hash = ? AND expires_at > ?", idHash, now).Take(&se).Error; err != nil {
		return nil, notFound(err)
	}
	return &se, nil
}

// DeleteSession removes a session (logout); deleting twice is a no-op.
func (s *Store) DeleteSession(ctx context.Context, idHash []byte) error {
	return s.conn(ctx).Where("id_hash = ?", idHash).Delete(&Session{}).Error
}

// DeleteExpiredSessions removes sessions that ended at or before now and
// returns how many.
func (s *Store) DeleteExpiredSessions(ctx context.Context, now time.Time) (int64, error) {
	res := s.conn(ctx).Where("expires_at <= ?", now).Delete(&Session{})
	return res.RowsAffected, res.Error
}
