package platformapi

import "time"

// UsageRow is one organization's use in one bucket (a UTC day or month)
// for one key: the whole organization (key ""), an agent (its ID), a user
// (the clone owner's ID; "" for clones not made through the platform) or
// a clone (AGENT/CLONE).
type UsageRow struct {
	Bucket time.Time `json:"bucket"`
	Key    string    `json:"key"`
	// Name is what the key stands for (agent or user name), when known.
	Name string `json:"name,omitempty"`
	// CloneHours is the time clones existed; Clones how many distinct
	// clones existed in the bucket.
	CloneHours float64 `json:"clone_hours"`
	Clones     int64   `json:"clones"`
	// CloneStorageGiBHours is the space clones wrote (disk actually
	// used) over time; SnapshotStorageGiBHours the pools' space beyond
	// the clones' writes (snapshots and main data). Pool storage is per
	// agent: rows by user or by clone leave it 0.
	CloneStorageGiBHours    float64 `json:"clone_storage_gib_hours"`
	SnapshotStorageGiBHours float64 `json:"snapshot_storage_gib_hours"`
	// Snapshots is the most snapshots the key's pools held at once.
	Snapshots int64 `json:"snapshots"`
}

// UsageReport answers GET /api/v1/orgs/ORG/usage.
type UsageReport struct {
	From   time.Time  `json:"from"`
	To     time.Time  `json:"to"`
	Period string     `json:"period"` // day or month
	By     string     `json:"by"`     // org, agent, user or clone
	Items  []UsageRow `json:"items"`
}

// SavingsMonth is the estimated saving of thin clones in one month: what
// the same clones would have taken as full copies.
type SavingsMonth struct {
	Month  time.Time `json:"month"`
	Clones int64     `json:"clones"`
	// FullCopyGiBHours is each clone's logical size times its hours;
	// ThinGiBHours what the clones really used (their own writes).
	FullCopyGiBHours float64 `json:"full_copy_gib_hours"`
	ThinGiBHours     float64 `json:"thin_gib_hours"`
	SavedGiBHours    float64 `json:"saved_gib_hours"`
	// FullCopyHours is the time full copies would have taken to make at
	// CopyRateMiBPerSecond; ThinProvisionHours the clones' real cloning
	// time.
	FullCopyHours        float64 `json:"full_copy_hours"`
	ThinProvisionHours   float64 `json:"thin_provision_hours"`
	CopyRateMiBPerSecond float64 `json:"copy_rate_mib_per_second"`
}

// SavingsReport answers GET /api/v1/orgs/ORG/usage/savings.
type SavingsReport struct {
	Items []SavingsMonth `json:"items"`
}

// PlanLimits are a plan's limits; nil is unlimited.
type PlanLimits struct {
	Clones     *int `json:"clones,omitempty"`
	Agents     *int `json:"agents,omitempty"`
	StorageGiB *int `json:"storage_gib,omitempty"`
}

// Invoice is one Stripe invoice of the organization.
type Invoice struct {
	ID         string     `json:"id"`
	Number     string     `json:"number"`
	Status     string     `json:"status"`
	Currency   string     `json:"currency"`
	AmountDue  int64      `json:"amount_due"`
	AmountPaid int64      `json:"amount_paid"`
	URL        string     `json:"url,omitempty"`
	PeriodEnd  *time.Time `json:"period_end,omitempty"`
}

// Billing answers GET /api/v1/orgs/ORG/billing.
type Billing struct {
	Enabled bool `json:"enabled"`
	// Plan is the plan whose limits apply now; SubscribedPlan the one
	// paid for (they differ after a failed payment's grace period).
	Plan               string     `json:"plan"`
	SubscribedPlan     string     `json:"subscribed_plan,omitempty"`
	SubscriptionStatus string     `json:"subscription_status,omitempty"`
	GraceUntil         *time.Time `json:"grace_until,omitempty"`
	Limits             PlanLimits `json:"limits"`
	PeriodStart        time.Time  `json:"period_start"`
	PeriodEnd          time.Time  `json:"period_end"`
	// CloneHours and StorageGiBHours are this period's use so far.
	CloneHours      float64 `json:"clone_hours"`
	StorageGiBHours float64 `json:"storage_gib_hours"`
	// ProjectedCents is the invoice this period's use so far projects to
	// by its end, at the plan's prices, in Currency.
	ProjectedCents int64     `json:"projected_cents"`
	Currency       string    `json:"currency"`
	Invoices       []Invoice `json:"invoices"`
}

// BillingLink answers the checkout and portal routes: where to send the
// browser.
type BillingLink struct {
	URL string `json:"url"`
}
