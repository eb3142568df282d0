package notify_test

import (
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/platform/notify"
)

// TestConfigErrorsNameTheField: every refused setting names its key.
func TestConfigErrorsNameTheField(t *testing.T) {
	smtp := notify.SMTPConfig{Host: "smtp.example.com", From: "thinlab@example.com"}
	cases := map[string]func(c *notify.Config){
		"notifications.smtp.from":               func(c *notify.Config) { c.SMTP = smtp; c.SMTP.From = "" },
		"notifications.smtp.tls none":           func(c *notify.Config) { c.SMTP = smtp; c.SMTP.TLS = "none" },
		"notifications.smtp.tls \"ssl\"":        func(c *notify.Config) { c.SMTP = smtp; c.SMTP.TLS = "ssl" },
		"notifications.smtp.username":           func(c *notify.Config) { c.SMTP = smtp; c.SMTP.Username = "u" },
		"notifications.smtp.port":               func(c *notify.Config) { c.SMTP = smtp; c.SMTP.Port = 70000 },
		"notifications.webhooks.allowAddresses": func(c *notify.Config) { c.Webhooks.AllowAddresses = []string{"localhost"} },
		"notifications.workers":                 func(c *notify.Config) { c.Workers = 100 },
		"notifications.pollInterval":            func(c *notify.Config) { c.PollInterval = time.Millisecond },
		"notifications.retryBase":               func(c *notify.Config) { c.RetryBase, c.RetryMax = time.Hour, time.Second },
		"notifications.digestInterval":          func(c *notify.Config) { c.DigestInterval = time.Millisecond },
		"notifications.foldWindow":              func(c *notify.Config) { c.FoldWindow = -time.Second },
		"notifications.maxAttempts":             func(c *notify.Config) { c.MaxAttempts = -1 },
	}
	for field, mutate := range cases {
		var c notify.Config
		mutate(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: error %v, want one naming it", field, err)
		}
	}
	ok := notify.Config{SMTP: notify.SMTPConfig{Host: "127.0.0.1", Port: 1025, From: "t@example.com", TLS: "none"}, Webhooks: notify.WebhookConfig{AllowAddresses: []string{"127.0.0.1", "10.0.0.0/8"}}}
	if err := ok.Validate(); err != nil {
		t.Errorf("plain SMTP to loopback and an allowlist: %v", err)
	}
}
