package billing

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/stripe/stripe-go/v76"

	"github.com/thinlab/thinlab/platform/store"
)

// Reporting: every hour's metered usage of every organization with a
// Stripe customer is frozen once (store.RecordReportHour: one replica
// computes an hour; the quantities never change afterwards) as one
// report row per meter, and each row is sent to Stripe as a meter event
// until Stripe accepts it. The row's idempotency key, derived from
// (organization, hour, meter), is both the request's Idempotency-Key and
// the meter event's identifier: a report sent again (a lost answer, a
// replica that died mid-send) is the same event to Stripe and counts
// once. A failed send stays pending and is retried with backoff; nothing
// is dropped.
//
// An hour counts the usage the platform received in it (a sample that
// arrives late, after its agent was offline, is billed in the hour it
// arrives), so each sample is billed exactly once.

// settle is how long after an hour's end it is computed: samples being
// stored at the hour's end have committed by then.
const settle = time.Minute

// sendWorkers send reports to Stripe in parallel.
const sendWorkers = 8

// claimBatch is how many due reports a pass takes at once.
const claimBatch = 500

// IdempotencyKey is the key of orgID's report of meter for the hour
// starting at hour.
func IdempotencyKey(orgID string, hour time.Time, meter string) string {
	return fmt.Sprintf("thinlab-usage-%s-%d-%s", orgID, hour.UTC().Unix(), meter)
}

// ComputeHour freezes the reports of the hour starting at hour (once
// across replicas and runs); it reports whether this call did.
func (b *Billing) ComputeHour(ctx context.Context, hour time.Time) (bool, error) {
	hour = hour.UTC().Truncate(time.Hour)
	used, err := b.store.MeteredUsageReceived(ctx, hour, hour.Add(time.Hour))
	if err != nil {
		return false, err
	}
	customers, err := b.store.BillingCustomers(ctx)
	if err != nil {
		return false, err
	}
	var rows []store.BillingUsageReport
	add := func(org, meter string, q int64) {
		if q > 0 {
			rows = append(rows, store.BillingUsageReport{OrgID: org, PeriodStart: hour, Meter: meter, Quantity: q, IdempotencyKey: IdempotencyKey(org, hour, meter)})
		}
	}
	for _, u := range used {
		if customers[u.OrgID] == "" {
			continue // nobody to bill: an organization that never opened billing
		}
		add(u.OrgID, b.cfg.Meters.CloneSeconds, int64(math.Round(u.CloneSeconds)))
		add(u.OrgID, b.cfg.Meters.StorageMiBHours, int64(math.Round(u.StorageByteSeconds/(1<<20)/3600)))
	}
	return b.store.RecordReportHour(ctx, hour, rows)
}

// ComputeDue computes every hour that has ended (and settled) since the
// last one computed; the first run starts with the hour before now.
func (b *Billing) ComputeDue(ctx context.Context) error {
	now := b.Now().UTC()
	last, err := b.store.LastReportHour(ctx)
	if err != nil {
		return err
	}
	next := last.Add(time.Hour)
	if last.IsZero() {
		next = now.Add(-settle).Truncate(time.Hour).Add(-time.Hour)
	}
	for !next.Add(time.Hour + settle).After(now) {
		if _, err := b.ComputeHour(ctx, next); err != nil {
			return fmt.Errorf("usage report of %s: %w", next.Format(time.RFC3339), err)
		}
		next = next.Add(time.Hour)
	}
	return nil
}

// backoff is the wait before attempt n+1 of a failed report.
func backoff(attempts int) time.Duration {
	d := time.Minute << min(attempts, 6)
	return min(d, time.Hour)
}

// SendDue sends the reports that are due, and returns how many Stripe
// accepted and how many failed (they are retried later).
func (b *Billing) SendDue(ctx context.Context) (sent, failed int, err error) {
	if !b.Enabled() {
		return 0, 0, nil
	}
	customers, err := b.store.BillingCustomers(ctx)
	if err != nil {
		return 0, 0, err
	}
	var mu sync.Mutex
	for {
		due, err := b.store.ClaimDueReports(ctx, b.Now(), claimBatch, 2*time.Minute)
		if err != nil || len(due) == 0 {
			return sent, failed, err
		}
		work := make(chan store.BillingUsageReport)
		var wg sync.WaitGroup
		for range sendWorkers {
			wg.Go(func() {
				for r := range work {
					ok := b.send(ctx, r, customers[r.OrgID])
					mu.Lock()
					if ok {
						sent++
					} else {
						failed++
					}
					mu.Unlock()
				}
			})
		}
		for _, r := range due {
			work <- r
		}
		close(work)
		wg.Wait()
		if len(due) < claimBatch {
			return sent, failed, nil
		}
		if ctx.Err() != nil {
			return sent, failed, ctx.Err()
		}
	}
}

// send reports r to Stripe as a meter event and records the outcome.
func (b *Billing) send(ctx context.Context, r store.BillingUsageReport, customer string) bool {
	var err error
	if customer == "" {
		err = fmt.Errorf("organization %s has no Stripe customer", r.OrgID)
	} else {
		p := &stripe.BillingMeterEventParams{
			EventName:  new(r.Meter),
			Identifier: new(r.IdempotencyKey),
			Timestamp:  new(r.PeriodStart.Unix()),
			Payload:    map[string]string{"stripe_customer_id": customer, "value": strconv.FormatInt(r.Quantity, 10)},
		}
		p.Context = ctx
		p.SetIdempotencyKey(r.IdempotencyKey)
		_, err = b.stripe.BillingMeterEvents.New(p)
	}
	if err == nil {
		if err := b.store.MarkReportSent(ctx, r.ID); err != nil {
			// Sent but not recorded: it is sent again after the lease,
			// with the same key, which Stripe answers without counting.
			b.log.Error("billing: record a sent usage report", "report", r.ID, "err", err)
		}
		return true
	}
	next := b.Now().Add(backoff(r.Attempts))
	b.log.Warn("billing: usage report to Stripe failed; retried later", "org", r.OrgID, "hour", r.PeriodStart, "meter", r.Meter, "attempt", r.Attempts+1, "next", next, "err", err)
	if err := b.store.MarkReportFailed(ctx, r.ID, err.Error(), next); err != nil {
		b.log.Error("billing: record a failed usage report", "report", r.ID, "err", err)
	}
	return false
}

// Run computes and sends reports every ReportInterval until ctx ends.
func (b *Billing) Run(ctx context.Context) {
	if !b.Enabled() {
		return
	}
	t := time.NewTicker(b.cfg.ReportInterval)
	defer t.Stop()
	for {
		if err := b.ComputeDue(ctx); err != nil && ctx.Err() == nil {
			b.log.Error("billing: computing usage reports failed; retried at the next tick", "err", err)
		}
		if _, _, err := b.SendDue(ctx); err != nil && ctx.Err() == nil {
			b.log.Error("billing: sending usage reports failed; retried at the next tick", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
