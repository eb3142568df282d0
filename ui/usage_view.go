package ui

// Usage is the usage page: a table of rows (already formatted), the
// filter, the monthly savings and export links.
type Usage struct {
	From, To, Period, By string
	Rows                 []UsageRow
	Savings              []SavingsRow
	CSVURL, JSONURL      string
}

// UsageRow is one row of the usage table, formatted.
type UsageRow struct {
	Bucket, Key, Name                           string
	CloneHours, Clones, CloneGiBh, SnapshotGiBh string
}

// SavingsRow is one month of estimated savings, formatted.
type SavingsRow struct {
	Month, Clones, FullCopyGiBh, ThinGiBh, SavedGiBh, FullCopyTime, ThinTime string
}

// Billing is the billing page.
type Billing struct {
	Enabled         bool
	Plan            string
	SubscribedPlan  string
	Status          string
	GraceUntil      string
	Limits          []Limit
	PeriodStart     string
	PeriodEnd       string
	CloneHours      string
	StorageGiBHours string
	Projected       string
	Invoices        []Invoice
	PaidPlans       []string
	CanManage       bool
}

// Limit is one plan limit, formatted ("unlimited" when none).
type Limit struct{ Name, Value string }

// Invoice is one invoice line.
type Invoice struct{ Number, Status, Amount, URL, PeriodEnd string }
