package api

import (
	"bytes"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/billing"
	"github.com/thinlab/thinlab/platform/usage"
	"github.com/thinlab/thinlab/sdk/platformapi"
)

// UsageRange reads from and to (dates, YYYY-MM-DD, UTC; to exclusive)
// with defaults: the current month so far. Shared with the web UI.
func UsageRange(from, to string, now time.Time) (time.Time, time.Time, string, error) {
	now = now.UTC()
	f := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	t := now.Truncate(24*time.Hour).AddDate(0, 0, 1)
	if from != "" {
		d, err := time.Parse(time.DateOnly, from)
		if err != nil {
			return f, t, "from", errors.New("from must be a date such as 2026-01-31")
		}
		f = d
	}
	if to != "" {
		d, err := time.Parse(time.DateOnly, to)
		if err != nil {
			return f, t, "to", errors.New("to must be a date such as 2026-02-01 (exclusive)")
		}
		t = d
	}
	if !t.After(f) {
		return f, t, "to", errors.New("to must be after from")
	}
	if t.Sub(f) > 3*366*24*time.Hour {
		return f, t, "from", errors.New("the range is longer than 3 years: ask for less")
	}
	return f, t, "", nil
}

// getUsage answers GET /orgs/:org/usage?from&to&period=day|month
// &by=org|agent|user|clone&format=json|csv.
func (a *API) getUsage(c *gin.Context) {
	from, to, field, err := UsageRange(c.Query("from"), c.Query("to"), time.Now())
	if err != nil {
		invalid(c, err.Error(), field)
		return
	}
	period, by, format := c.DefaultQuery("period", "day"), c.DefaultQuery("by", "org"), c.DefaultQuery("format", "json")
	switch {
	case !slices.Contains(usage.Periods, period):
		invalid(c, "period must be one of "+strings.Join(usage.Periods, ", "), "period")
		return
	case !slices.Contains(usage.Bys, by):
		invalid(c, "by must be one of "+strings.Join(usage.Bys, ", "), "by")
		return
	case format != "json" && format != "csv":
		invalid(c, "format must be json or csv", "format")
		return
	}
	rep, err := usage.Report(c.Request.Context(), a.Store, access.OrgID(c), from, to, period, by)
	if err != nil {
		a.internal(c, "read the usage", err)
		return
	}
	if format == "csv" {
		var buf bytes.Buffer
		if err := usage.WriteCSV(&buf, rep); err != nil {
			a.internal(c, "export the usage", err)
			return
		}
		c.Header("Content-Disposition", `attachment; filename="usage-`+access.Org(c).Slug+`.csv"`)
		c.Data(http.StatusOK, "text/csv; charset=utf-8", buf.Bytes())
		return
	}
	c.JSON(http.StatusOK, rep)
}

// getSavings answers GET /orgs/:org/usage/savings?from&to: per month.
func (a *API) getSavings(c *gin.Context) {
	now := time.Now().UTC()
	defFrom := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC).AddDate(0, -11, 0)
	fromQ := c.Query("from")
	if fromQ == "" {
		fromQ = defFrom.Format(time.DateOnly)
	}
	from, to, field, err := UsageRange(fromQ, c.Query("to"), now)
	if err != nil {
		invalid(c, err.Error(), field)
		return
	}
	rep, err := usage.Savings(c.Request.Context(), a.Store, access.OrgID(c), from, to, a.CopyRateMiBPerSecond)
	if err != nil {
		a.internal(c, "estimate the savings", err)
		return
	}
	c.JSON(http.StatusOK, rep)
}

// getBilling answers GET /orgs/:org/billing.
func (a *API) getBilling(c *gin.Context) {
	sum, err := a.Billing.Summary(c.Request.Context(), access.OrgID(c))
	if err != nil {
		a.internal(c, "read the billing", err)
		return
	}
	c.JSON(http.StatusOK, sum)
}

// CodeBillingDisabled answers billing actions on a platform without
// billing.
const CodeBillingDisabled = "billing_disabled"

// BillingError answers a billing failure: disabled billing 409, an
// unknown plan 400, Stripe failures 502. Reported whether err was one.
func BillingError(c *gin.Context, err error) bool {
	var pe *billing.PlanError
	switch {
	case errors.Is(err, billing.ErrDisabled):
		access.Error(c, http.StatusConflict, CodeBillingDisabled, err.Error(), "")
	case errors.As(err, &pe):
		access.Error(c, http.StatusBadRequest, platformapi.CodeInvalid, err.Error(), "plan")
	default:
		return false
	}
	return true
}

