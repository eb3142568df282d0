package auth

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/url"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/principal"
	"github.com/thinlab/thinlab/platform/store"
)

// SessionCookie holds the session secret; the database keeps only its
// SHA-256, so a stolen database does not yield live sessions.
const SessionCookie = "thinlab_session"

// Session is a signed-in browser (a row of the platform database).
type Session = store.Session

// SessionStore keeps sessions server-side, so logout and expiry take effect
// at once on every replica. *store.Store is the one the platform uses.
type SessionStore interface {
	CreateSession(ctx context.Context, s *Session) error
	// LookupSession returns the live session with idHash, or
	// store.ErrNotFound.
	LookupSession(ctx context.Context, idHash []byte, now time.Time) (*Session, error)
	DeleteSession(ctx context.Context, idHash []byte) error
	// DeleteExpiredSessions removes sessions that ended before now.
	DeleteExpiredSessions(ctx context.Context, now time.Time) (int64, error)
}

func hashSessionID(id string) []byte {
	h := sha256.Sum256([]byte(id))
	return h[:]
}

func (a *Auth) startSession(c *gin.Context, userID, provider string) error {
	// Drop a session this browser may already have (no session fixation).
	if old, err := c.Cookie(SessionCookie); err == nil && old != "" {
		_ = a.sessions.DeleteSession(c.Request.Context(), hashSessionID(old))
	}
	id := randomToken(32)
	now := a.now().UTC()
	s := &Session{
		IDHash:    hashSessionID(id),
		UserID:    userID,
		Provider:  provider,
		CSRFToken: randomToken(32),
		IP:        c.ClientIP(),
		UserAgent: truncate(c.Request.UserAgent(), 400),
		CreatedAt: now,
		ExpiresAt: now.Add(a.cfg.SessionTTL),
	}
	if err := a.sessions.CreateSession(c.Request.Context(), s); err != nil {
		return err
	}
	a.SetCookie(c, SessionCookie, id, "/", int(a.cfg.SessionTTL.Seconds()))
	return nil
}

const sessionKey = "thinlab.auth.session"

// LoadSession puts the request's session (if its cookie names a live one)
// into the gin context; see SessionFrom. It never refuses a request; pages
// outside the access chain (the sign-in page) use it.
func (a *Auth) LoadSession() gin.HandlerFunc {
	return func(c *gin.Context) {
		if _, err := a.CurrentSession(c); err != nil && !errors.Is(err, ErrNoSession) {
			a.log.Error("session lookup failed", "err", err)
		}
		c.Next()
	}
}

// ErrNoSession: the request has no session cookie, or its cookie names no
// live session (expired, logged out, tampered).
var ErrNoSession = errors.New("no session")

// CurrentSession returns the live session named by the cookie, or
// ErrNoSession, and remembers it in the context.
func (a *Auth) CurrentSession(c *gin.Context) (*Session, error) {
	if s, ok := SessionFrom(c); ok {
		return s, nil
	}
	id, err := c.Cookie(SessionCookie)
	if err != nil || id == "" {
		return nil, ErrNoSession
	}
	s, err := a.sessions.LookupSession(c.Request.Context(), hashSessionID(id), a.now().UTC())
	if errors.Is(err, store.ErrNotFound) {
		return nil, ErrNoSession
	}
	if err != nil {
		return nil, err
	}
	c.Set(sessionKey, s)
	return s, nil
}

// SessionFrom returns the session found for this request.
func SessionFrom(c *gin.Context) (*Session, bool) {
	v, ok := c.Get(sessionKey)
	if !ok {
		return nil, false
	}
	s, ok := v.(*Session)
	return s, ok
}

// Authenticator is the session authenticator of the platform's access
// chain. A request without a session cookie, or whose cookie names no live
// session (expired, logged out, tampered), is left to the next
// authenticator and ends as "not signed in". A state-changing request made
// with a session must carry the session's CSRF token (form field
// csrf_token or header X-CSRF-Token), or it is refused with CSRFRefusal.
func (a *Auth) Authenticator(st *store.Store) principal.Authenticator {
	return func(c *gin.Context) (*principal.Principal, error) {
		s, err := a.CurrentSession(c)
		if errors.Is(err, ErrNoSession) {
			return nil, nil // no session: the next authenticator is tried
		}
		if err != nil {
			return nil, err
		}
		if !csrfOK(c, s) {
			return nil, principal.Reject(CSRFRefusal)
		}
		u, err := st.UserByID(c.Request.Context(), s.UserID)
		if errors.Is(err, store.ErrNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		return &principal.Principal{
			UserID: u.ID, Email: u.Email, Name: u.Name,
			Method: principal.MethodSession, SessionID: hex.EncodeToString(s.IDHash[:8]),
		}, nil
	}
}

func (a *Auth) handleLogout(c *gin.Context) {
	if id, err := c.Cookie(SessionCookie); err == nil && id != "" {
		if err := a.sessions.DeleteSession(c.Request.Context(), hashSessionID(id)); err != nil {
			a.log.Error("logout: deleting the session failed", "err", err)
			a.fail(c, http.StatusInternalServerError, "Signing out failed. Try again.")
			return
		}
	}
	a.SetCookie(c, SessionCookie, "", "/", -1)
	c.Redirect(http.StatusSeeOther, "/signin?signed_out=1")
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func urlQueryEscape(s string) string { return url.QueryEscape(s) }
