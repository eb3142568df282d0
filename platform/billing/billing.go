package billing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"time"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"

	"github.com/thinlab/thinlab/platform/notify"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/platformapi"
)

// Billing is the platform's billing; a disabled one limits nothing.
type Billing struct {
	cfg    Config
	store  *store.Store
	log    *slog.Logger
	stripe *client.API
	// Now is the clock (tests move it past a grace period).
	Now func() time.Time
	// Notifier, when set, tells organizations of failed payments and of
	// creations refused by their plan (billing.* notifications).
	Notifier *notify.Notifier
}

// New returns the billing of cfg (validated by the caller). httpClient
// is the Stripe client's (nil: the default).
func New(cfg Config, st *store.Store, logger *slog.Logger, httpClient *http.Client) *Billing {
	cfg = cfg.WithDefaults()
	if logger == nil {
		logger = slog.Default()
	}
	b := &Billing{cfg: cfg, store: st, log: logger, Now: time.Now}
	if cfg.On() {
		bc := &stripe.BackendConfig{
			HTTPClient: httpClient,
			// Retries are the report loop's (persisted, with the same
			// idempotency key), not the client's in memory.
			MaxNetworkRetries: new(int64(0)),
			LeveledLogger:     &stripe.LeveledLogger{Level: stripe.LevelNull},
		}
		if cfg.APIURL != "" {
			bc.URL = new(cfg.APIURL)
		}
		b.stripe = client.New(cfg.SecretKey, stripe.NewBackendsWithConfig(bc))
	}
	return b
}

// Enabled reports whether billing (limits, Stripe) is on.
func (b *Billing) Enabled() bool { return b != nil && b.cfg.On() }

// Config is the configuration billing runs with.
func (b *Billing) Config() Config { return b.cfg }

// Effective is the plan whose limits apply to an organization now.
type Effective struct {
	Plan    Plan
	Account *store.BillingAccount
	// Subscribed is the plan paid for ("" without a subscription); it
	// differs from Plan after a failed payment's grace period.
	Subscribed string
}

// PlanOf returns the plan that applies to orgID: its subscription's,
// while the subscription is active or within the grace period of a
// failed payment, and the free plan otherwise.
func (b *Billing) PlanOf(ctx context.Context, orgID string) (Effective, error) {
	acc, err := b.store.BillingAccount(ctx, orgID)
	if err != nil {
		return Effective{}, err
	}
	free, _ := b.cfg.plan(b.cfg.FreePlan)
	eff := Effective{Plan: free, Account: acc, Subscribed: acc.Plan}
	p, ok := b.cfg.plan(acc.Plan)
	if !ok || acc.Plan == b.cfg.FreePlan {
		return eff, nil
	}
	switch acc.SubscriptionStatus {
	case "active", "trialing", "past_due", "unpaid", "incomplete":
	default:
		return eff, nil // canceled, incomplete_expired: the free plan
	}
	if acc.GraceUntil != nil && !b.Now().Before(*acc.GraceUntil) {
		return eff, nil // a failed payment's grace period is over
	}
	eff.Plan = p
	return eff, nil
}

// LimitError is a creation refused by a plan limit; its message names
// the limit, the plan and what to do.
type LimitError struct {
	Limit   string // clones, agents, storageGiB
	Plan    string
	Max     int
	Current int64
}

func (e *LimitError) Error() string {
	what := map[string]string{
		"clones":     "clones at once",
		"agents":     "agents",
		"storageGiB": "GiB of storage",
	}[e.Limit]
	return fmt.Sprintf("plan limit reached: the %s plan allows %d %s and the organization has %d; remove some or upgrade the plan on the Billing page (limit %s)",
		e.Plan, e.Max, what, e.Current, e.Limit)
}

// ErrLimit matches every *LimitError.
var ErrLimit = errors.New("plan limit reached")

// Is makes errors.Is(err, ErrLimit) true.
func (e *LimitError) Is(target error) bool { return target == ErrLimit }

