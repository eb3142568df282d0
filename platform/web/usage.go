package web

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/api"
	"github.com/thinlab/thinlab/platform/billing"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/platform/usage"
	"github.com/thinlab/thinlab/ui"
)

// usagePage shows the organization's usage (the API's report, with its
// filters) and the savings per month. Export links point at the API,
// which the browser's session may call.
func (w *Web) usagePage(c *gin.Context) {
	p := w.page(c, "Usage")
	period, by := c.DefaultQuery("period", "day"), c.DefaultQuery("by", "org")
	if !slices.Contains(usage.Periods, period) {
		period = "day"
	}
	if !slices.Contains(usage.Bys, by) {
		by = "org"
	}
	now := time.Now()
	from, to, _, err := api.UsageRange(c.Query("from"), c.Query("to"), now)
	if err != nil {
		p.Flash = append(p.Flash, ui.Flash{Kind: "error", Text: err.Error()})
		p.Status = http.StatusBadRequest
		from, to, _, _ = api.UsageRange("", "", now)
	}
	ctx, orgID := c.Request.Context(), access.OrgID(c)
	rep, err := usage.Report(ctx, w.store, orgID, from, to, period, by)
	if err != nil {
		w.internal(c, "read the usage", err)
		return
	}
	sav, err := usage.Savings(ctx, w.store, orgID, from.AddDate(0, -11, 0), to, w.CopyRateMiBPerSecond)
	if err != nil {
		w.internal(c, "estimate the savings", err)
		return
	}
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', 2, 64) }
	dur := func(h float64) string { return (time.Duration(h * float64(time.Hour))).Round(time.Second).String() }
	layout := time.DateOnly
	if period == "month" {
		layout = "2006-01"
	}
	v := ui.Usage{From: from.Format(time.DateOnly), To: to.Format(time.DateOnly), Period: period, By: by}
	for _, r := range rep.Items {
		v.Rows = append(v.Rows, ui.UsageRow{
			Bucket: r.Bucket.Format(layout), Key: r.Key, Name: r.Name, CloneHours: f(r.CloneHours), Clones: strconv.FormatInt(r.Clones, 10),
			CloneGiBh: f(r.CloneStorageGiBHours), SnapshotGiBh: f(r.SnapshotStorageGiBHours),
		})
	}
	for _, s := range sav.Items {
		v.Savings = append(v.Savings, ui.SavingsRow{
			Month: s.Month.Format("2006-01"), Clones: strconv.FormatInt(s.Clones, 10), FullCopyGiBh: f(s.FullCopyGiBHours),
			ThinGiBh: f(s.ThinGiBHours), SavedGiBh: f(s.SavedGiBHours), FullCopyTime: dur(s.FullCopyHours), ThinTime: dur(s.ThinProvisionHours),
		})
	}
	q := url.Values{"from": {v.From}, "to": {v.To}, "period": {period}, "by": {by}}
	base := "/api/v1/orgs/" + access.Org(c).Slug + "/usage?"
	q.Set("format", "csv")
	v.CSVURL = base + q.Encode()
	q.Set("format", "json")
	v.JSONURL = base + q.Encode()
	w.render(c, p.Status, ui.UsagePage(p, v))
}

// billingPage shows the plan, limits, this period's use with the
// projected invoice, and the invoices.
func (w *Web) billingPage(c *gin.Context) {
	p := w.page(c, "Billing")
	sum, err := w.Billing.Summary(c.Request.Context(), access.OrgID(c))
	if err != nil {
		w.internal(c, "read the billing", err)
		return
	}
	if c.Query("checkout") == "done" {
		p.Flash = append(p.Flash, ui.Flash{Kind: "info", Text: "Thank you: the plan changes as soon as Stripe confirms the subscription."})
	}
	limit := func(v *int, unit string) string {
		if v == nil {
			return "unlimited"
		}
		return strconv.Itoa(*v) + unit
	}
	money := func(cents int64) string { return fmt.Sprintf("%.2f %s", float64(cents)/100, sum.Currency) }
	v := ui.Billing{
		Enabled: sum.Enabled, Plan: sum.Plan, SubscribedPlan: sum.SubscribedPlan, Status: sum.SubscriptionStatus,
		PeriodStart: sum.PeriodStart.Format(time.DateOnly), PeriodEnd: sum.PeriodEnd.Format(time.DateOnly),
		CloneHours: strconv.FormatFloat(sum.CloneHours, 'f', 2, 64), StorageGiBHours: strconv.FormatFloat(sum.StorageGiBHours, 'f', 2, 64),
		Projected: money(sum.ProjectedCents), CanManage: rbac.Can(access.Role(c), rbac.BillingManage),
		Limits: []ui.Limit{
			{Name: "Clones at once", Value: limit(sum.Limits.Clones, "")},
			{Name: "Agents", Value: limit(sum.Limits.Agents, "")},
			{Name: "Storage", Value: limit(sum.Limits.StorageGiB, " GiB")},
		},
	}
	if sum.GraceUntil != nil {
		v.GraceUntil = sum.GraceUntil.UTC().Format(time.RFC3339)
	}
	for _, pl := range w.Billing.Config().Plans {
		if pl.PriceID != "" && pl.Name != sum.SubscribedPlan {
			v.PaidPlans = append(v.PaidPlans, pl.Name)
		}
	}
	for _, in := range sum.Invoices {
		iv := ui.Invoice{Number: in.Number, Status: in.Status, Amount: fmt.Sprintf("%.2f %s", float64(in.AmountDue)/100, in.Currency)}
		if u, err := url.Parse(in.URL); err == nil && u.Scheme == "https" {
			iv.URL = in.URL // only Stripe's https links become links
		}
		if in.PeriodEnd != nil {
			iv.PeriodEnd = in.PeriodEnd.Format(time.DateOnly)
		}
		v.Invoices = append(v.Invoices, iv)
	}
	w.render(c, p.Status, ui.BillingPage(p, v))
}

// billingRedirect sends the browser to Stripe (Checkout or the portal),
// or back to the Billing page with the reason.
func (w *Web) billingRedirect(c *gin.Context, u string, err error) {
	var pe *billing.PlanError
	switch {
	case errors.Is(err, billing.ErrDisabled):
		w.errorPage(c, http.StatusConflict, err.Error())
	case errors.As(err, &pe):
		w.errorPage(c, http.StatusBadRequest, err.Error())
	case err != nil:
		w.logger.Warn("billing: Stripe refused", "err", err)
		w.errorPage(c, http.StatusBadGateway, "Stripe did not answer; try again.")
	default:
		c.Redirect(http.StatusSeeOther, u)
	}
}

// checkout starts a Stripe Checkout for the form's plan.
func (w *Web) checkout(c *gin.Context) {
	org := access.Org(c)
	back := w.auth.BaseURL() + "/o/" + org.Slug + "/billing"
	u, err := w.Billing.Checkout(c.Request.Context(), org.ID, org.Name, c.PostForm("plan"), back+"?checkout=done", back)
	w.billingRedirect(c, u, err)
}

// portal opens the Stripe customer portal.
func (w *Web) portal(c *gin.Context) {
	org := access.Org(c)
	u, err := w.Billing.Portal(c.Request.Context(), org.ID, org.Name, w.auth.BaseURL()+"/o/"+org.Slug+"/billing")
	w.billingRedirect(c, u, err)
}
