package api

import (
	"bytes"
	"net/http"
	"strconv"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/store"
)

// listAudit answers GET /orgs/:org/audit?actor&action&target&since&until
// &format=json|csv&limit. Times are RFC 3339.
func (a *API) listAudit(c *gin.Context) {
	f := store.AuditFilter{Actor: c.Query("actor"), Action: c.Query("action"), Target: c.Query("target")}
	for _, q := range []struct {
		name string
		dst  *time.Time
	}{{"since", &f.Since}, {"until", &f.Until}} {
		if v := c.Query(q.name); v != "" {
			t, err := time.Parse(time.RFC3339, v)
			if err != nil {
				invalid(c, q.name+" must be an RFC 3339 time such as 2026-01-02T15:04:05Z", q.name)
				return
			}
			*q.dst = t
		}
	}
	if v := c.Query("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > store.MaxAuditEvents {
			invalid(c, "limit must be a number from 1 to "+strconv.Itoa(store.MaxAuditEvents), "limit")
			return
		}
		f.Limit = n
	}
	format := c.DefaultQuery("format", "json")
	if format != "json" && format != "csv" {
		invalid(c, "format must be json or csv", "format")
		return
	}
	events, err := a.Store.ListAuditEvents(c.Request.Context(), access.OrgID(c), f)
	if err != nil {
		a.internal(c, "read the audit log", err)
		return
	}
	out := audit.ToAPI(events)
	var buf bytes.Buffer
	if format == "csv" {
		if err := audit.WriteCSV(&buf, out); err != nil {
			a.internal(c, "export the audit log", err)
			return
		}
		c.Header("Content-Disposition", `attachment; filename="audit-`+access.Org(c).Slug+`.csv"`)
		c.Data(http.StatusOK, "text/csv; charset=utf-8", buf.Bytes())
		return
	}
	if err := audit.WriteJSON(&buf, out); err != nil {
		a.internal(c, "export the audit log", err)
		return
	}
	c.Data(http.StatusOK, "application/json; charset=utf-8", buf.Bytes())
}