// CheckClone refuses one more clone of orgID, which has clones clones and
// whose pools use storageBytes, when its plan's limits do not allow it.
// Disabled billing allows everything.
func (b *Billing) CheckClone(ctx context.Context, orgID string, clones int64, storageBytes uint64) error {
	if !b.Enabled() {
		return nil
	}
	eff, err := b.PlanOf(ctx, orgID)
	if err != nil {
		return err
	}
	l := eff.Plan.Limits
	if l.Clones != nil && clones >= int64(*l.Clones) {
		return b.LimitReached(ctx, orgID, &LimitError{Limit: "clones", Plan: eff.Plan.Name, Max: *l.Clones, Current: clones})
	}
	if l.StorageGiB != nil && storageBytes>>30 >= uint64(max(*l.StorageGiB, 0)) {
		return b.LimitReached(ctx, orgID, &LimitError{Limit: "storageGiB", Plan: eff.Plan.Name, Max: *l.StorageGiB, Current: int64(storageBytes >> 30)})
	}
	return nil
}

// LimitReached tells orgID that a creation was refused by its plan (once
// per limit and hour) and returns le. Call it outside any transaction.
func (b *Billing) LimitReached(ctx context.Context, orgID string, le *LimitError) error {
	b.notify(ctx, notify.Event{
		OrgID: orgID, Name: notify.BillingLimitReached, Target: le.Limit, Message: le.Error(),
		SourceKey: "limit:" + orgID + ":" + le.Limit + ":" + b.Now().UTC().Truncate(time.Hour).Format(time.RFC3339),
	})
	return le
}

// notify records e, logging a failure: a notification never decides a
// billing answer.
func (b *Billing) notify(ctx context.Context, e notify.Event) {
	if b.Notifier == nil {
		return
	}
	err := b.store.InTx(ctx, func(tx *store.Store) error {
		_, err := b.Notifier.Record(ctx, tx, e)
		return err
	})
	if err != nil {
		b.log.Warn("billing: record a notification", "event", e.Name, "org", e.OrgID, "err", err)
		return
	}
	b.Notifier.Committed()
}

// AgentCap is the enrollment's agent limit (store.AgentCap); nil when
// billing is disabled.
func (b *Billing) AgentCap(ctx context.Context) store.AgentCap {
	if !b.Enabled() {
		return nil
	}
	return func(orgID string, count int64) error {
		eff, err := b.PlanOf(ctx, orgID)
		if err != nil {
			return err
		}
		if l := eff.Plan.Limits.Agents; l != nil && count >= int64(*l) {
			// Inside the enrollment's transaction: the caller notifies
			// (LimitReached) after it ended, as a notification written
			// now would wait for that transaction's locks.
			return &LimitError{Limit: "agents", Plan: eff.Plan.Name, Max: *l, Current: count}
		}
		return nil
	}
}

// ErrDisabled is returned by Stripe operations when billing is off.
var ErrDisabled = errors.New("billing is not enabled on this platform (billing.enabled)")

// Customer returns orgID's Stripe customer, creating it on first use.
// The organization's ID is in the customer's metadata, so that a
// customer can be traced back.
func (b *Billing) Customer(ctx context.Context, orgID, orgName string) (string, error) {
	if !b.Enabled() {
		return "", ErrDisabled
	}
	acc, err := b.store.BillingAccount(ctx, orgID)
	if err != nil {
		return "", err
	}
	if id := acc.CustomerID(); id != "" {
		return id, nil
	}
	p := &stripe.CustomerParams{Name: new(orgName)}
	p.Context = ctx
	p.AddMetadata("thinlab_org_id", orgID)
	// The same key for every first attempt of this organization: two
	// concurrent requests make one customer.
	p.SetIdempotencyKey("thinlab-customer-" + orgID)
	c, err := b.stripe.Customers.New(p)
	if err != nil {
		return "", fmt.Errorf("create the Stripe customer: %w", err)
	}
	return b.store.SetStripeCustomer(ctx, orgID, c.ID)
}

// Checkout starts a Stripe Checkout session subscribing orgID to plan
// and returns its URL.
func (b *Billing) Checkout(ctx context.Context, orgID, orgName, planName, successURL, cancelURL string) (string, error) {
	if !b.Enabled() {
		return "", ErrDisabled
	}
	p, ok := b.cfg.plan(planName)
	if !ok || p.PriceID == "" {
		return "", &PlanError{Plan: planName}
	}
	cust, err := b.Customer(ctx, orgID, orgName)
	if err != nil {
		return "", err
	}
	items := []*stripe.CheckoutSessionLineItemParams{{Price: new(p.PriceID), Quantity: new(int64(1))}}
	for _, m := range p.MeteredPriceIDs {
		items = append(items, &stripe.CheckoutSessionLineItemParams{Price: new(m)})
	}
	params := &stripe.CheckoutSessionParams{
		Mode:              new(string(stripe.CheckoutSessionModeSubscription)),
		Customer:          new(cust),
		ClientReferenceID: new(orgID),
		LineItems:         items,
		SuccessURL:        new(successURL),
		CancelURL:         new(cancelURL),
		SubscriptionData:  &stripe.CheckoutSessionSubscriptionDataParams{Metadata: map[string]string{"thinlab_org_id": orgID}},
	}
	params.Context = ctx
	s, err := b.stripe.CheckoutSessions.New(params)
	if err != nil {
		return "", fmt.Errorf("start the Stripe Checkout session: %w", err)
	}
	return s.URL, nil
}

