package store

import (
	"context"
	"errors"
	"maps"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// BillingAccount is an organization's Stripe customer and subscription.
type BillingAccount struct {
	OrgID                string `gorm:"primaryKey"`
	StripeCustomerID     *string
	StripeSubscriptionID string
	Plan                 string
	SubscriptionStatus   string
	CurrentPeriodStart   *time.Time
	CurrentPeriodEnd     *time.Time
	PaymentFailedAt      *time.Time
	GraceUntil           *time.Time
	UpdatedAt            time.Time
}

// TableName is the table of BillingAccount.
func (BillingAccount) TableName() string { return "billing_accounts" }

// CustomerID is the Stripe customer ID, "" when none was made yet.
func (b *BillingAccount) CustomerID() string {
	if b == nil || b.StripeCustomerID == nil {
		return ""
	}
	return *b.StripeCustomerID
}

// BillingAccount returns orgID's account; an organization that never
// touched billing has the zero account (no customer, no plan).
func (s *Store) BillingAccount(ctx context.Context, orgID string) (*BillingAccount, error) {
	var b BillingAccount
	err := s.conn(ctx).Where("org_id = ?", orgID).Take(&b).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return &BillingAccount{OrgID: orgID}, nil
	}
	return &b, err
}

// BillingAccountByCustomer returns the account of a Stripe customer
// (ErrNotFound for a customer of no organization).
func (s *Store) BillingAccountByCustomer(ctx context.Context, customerID string) (*BillingAccount, error) {
	var b BillingAccount
	if err := s.conn(ctx).Where("stripe_customer_id = ?", customerID).Take(&b).Error; err != nil {
		return nil, notFound(err)
	}
	return &b, nil
}

// SetStripeCustomer records customerID as orgID's Stripe customer unless
// it has one already, and returns the one it has (the first to be
// recorded wins a race; the other customer is left unused).
func (s *Store) SetStripeCustomer(ctx context.Context, orgID, customerID string) (string, error) {
	err := s.conn(ctx).Exec(`INSERT INTO billing_accounts (org_id, stripe_customer_id, updated_at) VALUES (?, ?, ?)
		ON CONFLICT (org_id) DO UPDATE SET stripe_customer_id = excluded.stripe_customer_id, updated_at = excluded.updated_at
		WHERE billing_accounts.stripe_customer_id IS NULL`, orgID, customerID, s.now()).Error
	if err != nil {
		return "", err
	}
	b, err := s.BillingAccount(ctx, orgID)
	if err != nil {
		return "", err
	}
	return b.CustomerID(), nil
}

// BillingInvoice is an invoice as Stripe's webhooks reported it.
type BillingInvoice struct {
	StripeInvoiceID  string `gorm:"primaryKey"`
	OrgID            string
	Number           string
	Status           string
	Currency         string
	AmountDue        int64
	AmountPaid       int64
	HostedInvoiceURL string
	PeriodStart      *time.Time
	PeriodEnd        *time.Time
	CreatedAt        time.Time
}

// TableName is the table of BillingInvoice.
func (BillingInvoice) TableName() string { return "billing_invoices" }

// ListInvoices lists orgID's newest invoices, at most limit.
func (s *Store) ListInvoices(ctx context.Context, orgID string, limit int) ([]BillingInvoice, error) {
	var out []BillingInvoice
	err := s.conn(ctx).Where("org_id = ?", orgID).Order("created_at DESC").Limit(limit).Find(&out).Error
	return out, err
}

// BillingEventChange is what one Stripe webhook event changes: columns
// of the organization's billing account and an invoice to record.
type BillingEventChange struct {
	EventID string
	Type    string
	OrgID   string
	Account map[string]any
	Invoice *BillingInvoice
}

// ApplyBillingEvent applies ch once per Stripe event ID, in one
// transaction with the record of the event: a redelivered event changes
// nothing and reports false.
func (s *Store) ApplyBillingEvent(ctx context.Context, ch BillingEventChange) (bool, error) {
	applied := false
	err := s.conn(ctx).Transaction(func(tx *gorm.DB) error {
		res := tx.Exec(`INSERT INTO billing_webhook_events (event_id, type, org_id, received_at) VALUES (?, ?, ?, ?)
			ON CONFLICT (event_id) DO NOTHING`, ch.EventID, ch.Type, ch.OrgID, s.now())
		if res.Error != nil || res.RowsAffected == 0 {
			return res.Error
		}
		applied = true
		if ch.OrgID == "" {
			return nil
		}
		if len(ch.Account) > 0 {
			cols := map[string]any{"updated_at": s.now()}
			maps.Copy(cols, ch.Account)
			if err := tx.Exec(`INSERT INTO billing_accounts (org_id, updated_at) VALUES (?, ?) ON CONFLICT (org_id) DO NOTHING`, ch.OrgID, s.now()).Error; err != nil {
				return err
			}
			if err := tx.Model(&BillingAccount{}).Where("org_id = ?", ch.OrgID).Updates(cols).Error; err != nil {
				return err
			}
		}
		if ch.Invoice != nil {
			inv := *ch.Invoice
			inv.OrgID = ch.OrgID
			if inv.CreatedAt.IsZero() {
				inv.CreatedAt = s.now()
			}
			return tx.Clauses(clause.OnConflict{
				Columns:   []clause.Column{{Name: "stripe_invoice_id"}},
				DoUpdates: clause.AssignmentColumns([]string{"status", "amount_due", "amount_paid", "hosted_invoice_url", "number"}),
			}).Create(&inv).Error
		}
		return nil
	})
	return applied, err
}

