package billing_test

import (
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/platform/billing"
)

// TestConfigValidateNamesTheField: every refusal names the key to fix;
// billing is on exactly when a secret key is set, unless enabled says
// otherwise; a disabled section needs nothing.
func TestConfigValidateNamesTheField(t *testing.T) {
	on, off := true, false
	good := func() billing.Config {
		return billing.Config{
			SecretKey: "sk_test_x", WebhookSecret: "whsec_x",
			Plans: []billing.Plan{{Name: "free"}, {Name: "team", PriceID: "price_team"}},
		}
	}
	if err := good().Validate(); err != nil || !good().On() {
		t.Fatalf("good config: %v, on %v", err, good().On())
	}
	if (billing.Config{}).On() || (billing.Config{}).Validate() != nil {
		t.Fatal("an empty section must be valid and off")
	}
	noKeys := billing.Config{Enabled: &off, Plans: []billing.Plan{{Name: ""}}}
	if err := noKeys.Validate(); err != nil {
		t.Fatalf("disabled billing is not checked for plans: %v", err)
	}
	neg := -1
	cases := map[string]func(c *billing.Config){
		"billing.secretKey":              func(c *billing.Config) { c.SecretKey = ""; c.Enabled = &on },
		"billing.secretKey: not":         func(c *billing.Config) { c.SecretKey = "pk_live_x" },
		"billing.webhookSecret":          func(c *billing.Config) { c.WebhookSecret = "" },
		"billing.plans:":                 func(c *billing.Config) { c.Plans = nil },
		"billing.plans[1].priceID":       func(c *billing.Config) { c.Plans[1].PriceID = "team" },
		"billing.plans[1].name":          func(c *billing.Config) { c.Plans[1].Name = "free" },
		"billing.plans[0].name":          func(c *billing.Config) { c.Plans[0].Name = "has space" },
		"billing.plans[0].limits.clones": func(c *billing.Config) { c.Plans[0].Limits.Clones = &neg },
		"billing.plans[1].meteredPriceIDs[0]": func(c *billing.Config) {
			c.Plans[1].MeteredPriceIDs = []string{"nope"}
		},
		"billing.freePlan":       func(c *billing.Config) { c.FreePlan = "starter"; c.Plans[0].PriceID = "price_free" },
		"billing.gracePeriod":    func(c *billing.Config) { c.GracePeriod = -time.Hour },
		"billing.reportInterval": func(c *billing.Config) { c.ReportInterval = time.Millisecond },
		"billing.apiURL":         func(c *billing.Config) { c.APIURL = "ftp://x" },
	}
	for field, mutate := range cases {
		c := good()
		mutate(&c)
		err := c.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), field) {
			t.Errorf("%s: got %v, want an error naming it", field, err)
		}
	}
}
