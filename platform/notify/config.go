package notify

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Config is the notifications: section of the platform configuration
// (docs/platform-config.md).
type Config struct {
	// SMTP sends email; without a host no email is sent (the inbox,
	// Slack and webhooks still work).
	SMTP SMTPConfig `yaml:"smtp"`
	// Webhooks bounds where Slack and webhook deliveries may go.
	Webhooks WebhookConfig `yaml:"webhooks"`
	// Workers is how many messages this replica delivers at once.
	Workers int `yaml:"workers"`
	// PollInterval is how often an idle worker looks for due messages.
	PollInterval time.Duration `yaml:"pollInterval"`
	// MaxAttempts is how many times a message is tried before it becomes
	// a dead letter; RetryBase the first wait, doubled per attempt up to
	// RetryMax.
	MaxAttempts int           `yaml:"maxAttempts"`
	RetryBase   time.Duration `yaml:"retryBase"`
	RetryMax    time.Duration `yaml:"retryMax"`
	// FoldWindow folds repeats of an event for the same target into one
	// with a count while they keep coming within it.
	FoldWindow time.Duration `yaml:"foldWindow"`
	// DigestInterval is how often the low-severity digest email goes out
	// to members who chose it.
	DigestInterval time.Duration `yaml:"digestInterval"`
	// DisconnectGrace is how long an agent must stay disconnected before
	// its organization is told (agent.disconnected), so that a replica's
	// restart or a network blip, after which the agent is back within
	// seconds, tells nobody anything.
	DisconnectGrace time.Duration `yaml:"disconnectGrace"`
	// ProtectionWarning is how long before a clone's protection ends its
	// organization is told (clone.protection_expiring).
	ProtectionWarning time.Duration `yaml:"protectionWarning"`
}

// SMTPConfig is the mail server.
type SMTPConfig struct {
	Host     string `yaml:"host"`
	Port     int    `yaml:"port"`
	Username string `yaml:"username"`
	// Password (env THINLAB_PLATFORM_NOTIFICATIONS_SMTP_PASSWORD: keep it
	// out of the file).
	Password string `yaml:"password"`
	// From is the sender address, such as thinlab@example.com.
	From string `yaml:"from"`
	// TLS is "starttls" (default: STARTTLS is required before AUTH and
	// mail) or "none" (plain SMTP, only to a server on a loopback address).
	TLS string `yaml:"tls"`
	// CAFile verifies the server's certificate (system roots when empty).
	CAFile string `yaml:"caFile"`
	// Timeout bounds one delivery.
	Timeout time.Duration `yaml:"timeout"`
}

// WebhookConfig is where Slack and webhook deliveries may connect.
type WebhookConfig struct {
	// AllowAddresses are CIDRs that deliveries may reach although they
	// are refused by default (loopback, link-local, cloud metadata,
	// unspecified, multicast): a receiver on 127.0.0.1 in tests or a
	// development setup.
	AllowAddresses []string `yaml:"allowAddresses"`
	// Timeout bounds one delivery.
	Timeout time.Duration `yaml:"timeout"`
}

// Defaults fills what c leaves empty.
func (c Config) Defaults() Config {
	if c.Workers == 0 {
		c.Workers = 4
	}
	if c.PollInterval == 0 {
		c.PollInterval = time.Second
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 8
	}
	if c.RetryBase == 0 {
		c.RetryBase = 30 * time.Second
	}
	if c.RetryMax == 0 {
		c.RetryMax = time.Hour
	}
	if c.FoldWindow == 0 {
		c.FoldWindow = 10 * time.Minute
	}
	if c.DigestInterval == 0 {
		c.DigestInterval = 24 * time.Hour
	}
	if c.DisconnectGrace == 0 {
		c.DisconnectGrace = 2 * time.Minute
	}
	if c.ProtectionWarning == 0 {
		c.ProtectionWarning = 24 * time.Hour
	}
	if c.SMTP.Port == 0 {
		c.SMTP.Port = 587
	}
	if c.SMTP.TLS == "" {
		c.SMTP.TLS = "starttls"
	}
	if c.SMTP.Timeout == 0 {
		c.SMTP.Timeout = 30 * time.Second
	}
	if c.Webhooks.Timeout == 0 {
		c.Webhooks.Timeout = 10 * time.Second
	}
	return c
}

// Validate names the field to fix.
func (c Config) Validate() error {
	c = c.Defaults()
	switch {
	case c.Workers < 1 || c.Workers > 64:
		return fmt.Errorf("notifications.workers %d: use 1 to 64", c.Workers)
	case c.PollInterval < 10*time.Millisecond:
		return fmt.Errorf("notifications.pollInterval %s: use at least 10ms", c.PollInterval)
	case c.MaxAttempts < 1:
		return fmt.Errorf("notifications.maxAttempts %d: use at least 1", c.MaxAttempts)
	case c.RetryBase <= 0 || c.RetryMax < c.RetryBase:
		return errors.New("notifications.retryBase and retryMax: use positive durations with retryMax >= retryBase")
	case c.FoldWindow < 0:
		return fmt.Errorf("notifications.foldWindow %s: use a positive duration", c.FoldWindow)
	case c.DisconnectGrace < 0:
		return fmt.Errorf("notifications.disconnectGrace %s: use a positive duration (default 2m)", c.DisconnectGrace)
	case c.ProtectionWarning < 0:
		return fmt.Errorf("notifications.protectionWarning %s: use a positive duration (default 24h)", c.ProtectionWarning)
	case c.DigestInterval < time.Second:
		return fmt.Errorf("notifications.digestInterval %s: use at least 1s (default 24h)", c.DigestInterval)
	}
	s := c.SMTP
	if s.Host != "" {
		if s.From == "" || !strings.Contains(s.From, "@") {
			return fmt.Errorf("notifications.smtp.from %q: set the sender address, such as thinlab@example.com", s.From)
		}
		if s.Port < 1 || s.Port > 65535 {
			return fmt.Errorf("notifications.smtp.port %d: use 1-65535 (587 for STARTTLS)", s.Port)
		}
		switch s.TLS {
		case "starttls":
		case "none":
			if a, err := netip.ParseAddr(s.Host); (err != nil || !a.IsLoopback()) && s.Host != "localhost" {
				return fmt.Errorf("notifications.smtp.tls none: only for a server on a loopback address, not %q (passwords and mail would cross the network in clear)", s.Host)
			}
		default:
			return fmt.Errorf("notifications.smtp.tls %q: use starttls or none", s.TLS)
		}
		if (s.Username == "") != (s.Password == "") {
			return errors.New("notifications.smtp.username and password: set both (or neither, for a server without AUTH)")
		}
	}
	if _, err := parsePrefixes(c.Webhooks.AllowAddresses); err != nil {
		return err
	}
	return nil
}

func parsePrefixes(ss []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range ss {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("notifications.webhooks.allowAddresses: %q is neither an IP nor a CIDR", s)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}
