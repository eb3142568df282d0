package notify

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"mime"
	"net"
	"net/smtp"
	"os"
	"strconv"
	"strings"
	"time"
)

// mailer sends email through the configured SMTP server: STARTTLS
// (required unless tls is "none" to a loopback server), then AUTH PLAIN
// when a username is set.
type mailer struct {
	cfg     SMTPConfig
	tlsConf *tls.Config
}

func newMailer(cfg SMTPConfig) (*mailer, error) {
	m := &mailer{cfg: cfg, tlsConf: &tls.Config{ServerName: cfg.Host, MinVersion: tls.VersionTLS12}}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("notifications.smtp.caFile: %w", err)
		}
		m.tlsConf.RootCAs = x509.NewCertPool()
		if !m.tlsConf.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("notifications.smtp.caFile %s holds no PEM certificate", cfg.CAFile)
		}
	}
	return m, nil
}

// mail is one email.
type mail struct {
	To, Subject, Body string
	// MessageID is the message's idempotency key: a receiver (or a mail
	// store) can tell a redelivery from a new message.
	MessageID string
}

// send delivers one email; the error says which SMTP step failed.
func (m *mailer) send(ctx context.Context, msg mail) error {
	if strings.ContainsAny(msg.To, "\r\n") || strings.ContainsAny(msg.Subject, "\r\n") {
		return errors.New("refusing a header with a line break")
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
	defer cancel()
	addr := net.JoinHostPort(m.cfg.Host, strconv.Itoa(m.cfg.Port))
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("smtp: connect %s: %w", addr, err)
	}
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline) // bounds every step below; a failure shows as the step's error
	c, err := smtp.NewClient(conn, m.cfg.Host)
	if err != nil {
		_ = conn.Close() // the greeting failed; that error is returned
		return fmt.Errorf("smtp: greeting: %w", err)
	}
	defer func() { _ = c.Close() }() // after QUIT, or on a failure being returned
	if err := c.Hello("thinlab"); err != nil {
		return fmt.Errorf("smtp: EHLO: %w", err)
	}
	if m.cfg.TLS != "none" {
		if ok, _ := c.Extension("STARTTLS"); !ok {
			return fmt.Errorf("smtp: %s does not offer STARTTLS (notifications.smtp.tls is starttls)", addr)
		}
		if err := c.StartTLS(m.tlsConf); err != nil {
			return fmt.Errorf("smtp: STARTTLS: %w", err)
		}
	}
	if m.cfg.Username != "" {
		if err := c.Auth(smtp.PlainAuth("", m.cfg.Username, m.cfg.Password, m.cfg.Host)); err != nil {
			return fmt.Errorf("smtp: AUTH: %w", err)
		}
	}
	if err := c.Mail(m.cfg.From); err != nil {
		return fmt.Errorf("smtp: MAIL FROM: %w", err)
	}
	if err := c.Rcpt(msg.To); err != nil {
		return fmt.Errorf("smtp: RCPT TO: %w", err)
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("smtp: DATA: %w", err)
	}
	if _, err := w.Write(m.render(msg)); err != nil {
		return fmt.Errorf("smtp: write the message: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("smtp: end of data: %w", err)
	}
	_ = c.Quit() // the server accepted the message at the end of DATA; a failed goodbye loses nothing
	return nil
}

func (m *mailer) render(msg mail) []byte {
	var b strings.Builder
	h := func(k, v string) { b.WriteString(k + ": " + v + "\r\n") }
	h("From", m.cfg.From)
	h("To", msg.To)
	h("Subject", mime.QEncoding.Encode("utf-8", msg.Subject))
	h("Date", time.Now().UTC().Format(time.RFC1123Z))
	h("Message-ID", "<"+msg.MessageID+"@thinlab>")
	h("MIME-Version", "1.0")
	h("Content-Type", "text/plain; charset=utf-8")
	h("Content-Transfer-Encoding", "8bit")
	h("Auto-Submitted", "auto-generated")
	b.WriteString("\r\n")
	body := strings.ReplaceAll(msg.Body, "\r\n", "\n")
	b.WriteString(strings.ReplaceAll(body, "\n", "\r\n"))
	if !strings.HasSuffix(body, "\n") {
		b.WriteString("\r\n")
	}
	return []byte(b.String())
}
