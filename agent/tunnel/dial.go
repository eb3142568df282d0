package tunnel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/thinlab/thinlab/sdk/tunnel"
)

// Endpoint is where the platform is and how to reach it.
type Endpoint struct {
	// Base is the platform URL (https://..., or http://... on loopback
	// or with Insecure).
	Base *url.URL
	TLS  *tls.Config // nil for http
	// Proxy picks the proxy per request (http.ProxyFromEnvironment by
	// default: HTTPS_PROXY, NO_PROXY; loopback is never proxied by it).
	Proxy func(*http.Request) (*url.URL, error)
}

// ParseEndpoint checks the platform URL against the transport policy:
// https (verified with the system roots, or only caFile's CAs when set);
// plain http only to a loopback address or when insecure is set
// (development), because the tunnel carries the agent's credential and
// its API. ws and wss are accepted as http and https.
func ParseEndpoint(raw, caFile string, insecure bool) (*Endpoint, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("platform.url %q must be a URL such as https://thinlab.example.com", raw)
	}
	switch u.Scheme {
	case "https", "wss":
		u.Scheme = "https"
	case "http", "ws":
		u.Scheme = "http"
		if !insecure && !isLoopback(u.Hostname()) {
			return nil, fmt.Errorf("platform.url %q is not https: the tunnel carries the agent's credential and API, so plain http is allowed only to a loopback address or with platform.insecure (development)", raw)
		}
	default:
		return nil, fmt.Errorf("platform.url %q must be an https URL such as https://thinlab.example.com", raw)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawQuery, u.Fragment = "", ""
	ep := &Endpoint{Base: u, Proxy: http.ProxyFromEnvironment}
	if u.Scheme == "https" {
		ep.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
		if caFile != "" {
			pem, err := os.ReadFile(caFile) //nolint:gosec // G304: the operator names the CA file (platform.caFile); reading it is the point
			if err != nil {
				return nil, fmt.Errorf("platform.caFile: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("platform.caFile %s holds no PEM certificate", caFile)
			}
			ep.TLS.RootCAs = pool
		}
	} else if caFile != "" {
		return nil, fmt.Errorf("platform.caFile is set but platform.url %q is not https", raw)
	}
	return ep, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// url returns the endpoint URL of path, with the websocket scheme when ws.
func (e *Endpoint) url(path string, ws bool) string {
	u := *e.Base
	u.Path += path
	if ws {
		if u.Scheme == "https" {
			u.Scheme = "wss"
		} else {
			u.Scheme = "ws"
		}
	}
	return u.String()
}

func (e *Endpoint) httpClient() *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			Proxy:               e.Proxy,
			TLSClientConfig:     e.TLS,
			TLSHandshakeTimeout: 10 * time.Second,
		},
		// A redirect could send the enrollment token elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// Backoff is the delay between connection attempts: exponential from Min
// up to Max, with "equal jitter" (each delay is uniformly random in its
// upper half) so that a fleet of agents does not reconnect in lockstep
// after a platform restart.
type Backoff struct {
	Min, Max time.Duration
	// Rand returns a number in [0, 1) (math/rand/v2 when nil).
	Rand func() float64
}

// Default reconnection delays.
const (
	DefaultBackoffMin = 500 * time.Millisecond
	DefaultBackoffMax = time.Minute
)

// Delay is the wait before attempt n (0 is the first retry).
func (b Backoff) Delay(n int) time.Duration {
	lo, hi := b.Min, b.Max
	if lo <= 0 {
		lo = DefaultBackoffMin
	}
	if hi < lo {
		hi = max(lo, DefaultBackoffMax)
	}
	d := lo
	for i := 0; i < n && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	r := b.Rand
	if r == nil {
		r = rand.Float64
	}
	return d/2 + time.Duration(r()*float64(d/2))
}

// Credential is what the agent keeps in its state directory after
// enrollment (tunnel.CredentialFile, mode 0600).
type Credential struct {
	PlatformURL    string `json:"platformUrl"`
	AgentID        string `json:"agentId"`
	OrganizationID string `json:"organizationId"`
	Name           string `json:"name"`
	Credential     string `json:"credential"`
}

// ErrNoCredential is returned by LoadCredential before enrollment.
var ErrNoCredential = errors.New("this agent has no platform credential yet")

// LoadCredential reads the credential file; ErrNoCredential when there is
// none.
func LoadCredential(stateDir string) (*Credential, error) {
	raw, err := os.ReadFile(filepath.Join(stateDir, tunnel.CredentialFile)) //nolint:gosec // G304: a fixed name in the agent's root-owned state directory
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNoCredential
	}
	if err != nil {
		return nil, fmt.Errorf("platform credential: %w", err)
	}
	var c Credential
	if err := json.Unmarshal(raw, &c); err != nil || c.Credential == "" {
		return nil, fmt.Errorf("platform credential %s is damaged: remove it and enroll again with a new platform.enrollToken", filepath.Join(stateDir, tunnel.CredentialFile))
	}
	return &c, nil
}

// ErrEnrollRefused is returned when the platform refuses the enrollment
// token (forged, expired, used up or revoked).
var ErrEnrollRefused = errors.New("the platform refused the enrollment token (platform.enrollToken): it may be expired, used up or revoked; create a new one")

// Enroll exchanges the enrollment token for a credential and writes it to
// the state directory atomically with mode 0600. Neither the token nor
// the credential is ever logged or put into an error.
func Enroll(ctx context.Context, ep *Endpoint, token, stateDir string, facts tunnel.AgentFacts) (*Credential, error) {
	if token == "" {
		return nil, errors.New("this agent has no platform credential yet: set platform.enrollToken (or --enroll-token) to enroll it")
	}
	body, err := json.Marshal(tunnel.EnrollRequest{Token: token, Facts: facts})
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ep.url(tunnel.EnrollPath, false), strings.NewReader(string(body)))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := ep.httpClient().Do(req)
	if err != nil {
		return nil, fmt.Errorf("enrollment: %w", err)
	}
	defer func() { _ = resp.Body.Close() }() // body fully read or irrelevant
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return nil, ErrEnrollRefused
	case resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated:
		return nil, fmt.Errorf("enrollment: the platform answered %s", resp.Status)
	}
	var er tunnel.EnrollResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&er); err != nil || er.Credential == "" || er.AgentID == "" {
		return nil, errors.New("enrollment: the platform's answer has no agent id or credential")
	}
	c := &Credential{PlatformURL: ep.Base.String(), AgentID: er.AgentID, OrganizationID: er.OrganizationID, Name: er.Name, Credential: er.Credential}
	raw, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(filepath.Join(stateDir, tunnel.CredentialFile), raw); err != nil {
		return nil, fmt.Errorf("platform credential: %w", err)
	}
	return c, nil
}
