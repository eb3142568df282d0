package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Headers of webhook and Slack deliveries.
const (
	// HeaderSignature is "t=<unix seconds>,v1=<hex HMAC-SHA256>" over
	// "<t>.<body>" with the channel's secret (docs/notifications.md).
	HeaderSignature = "Thinlab-Signature"
	// HeaderIdempotencyKey is the message's key: the same on every
	// delivery attempt of one message, different for every other.
	HeaderIdempotencyKey = "Thinlab-Idempotency-Key"
	// HeaderEvent is the event's catalogue name.
	HeaderEvent = "Thinlab-Event"
)

// Sign returns the signature header value of body at t with secret.
func Sign(secret []byte, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(ts))
	mac.Write([]byte("."))
	mac.Write(body)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac.Sum(nil))
}

// Verify checks a signature header against body and secret, refusing one
// older (or newer) than tolerance: what a receiver does.
func Verify(secret []byte, header string, body []byte, now time.Time, tolerance time.Duration) error {
	var ts string
	var sigs []string
	for part := range strings.SplitSeq(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			sigs = append(sigs, v)
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 {
		return errors.New("signature header needs t=<unix seconds> and v1=<hex>")
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("signature timestamp is %s away from now (tolerance %s)", d.Round(time.Second), tolerance)
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(ts + "."))
	mac.Write(body)
	want := mac.Sum(nil)
	for _, s := range sigs {
		got, err := hex.DecodeString(s)
		if err == nil && hmac.Equal(got, want) {
			return nil
		}
	}
	return errors.New("signature does not match")
}

// ValidateURL checks a channel's URL when it is saved: http or https, a
// host, no credentials in it, and no literal address that deliveries
// would refuse anyway. Host names are checked again at every dial.
func (g *guard) ValidateURL(raw string) error {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return fmt.Errorf("url: %v", err)
	case u.Scheme != "https" && u.Scheme != "http":
		return fmt.Errorf("url: use an http:// or https:// address, not %q", u.Scheme+":")
	case u.Host == "" || u.Hostname() == "":
		return errors.New("url: the address has no host")
	case u.User != nil:
		return errors.New("url: leave credentials out of the address (webhooks are signed with the channel's secret)")
	case len(raw) > 2000:
		return errors.New("url: use at most 2000 characters")
	}
	if a, err := netip.ParseAddr(u.Hostname()); err == nil {
		if err := g.check(a); err != nil {
			return fmt.Errorf("url: %w", err)
		}
	}
	return nil
}

// guard refuses connections to addresses a tenant must not reach through
// the platform: loopback (the platform's own services), link-local (cloud
// metadata at 169.254.169.254, fe80::/10), unspecified, multicast and
// known metadata addresses, unless allowed by configuration. It checks
// the address actually dialled, after DNS resolution, so a name that
// resolves to a refused address (or is rebound to one) is refused too.
type guard struct {
	allow []netip.Prefix
}

var metadataAddrs = []netip.Prefix{
	netip.MustParsePrefix("169.254.0.0/16"),     // link-local, AWS/GCP/Azure metadata
	netip.MustParsePrefix("100.100.100.200/32"), // Alibaba Cloud metadata
	netip.MustParsePrefix("fd00:ec2::254/128"),  // AWS metadata over IPv6
	netip.MustParsePrefix("192.0.0.192/32"),     // Oracle Cloud metadata
}

func (g *guard) check(a netip.Addr) error {
	a = a.Unmap()
	for _, p := range g.allow {
		if p.Contains(a) {
			return nil
		}
	}
	refused := a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() || a.IsInterfaceLocalMulticast() ||
		a.IsMulticast() || a.IsUnspecified()
	for _, p := range metadataAddrs {
		refused = refused || p.Contains(a)
	}
	if refused {
		return refusedAddress{a}
	}
	return nil
}

// refusedAddress is a dial the guard refused; no retry changes that, so
// the message becomes a dead letter at once.
type refusedAddress struct{ addr netip.Addr }

func (e refusedAddress) Error() string {
	return fmt.Sprintf("address %s is refused for notifications (loopback, link-local or cloud metadata); allow it with notifications.webhooks.allowAddresses", e.addr)
}

func (e refusedAddress) Is(target error) bool { return target == errPermanent }

// control is the dialer's hook: it runs for every address dialled.
func (g *guard) control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("unexpected dial address %q", address)
	}
	return g.check(ap.Addr())
}

// client is the HTTP client of Slack and webhook deliveries: no proxy
// (a proxy would dial for us, past the guard), no redirects (a receiver
// could point us anywhere), the guard on every connection.
func (g *guard) client(timeout time.Duration) *http.Client {
	d := &net.Dialer{Timeout: timeout, Control: g.control}
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy:                 nil,
			DialContext:           d.DialContext,
			ForceAttemptHTTP2:     true,
			MaxIdleConns:          10,
			IdleConnTimeout:       30 * time.Second,
			TLSHandshakeTimeout:   timeout,
			ResponseHeaderTimeout: timeout,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// post sends body to rawURL with the headers; any answer but 2xx is a
// failure (a redirect included).
func post(ctx context.Context, c *http.Client, rawURL string, body []byte, headers map[string]string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, rawURL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "thinlab-notifications")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		return redactURL(err, rawURL)
	}
	defer func() { _ = resp.Body.Close() }() // drained below; nothing to report
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("receiver answered HTTP %d", resp.StatusCode)
	}
	return nil
}

// redactURL keeps a webhook URL (Slack's carry their secret in the path)
// out of errors that are stored and shown.
func redactURL(err error, rawURL string) error {
	if ue, ok := errors.AsType[*url.Error](err); ok {
		host := ""
		if u, perr := url.Parse(rawURL); perr == nil {
			host = u.Host
		}
		return fmt.Errorf("post to %s: %w", host, ue.Err)
	}
	return err
}
