// Package audit appends who did what, when, from where and with what result
// to the append-only audit log, and exports it. Every mutating route gets
// Middleware, so success and failure are both recorded without each handler
// remembering to.
package audit

import (
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/principal"
	"github.com/thinlab/thinlab/platform/store"
)

// Recorder writes audit events.
type Recorder struct {
	Store  *store.Store
	Logger *slog.Logger
}

// Event is what a caller knows about an action.
type Event struct {
	OrgID  string
	Action string
	Target string
	Err    string // empty on success
}

// Record appends ev on behalf of the request's principal. A failure to
// write is logged and returned; the caller decides whether it matters.
func (r *Recorder) Record(c *gin.Context, ev Event) error {
	row := &store.AuditEvent{
		Action:    ev.Action,
		Target:    ev.Target,
		IP:        c.ClientIP(),
		UserAgent: truncate(c.Request.UserAgent(), 512),
		Result:    store.ResultSuccess,
		CreatedAt: time.Now().UTC(),
	}
	if ev.OrgID != "" {
		row.OrgID = &ev.OrgID
	}
	if p := principal.From(c); p != nil {
		id := p.UserID
		row.ActorID = &id
		row.Actor = p.Email
	}
	if ev.Err != "" {
		row.Result = store.ResultError
		row.Error = truncate(ev.Err, 2000)
	}
	// Record even when the client went away mid-request.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.Request.Context()), 10*time.Second)
	defer cancel()
	if err := r.Store.AppendAuditEvent(ctx, row); err != nil {
		r.logger().Error("append audit event", "action", ev.Action, "err", err)
		return err
	}
	return nil
}

func (r *Recorder) logger() *slog.Logger {
	if r.Logger != nil {
		return r.Logger
	}
	return slog.Default()
}

const (
	keyTarget = "thinlab.audit.target"
	keyOrg    = "thinlab.audit.org"
	keyError  = "thinlab.audit.error"
	keyAction = "thinlab.audit.action"
)

// MaskEmail is how an invitation's address goes into the audit log: the
// first character of the local part and the domain (a***@example.com).
// The log is kept forever and exported; the full address is not needed to
// tell invitations apart, and an invitation's ID identifies it exactly.
func MaskEmail(s string) string {
	local, domain, ok := strings.Cut(strings.TrimSpace(s), "@")
	if !ok || local == "" {
		// Not an address (a rejected request): keep a hint, not the text.
		if s == "" {
			return ""
		}
		return "(invalid address, " + strconv.Itoa(len(s)) + " bytes)"
	}
	r, _ := utf8.DecodeRuneInString(local)
	return string(r) + "***@" + truncate(domain, 253)
}

// SetTarget names what the request acted on (a user ID, a token ID, ...).
func SetTarget(c *gin.Context, target string) { c.Set(keyTarget, target) }

// SetOrg names the organization when the route has no :org (invitation
// acceptance) or overrides it.
func SetOrg(c *gin.Context, orgID string) { c.Set(keyOrg, orgID) }

// SetAction renames the event Middleware records at the end of the
// request. A long-lived connection (a websocket) records its opening
// itself and leaves its end to the middleware under another name.
func SetAction(c *gin.Context, action string) { c.Set(keyAction, action) }

// SetError records the failure message sent to the caller.
func SetError(c *gin.Context, message string) { c.Set(keyError, message) }

// Middleware records one event with action for every request it wraps,
// after the rest of the chain ran: success for 1xx-3xx answers, error with
// the message given to SetError (or the status text) otherwise. orgOf
// returns the organization resolved by authorization ("" when none).
func (r *Recorder) Middleware(action string, orgOf func(*gin.Context) string) gin.HandlerFunc {
	return func(c *gin.Context) {
		c.Next()
		ev := Event{Action: action, OrgID: c.GetString(keyOrg), Target: c.GetString(keyTarget)}
		if a := c.GetString(keyAction); a != "" {
			ev.Action = a
		}
		if ev.OrgID == "" {
			ev.OrgID = orgOf(c)
		}
		if status := c.Writer.Status(); status >= 400 {
			ev.Err = c.GetString(keyError)
			if ev.Err == "" {
				ev.Err = http.StatusText(status)
			}
		}
		_ = r.Record(c, ev) // logged by Record; the answer has been sent already
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
