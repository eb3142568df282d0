package billing

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/webhook"
	"gorm.io/gorm"

	"github.com/thinlab/thinlab/platform/notify"
	"github.com/thinlab/thinlab/platform/store"
)

// Webhooks. Stripe calls the platform's webhook route without a session
// or token; what makes it safe is the signature: webhook.ConstructEvent
// checks the Stripe-Signature header (an HMAC-SHA256 over the timestamp
// and the exact body, keyed with billing.webhookSecret) and refuses a
// timestamp older than stripe-go's tolerance (5 minutes), so a forged or
// replayed old request changes nothing. What an event changes is looked
// up from its Stripe customer (created by this platform, with the
// organization's ID in its metadata), never from a request field the
// caller chooses; and each event ID is applied once (a redelivered event
// is acknowledged and ignored).

// SignatureError is a webhook request whose signature is wrong, missing
// or stale: answered 400, nothing changed.
type SignatureError struct{ Err error }

func (e *SignatureError) Error() string { return "Stripe webhook signature refused: " + e.Err.Error() }
func (e *SignatureError) Unwrap() error { return e.Err }

// Applied is what a webhook event did: OrgID is empty when it changed
// nothing (redelivered, or not about one of this platform's customers).
type Applied struct {
	EventID, Type, OrgID string
}

// HandleWebhook verifies and applies one Stripe webhook request.
func (b *Billing) HandleWebhook(ctx context.Context, payload []byte, signature string) (Applied, error) {
	if !b.Enabled() {
		return Applied{}, ErrDisabled
	}
	ev, err := webhook.ConstructEvent(payload, signature, b.cfg.WebhookSecret)
	if err != nil {
		return Applied{}, &SignatureError{Err: err}
	}
	if ev.ID == "" || len(ev.ID) > 200 {
		return Applied{}, &SignatureError{Err: errors.New("event without a usable id")}
	}
	at := time.Unix(ev.Created, 0).UTC()
	ch := store.BillingEventChange{EventID: ev.ID, Type: string(ev.Type)}
	switch ev.Type {
	case "customer.subscription.created", "customer.subscription.updated", "customer.subscription.deleted":
		var sub stripe.Subscription
		if err := json.Unmarshal(ev.Data.Raw, &sub); err != nil {
			return Applied{}, fmt.Errorf("event %s: read the subscription: %w", ev.ID, err)
		}
		if sub.Customer == nil {
			break
		}
		if ch.OrgID, err = b.orgOfCustomer(ctx, sub.Customer.ID); err != nil {
			return Applied{}, err
		}
		if ev.Type == "customer.subscription.deleted" {
			ch.Account = map[string]any{"plan": "", "subscription_status": string(stripe.SubscriptionStatusCanceled), "stripe_subscription_id": ""}
			break
		}
		plan := ""
		if sub.Items != nil {
			for _, it := range sub.Items.Data {
				if it.Price == nil {
					continue
				}
				if p, ok := b.cfg.planByPrice(it.Price.ID); ok {
					plan = p.Name
					break
				}
			}
		}
		if plan == "" {
			b.log.Warn("billing: a subscription with no price of a configured plan; the free plan applies", "event", ev.ID, "subscription", sub.ID)
		}
		ch.Account = map[string]any{
			"stripe_subscription_id": sub.ID, "plan": plan, "subscription_status": string(sub.Status),
			"current_period_start": unixOrNil(sub.CurrentPeriodStart), "current_period_end": unixOrNil(sub.CurrentPeriodEnd),
		}
		if sub.Status == stripe.SubscriptionStatusActive || sub.Status == stripe.SubscriptionStatusTrialing {
			ch.Account["payment_failed_at"], ch.Account["grace_until"] = nil, nil
		}
	case "invoice.paid", "invoice.payment_failed":
		var inv stripe.Invoice
		if err := json.Unmarshal(ev.Data.Raw, &inv); err != nil {
			return Applied{}, fmt.Errorf("event %s: read the invoice: %w", ev.ID, err)
		}
		if inv.Customer == nil {
			break
		}
		if ch.OrgID, err = b.orgOfCustomer(ctx, inv.Customer.ID); err != nil {
			return Applied{}, err
		}
		if ch.OrgID == "" {
			break
		}
		ch.Invoice = &store.BillingInvoice{
			StripeInvoiceID: inv.ID, Number: inv.Number, Status: string(inv.Status), Currency: string(inv.Currency),
			AmountDue: inv.AmountDue, AmountPaid: inv.AmountPaid, HostedInvoiceURL: inv.HostedInvoiceURL,
			PeriodStart: unixOrNil(inv.PeriodStart), PeriodEnd: unixOrNil(inv.PeriodEnd), CreatedAt: time.Unix(inv.Created, 0).UTC(),
		}
		if ev.Type == "invoice.paid" {
			ch.Account = map[string]any{"payment_failed_at": nil, "grace_until": nil}
		} else {
			// The first failure starts the grace period; further
			// failures (Stripe's retries) do not extend it.
			ch.Account = map[string]any{
				"payment_failed_at": gorm.Expr("coalesce(payment_failed_at, ?)", at),
				"grace_until":       gorm.Expr("coalesce(grace_until, ?)", at.Add(b.cfg.GracePeriod)),
			}
		}
	}
	if ch.OrgID == "" {
		ch.Account, ch.Invoice = nil, nil
	}
	applied, err := b.store.ApplyBillingEvent(ctx, ch)
	if err != nil {
		return Applied{}, err
	}
	out := Applied{EventID: ev.ID, Type: string(ev.Type)}
	if applied && ch.OrgID != "" {
		b.log.Info("billing: Stripe event applied", "event", ev.ID, "type", ev.Type, "org", ch.OrgID)
		out.OrgID = ch.OrgID
		if ev.Type == "invoice.payment_failed" {
			b.notify(ctx, notify.Event{
				OrgID: ch.OrgID, Name: notify.BillingPaymentFailed, Target: ch.Invoice.StripeInvoiceID,
				Message:   fmt.Sprintf("payment of invoice %s failed; the plan's limits stay for the grace period (%s), then the free plan's apply (no data is deleted)", ch.Invoice.Number, b.cfg.GracePeriod),
				SourceKey: "stripe:" + ev.ID,
			})
		}
	}
	return out, nil
}

// orgOfCustomer is the organization of a Stripe customer ("" for one
// this platform did not make).
func (b *Billing) orgOfCustomer(ctx context.Context, customerID string) (string, error) {
	if customerID == "" {
		return "", nil
	}
	acc, err := b.store.BillingAccountByCustomer(ctx, customerID)
	if errors.Is(err, store.ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return acc.OrgID, nil
}

func unixOrNil(sec int64) *time.Time {
	if sec <= 0 {
		return nil
	}
	t := time.Unix(sec, 0).UTC()
	return &t
}
