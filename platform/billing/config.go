// Package billing is usage-based billing through Stripe (stripe-go v76):
// a Stripe customer per organization, plans with limits (clones at once,
// agents, storage) enforced when a clone or an agent is created, Checkout
// for upgrades and the customer portal, an hourly metered usage report
// with idempotency keys, and signature-verified webhooks applied once per
// event. With billing.enabled false (the default without a Stripe key)
// nothing is limited and nothing is sent to Stripe; usage reports work
// either way (platform/usage).
package billing

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Config is the billing: section of the platform configuration.
type Config struct {
	// Enabled turns billing on. Unset: on exactly when secretKey is set.
	Enabled *bool `yaml:"enabled"`
	// SecretKey is the Stripe secret API key (env
	// THINLAB_PLATFORM_BILLING_SECRET_KEY: keep it out of the file).
	SecretKey string `yaml:"secretKey"`
	// WebhookSecret verifies Stripe's webhook signatures (whsec_...; env
	// THINLAB_PLATFORM_BILLING_WEBHOOK_SECRET).
	WebhookSecret string `yaml:"webhookSecret"`
	// APIURL points the Stripe client elsewhere (stripe-mock in tests);
	// empty: Stripe itself.
	APIURL string `yaml:"apiURL"`
	// Meters are the Stripe billing meters' event names.
	Meters Meters `yaml:"meters"`
	// GracePeriod is how long a plan's limits stay after a failed
	// payment before the free plan's apply (default 72h). No data is
	// ever deleted.
	GracePeriod time.Duration `yaml:"gracePeriod"`
	// ReportInterval is how often due usage reports are computed and
	// sent (default 1m; each report covers one whole hour).
	ReportInterval time.Duration `yaml:"reportInterval"`
	// FreePlan names the plan of organizations without a subscription
	// (default "free"); it must be one of Plans.
	FreePlan string `yaml:"freePlan"`
	// Plans are the plans on offer.
	Plans []Plan `yaml:"plans"`
}

// Meters name the Stripe meters usage is reported to.
type Meters struct {
	// CloneSeconds receives clone-seconds (default thinlab_clone_seconds).
	CloneSeconds string `yaml:"cloneSeconds"`
	// StorageMiBHours receives storage MiB-hours: what clones wrote plus
	// the pools' snapshots (default thinlab_storage_mib_hours).
	StorageMiBHours string `yaml:"storageMiBHours"`
}

// Plan is one plan with its limits and prices.
type Plan struct {
	Name string `yaml:"name"`
	// PriceID is the Stripe price of the plan's subscription (Checkout);
	// required for every plan but the free one.
	PriceID string `yaml:"priceID"`
	// MeteredPriceIDs are the Stripe prices of the metered meters, added
	// to the Checkout subscription.
	MeteredPriceIDs []string `yaml:"meteredPriceIDs"`
	Limits          Limits   `yaml:"limits"`
	// Prices project the invoice on the Billing page (Stripe bills).
	Currency             string  `yaml:"currency"`
	MonthlyCents         int64   `yaml:"monthlyCents"`
	CloneHourCents       float64 `yaml:"cloneHourCents"`
	StorageGiBMonthCents float64 `yaml:"storageGiBMonthCents"`
}

// Limits of a plan; an unset limit is unlimited.
type Limits struct {
	// Clones is how many clones may exist at once in the organization.
	Clones *int `yaml:"clones"`
	// Agents is how many agents may be enrolled (not revoked).
	Agents *int `yaml:"agents"`
	// StorageGiB bounds the space the organization's pools use.
	StorageGiB *int `yaml:"storageGiB"`
}

// Defaults.
const (
	DefaultGracePeriod    = 72 * time.Hour
	DefaultReportInterval = time.Minute
	DefaultFreePlan       = "free"
	DefaultCloneMeter     = "thinlab_clone_seconds"
	DefaultStorageMeter   = "thinlab_storage_mib_hours"
)

// On reports whether billing is enabled (explicitly, or by a secret key).
func (c Config) On() bool {
	if c.Enabled != nil {
		return *c.Enabled
	}
	return c.SecretKey != ""
}

