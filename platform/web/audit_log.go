package web

import (
	"net/http"
	"net/url"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/ui"
)

// auditPageLimit is how many events the page shows; exports go up to the
// store's maximum.
const auditPageLimit = 200

// auditLog shows the organization's audit log with filters. Export links
// point at the API (GET /api/v1/orgs/:org/audit?format=csv|json), which the
// browser's session may call, so the export is the API's exact output.
func (w *Web) auditLog(c *gin.Context) {
	p := w.page(c, "Audit log")
	fv := ui.AuditFilter{Actor: c.Query("actor"), Action: c.Query("action"), Target: c.Query("target"), Since: c.Query("since"), Until: c.Query("until")}
	f := store.AuditFilter{Actor: fv.Actor, Action: fv.Action, Target: fv.Target, Limit: auditPageLimit + 1}
	api := url.Values{}
	for k, v := range map[string]string{"actor": fv.Actor, "action": fv.Action, "target": fv.Target} {
		if v != "" {
			api.Set(k, v)
		}
	}
	// Date inputs give YYYY-MM-DD; "until" includes that whole day.
	for _, d := range []struct {
		name, val string
		dst       *time.Time
		plus      time.Duration
	}{{"since", fv.Since, &f.Since, 0}, {"until", fv.Until, &f.Until, 24 * time.Hour}} {
		if d.val == "" {
			continue
		}
		t, err := time.Parse("2006-01-02", d.val)
		if err != nil {
			p.Flash = append(p.Flash, ui.Flash{Kind: "error", Text: d.name + " must be a date such as 2026-01-31"})
			p.Status = http.StatusBadRequest
			continue
		}
		*d.dst = t.Add(d.plus)
		api.Set(d.name, d.dst.Format(time.RFC3339))
	}
	events, err := w.store.ListAuditEvents(c.Request.Context(), access.OrgID(c), f)
	if err != nil {
		w.internal(c, "read the audit log", err)
		return
	}
	v := ui.Audit{Filter: fv, Limit: auditPageLimit}
	if len(events) > auditPageLimit {
		events, v.Truncated = events[:auditPageLimit], true
	}
	for _, e := range events {
		v.Events = append(v.Events, ui.AuditEvent{
			ID: e.ID, Time: e.CreatedAt, Actor: e.Actor, Action: e.Action, Target: e.Target,
			IP: e.IP, Result: e.Result, Error: e.Error,
		})
	}
	base := "/api/v1/orgs/" + access.Org(c).Slug + "/audit?"
	api.Set("format", "csv")
	v.CSVURL = base + api.Encode()
	api.Set("format", "json")
	v.JSONURL = base + api.Encode()
	w.render(c, p.Status, ui.AuditPage(p, v))
}