// checkout answers POST /orgs/:org/billing/checkout {"plan"}: the URL of
// a Stripe Checkout session for the plan.
func (a *API) checkout(c *gin.Context) {
	var req struct {
		Plan string `json:"plan"`
	}
	if !decode(c, &req) {
		return
	}
	org := access.Org(c)
	audit.SetTarget(c, "plan "+req.Plan)
	back := a.BaseURL + "/o/" + org.Slug + "/billing"
	u, err := a.Billing.Checkout(c.Request.Context(), org.ID, org.Name, req.Plan, back+"?checkout=done", back)
	if err != nil {
		if !BillingError(c, err) {
			a.Logger.Warn("billing: checkout", "org", org.ID, "err", err)
			access.Error(c, http.StatusBadGateway, platformapi.CodeInternal, "Stripe did not start the checkout; try again", "")
		}
		return
	}
	c.JSON(http.StatusOK, platformapi.BillingLink{URL: u})
}

// portal answers POST /orgs/:org/billing/portal: a Stripe customer
// portal URL (payment methods, invoices, cancellation).
func (a *API) portal(c *gin.Context) {
	org := access.Org(c)
	u, err := a.Billing.Portal(c.Request.Context(), org.ID, org.Name, a.BaseURL+"/o/"+org.Slug+"/billing")
	if err != nil {
		if !BillingError(c, err) {
			a.Logger.Warn("billing: portal", "org", org.ID, "err", err)
			access.Error(c, http.StatusBadGateway, platformapi.CodeInternal, "Stripe did not open the customer portal; try again", "")
		}
		return
	}
	c.JSON(http.StatusOK, platformapi.BillingLink{URL: u})
}

// maxWebhookBody bounds a Stripe webhook request.
const maxWebhookBody = 1 << 20

// StripeWebhookPath is where Stripe sends billing events: outside
// /api/v1, like the agents' enrollment, since no person or API token
// calls it (docs/billing.md documents it).
const StripeWebhookPath = "/api/billing/v1/stripe/webhook"

// stripeWebhook answers Stripe's POST StripeWebhookPath. It has no
// session or token: the signature is the authentication (see
// platform/billing, webhook.go). Wrong, missing or stale signatures get
// 400 and change nothing.
func (a *API) stripeWebhook(c *gin.Context) {
	if !a.Billing.Enabled() {
		access.Error(c, http.StatusNotFound, platformapi.CodeNotFound, "billing is not enabled on this platform", "")
		return
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(http.MaxBytesReader(c.Writer, c.Request.Body, maxWebhookBody)); err != nil {
		invalid(c, "the webhook body is unreadable or larger than 1 MiB", "")
		return
	}
	applied, err := a.Billing.HandleWebhook(c.Request.Context(), buf.Bytes(), c.GetHeader("Stripe-Signature"))
	var se *billing.SignatureError
	switch {
	case errors.As(err, &se):
		a.Logger.Warn("billing: Stripe webhook refused", "err", err, "ip", c.ClientIP())
		invalid(c, "Stripe-Signature refused", "Stripe-Signature")
		return
	case err != nil:
		// Stripe retries on a non-2xx answer.
		a.internal(c, "apply the Stripe event", err)
		return
	}
	if applied.OrgID != "" && a.Audit != nil {
		// Stripe is not a user: the event has no actor; the
		// organization's admins see what changed their plan.
		_ = a.Audit.Record(c, audit.Event{OrgID: applied.OrgID, Action: "billing.webhook", Target: applied.Type + " " + applied.EventID}) // logged by Record
	}
	c.JSON(http.StatusOK, gin.H{"received": true, "applied": applied.OrgID != ""})
}

// orgLocks serialises clone creations per organization on this replica,
// so that two concurrent creations cannot both pass a plan's clone
// limit. (Across replicas two may still race; the limit then lets one
// extra clone through, never fewer.)
type orgLocks struct {
	mu sync.Mutex
	m  map[string]*sync.Mutex
}

func (l *orgLocks) lock(orgID string) func() {
	l.mu.Lock()
	if l.m == nil {
		l.m = map[string]*sync.Mutex{}
	}
	m, ok := l.m[orgID]
	if !ok {
		m = &sync.Mutex{}
		l.m[orgID] = m
	}
	l.mu.Unlock()
	m.Lock()
	return m.Unlock
}