// WithDefaults fills what is unset.
func (c Config) WithDefaults() Config {
	if c.GracePeriod == 0 {
		c.GracePeriod = DefaultGracePeriod
	}
	if c.ReportInterval == 0 {
		c.ReportInterval = DefaultReportInterval
	}
	if c.FreePlan == "" {
		c.FreePlan = DefaultFreePlan
	}
	if c.Meters.CloneSeconds == "" {
		c.Meters.CloneSeconds = DefaultCloneMeter
	}
	if c.Meters.StorageMiBHours == "" {
		c.Meters.StorageMiBHours = DefaultStorageMeter
	}
	return c
}

// Validate checks the section and names the field to fix. A disabled
// section is checked only for what it holds.
func (c Config) Validate() error {
	c = c.WithDefaults()
	if c.GracePeriod < 0 {
		return fmt.Errorf("billing.gracePeriod %s: use a positive duration such as 72h", c.GracePeriod)
	}
	if c.ReportInterval < 100*time.Millisecond {
		return fmt.Errorf("billing.reportInterval %s: use at least 100ms (default 1m)", c.ReportInterval)
	}
	if c.APIURL != "" {
		if u, err := url.Parse(c.APIURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("billing.apiURL %q: use an http(s) URL such as http://127.0.0.1:12111 (stripe-mock), or leave it empty for Stripe", c.APIURL)
		}
	}
	if !c.On() {
		return nil
	}
	switch {
	case c.SecretKey == "":
		return errors.New("billing.secretKey: billing.enabled is true without a Stripe secret key; set it (env THINLAB_PLATFORM_BILLING_SECRET_KEY) or set billing.enabled: false")
	case !strings.HasPrefix(c.SecretKey, "sk_") && !strings.HasPrefix(c.SecretKey, "rk_"):
		return errors.New("billing.secretKey: not a Stripe secret key (sk_... or rk_...)")
	case c.WebhookSecret == "":
		return errors.New("billing.webhookSecret: set the signing secret of the Stripe webhook endpoint (whsec_...; env THINLAB_PLATFORM_BILLING_WEBHOOK_SECRET)")
	case len(c.Plans) == 0:
		return fmt.Errorf("billing.plans: define at least the free plan %q", c.FreePlan)
	}
	seen := map[string]bool{}
	free := false
	for i, p := range c.Plans {
		field := fmt.Sprintf("billing.plans[%d]", i)
		switch {
		case p.Name == "" || len(p.Name) > 40 || strings.ContainsAny(p.Name, " \t\r\n"):
			return fmt.Errorf("%s.name %q: use a short name without spaces, such as team", field, p.Name)
		case seen[p.Name]:
			return fmt.Errorf("%s.name %q: the name is used by an earlier plan", field, p.Name)
		case p.Name != c.FreePlan && !strings.HasPrefix(p.PriceID, "price_"):
			return fmt.Errorf("%s.priceID %q: plan %s needs the Stripe price of its subscription (price_...)", field, p.PriceID, p.Name)
		case p.MonthlyCents < 0 || p.CloneHourCents < 0 || p.StorageGiBMonthCents < 0:
			return fmt.Errorf("%s: prices cannot be negative", field)
		}
		for name, l := range map[string]*int{"clones": p.Limits.Clones, "agents": p.Limits.Agents, "storageGiB": p.Limits.StorageGiB} {
			if l != nil && *l < 0 {
				return fmt.Errorf("%s.limits.%s %d: use 0 or more, or leave it unset for no limit", field, name, *l)
			}
		}
		for j, id := range p.MeteredPriceIDs {
			if !strings.HasPrefix(id, "price_") {
				return fmt.Errorf("%s.meteredPriceIDs[%d] %q: use a Stripe price ID (price_...)", field, j, id)
			}
		}
		seen[p.Name] = true
		free = free || p.Name == c.FreePlan
	}
	if !free {
		return fmt.Errorf("billing.freePlan %q: no plan of that name in billing.plans (organizations without a subscription get it)", c.FreePlan)
	}
	return nil
}

// plan returns the plan named name.
func (c Config) plan(name string) (Plan, bool) {
	for _, p := range c.Plans {
		if p.Name == name {
			return p, true
		}
	}
	return Plan{}, false
}

// planByPrice returns the plan whose subscription price is priceID.
func (c Config) planByPrice(priceID string) (Plan, bool) {
	for _, p := range c.Plans {
		if p.PriceID != "" && p.PriceID == priceID {
			return p, true
		}
	}
	return Plan{}, false
}