// PlanError is an unknown or not purchasable plan.
type PlanError struct{ Plan string }

func (e *PlanError) Error() string {
	return fmt.Sprintf("plan %q cannot be bought: name one of the paid plans of the Billing page", e.Plan)
}

// Portal returns a Stripe customer portal URL for orgID.
func (b *Billing) Portal(ctx context.Context, orgID, orgName, returnURL string) (string, error) {
	if !b.Enabled() {
		return "", ErrDisabled
	}
	cust, err := b.Customer(ctx, orgID, orgName)
	if err != nil {
		return "", err
	}
	p := &stripe.BillingPortalSessionParams{Customer: new(cust), ReturnURL: new(returnURL)}
	p.Context = ctx
	s, err := b.stripe.BillingPortalSessions.New(p)
	if err != nil {
		return "", fmt.Errorf("open the Stripe customer portal: %w", err)
	}
	return s.URL, nil
}

// Summary is orgID's Billing page: plan, limits, this period's use so far
// with the projected invoice, and invoices.
func (b *Billing) Summary(ctx context.Context, orgID string) (platformapi.Billing, error) {
	now := b.Now().UTC()
	start := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	end := start.AddDate(0, 1, 0)
	out := platformapi.Billing{Enabled: b.Enabled(), PeriodStart: start, PeriodEnd: end, Invoices: []platformapi.Invoice{}}
	var plan Plan
	if b.Enabled() {
		eff, err := b.PlanOf(ctx, orgID)
		if err != nil {
			return out, err
		}
		plan = eff.Plan
		out.Plan, out.SubscribedPlan = plan.Name, eff.Subscribed
		out.SubscriptionStatus, out.GraceUntil = eff.Account.SubscriptionStatus, eff.Account.GraceUntil
		out.Limits = platformapi.PlanLimits{Clones: plan.Limits.Clones, Agents: plan.Limits.Agents, StorageGiB: plan.Limits.StorageGiB}
		if a := eff.Account; a.CurrentPeriodStart != nil && a.CurrentPeriodEnd != nil && a.CurrentPeriodEnd.After(*a.CurrentPeriodStart) {
			out.PeriodStart, out.PeriodEnd = a.CurrentPeriodStart.UTC(), a.CurrentPeriodEnd.UTC()
		}
	}
	used, err := b.store.OrgMeteredUsage(ctx, orgID, out.PeriodStart, now)
	if err != nil {
		return out, err
	}
	out.CloneHours = used.CloneSeconds / 3600
	out.StorageGiBHours = used.StorageByteSeconds / (1 << 30) / 3600
	out.Currency = plan.Currency
	if out.Currency == "" {
		out.Currency = "usd"
	}
	// Projection: the use so far, stretched to the whole period.
	elapsed := now.Sub(out.PeriodStart).Hours()
	total := out.PeriodEnd.Sub(out.PeriodStart).Hours()
	scale := 1.0
	if elapsed > 0 && total > elapsed {
		scale = total / elapsed
	}
	hoursPerMonth := 730.0
	cents := float64(plan.MonthlyCents) + scale*(out.CloneHours*plan.CloneHourCents+out.StorageGiBHours*plan.StorageGiBMonthCents/hoursPerMonth)
	out.ProjectedCents = int64(math.Round(cents))
	invs, err := b.store.ListInvoices(ctx, orgID, 24)
	if err != nil {
		return out, err
	}
	for _, in := range invs {
		out.Invoices = append(out.Invoices, platformapi.Invoice{
			ID: in.StripeInvoiceID, Number: in.Number, Status: in.Status, Currency: in.Currency,
			AmountDue: in.AmountDue, AmountPaid: in.AmountPaid, URL: in.HostedInvoiceURL, PeriodEnd: in.PeriodEnd,
		})
	}
	return out, nil
}