// BillingUsageReport is one metered quantity of one organization for one
// hour, sent to Stripe until it is accepted.
type BillingUsageReport struct {
	ID             int64 `gorm:"primaryKey"`
	OrgID          string
	PeriodStart    time.Time
	Meter          string
	Quantity       int64
	IdempotencyKey string
	Status         string
	Attempts       int
	LastError      string
	NextAttemptAt  time.Time
	SentAt         *time.Time
	CreatedAt      time.Time
}

// TableName is the table of BillingUsageReport.
func (BillingUsageReport) TableName() string { return "billing_usage_reports" }

// Report statuses.
const (
	ReportPending = "pending"
	ReportSent    = "sent"
)

// RecordReportHour freezes the reports of the hour starting at hour,
// once across replicas: it returns false (and stores nothing) when that
// hour was recorded already.
func (s *Store) RecordReportHour(ctx context.Context, hour time.Time, reports []BillingUsageReport) (bool, error) {
	recorded := false
	err := s.conn(ctx).Transaction(func(tx *gorm.DB) error {
		res := tx.Exec(`INSERT INTO billing_report_hours (period_start, computed_at) VALUES (?, ?) ON CONFLICT DO NOTHING`, hour.UTC(), s.now())
		if res.Error != nil || res.RowsAffected == 0 {
			return res.Error
		}
		recorded = true
		if len(reports) == 0 {
			return nil
		}
		now := s.now()
		for i := range reports {
			// Due at once: the hour is over.
			reports[i].Status, reports[i].NextAttemptAt, reports[i].CreatedAt = ReportPending, hour.UTC(), now
		}
		return tx.Clauses(clause.OnConflict{DoNothing: true}).CreateInBatches(&reports, 1000).Error
	})
	return recorded, err
}

// LastReportHour is the newest hour recorded (zero when none).
func (s *Store) LastReportHour(ctx context.Context) (time.Time, error) {
	var t *time.Time
	err := s.conn(ctx).Raw(`SELECT max(period_start) FROM billing_report_hours`).Scan(&t).Error
	if t == nil {
		return time.Time{}, err
	}
	return t.UTC(), err
}

// ClaimDueReports takes up to limit pending reports that are due, and
// holds them for lease (another replica does not take them meanwhile; a
// replica that dies lets them come due again).
func (s *Store) ClaimDueReports(ctx context.Context, now time.Time, limit int, lease time.Duration) ([]BillingUsageReport, error) {
	now = now.UTC()
	var out []BillingUsageReport
	err := s.conn(ctx).Raw(`UPDATE billing_usage_reports SET next_attempt_at = ?
		WHERE id IN (SELECT id FROM billing_usage_reports WHERE status = 'pending' AND next_attempt_at <= ?
			ORDER BY next_attempt_at, id LIMIT ? FOR UPDATE SKIP LOCKED)
		RETURNING *`, now.Add(lease), now, limit).Scan(&out).Error
	return out, err
}

// MarkReportSent records that Stripe accepted report id.
func (s *Store) MarkReportSent(ctx context.Context, id int64) error {
	return s.conn(ctx).Model(&BillingUsageReport{}).Where("id = ?", id).Updates(map[string]any{
		"status": ReportSent, "sent_at": s.now(), "attempts": gorm.Expr("attempts + 1"), "last_error": "",
	}).Error
}

// MarkReportFailed records a failed attempt; the report is tried again at
// next.
func (s *Store) MarkReportFailed(ctx context.Context, id int64, errText string, next time.Time) error {
	if len(errText) > 500 {
		errText = errText[:500]
	}
	return s.conn(ctx).Model(&BillingUsageReport{}).Where("id = ?", id).Updates(map[string]any{
		"attempts": gorm.Expr("attempts + 1"), "last_error": errText, "next_attempt_at": next.UTC(),
	}).Error
}

// ListUsageReports lists orgID's reports, newest first (tests, the
// Billing page).
func (s *Store) ListUsageReports(ctx context.Context, orgID string, limit int) ([]BillingUsageReport, error) {
	var out []BillingUsageReport
	err := s.conn(ctx).Where("org_id = ?", orgID).Order("period_start DESC, meter").Limit(limit).Find(&out).Error
	return out, err
}

// BillingCustomers maps every organization with a Stripe customer to it.
func (s *Store) BillingCustomers(ctx context.Context) (map[string]string, error) {
	var rows []BillingAccount
	if err := s.conn(ctx).Select("org_id", "stripe_customer_id").Where("stripe_customer_id IS NOT NULL").Find(&rows).Error; err != nil {
		return nil, err
	}
	out := make(map[string]string, len(rows))
	for _, r := range rows {
		out[r.OrgID] = r.CustomerID()
	}
	return out, nil
}

// CountActiveAgents counts orgID's agents that are not revoked.
func (s *Store) CountActiveAgents(ctx context.Context, orgID string) (int64, error) {
	var n int64
	err := s.conn(ctx).Model(&Agent{}).Where("org_id = ? AND revoked_at IS NULL", orgID).Count(&n).Error
	return n, err
}
