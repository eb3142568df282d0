// Package cloudauth makes the password of a managed PostgreSQL source
// whose cloud authenticates database logins with its own identities: an
// AWS RDS IAM token (SigV4 presigned with credentials from the standard
// AWS chain), a GCP Cloud SQL IAM access token, or a Microsoft Entra ID
// (Azure AD) access token. It talks to the clouds' token and metadata
// endpoints itself (a few plain HTTP calls each) rather than linking
// three cloud SDKs into the agent. Credentials and tokens are cached
// until shortly before they expire; every connection asks for its
// password again, so it always gets one that is still valid. Nothing it
// fetches is ever logged.
package cloudauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/retrieval/sigv4"
)

// refreshBefore is how long before its expiry a cached credential or
// token is replaced: a connection must never get one that expires while
// libpq is still logging in.
const refreshBefore = 5 * time.Minute

// maxResponse bounds what is read from a token or metadata endpoint.
const maxResponse = 1 << 20

// Options tune an Authenticator; the zero value is production's.
type Options struct {
	// Now is the clock tokens are signed and expiries judged by.
	Now func() time.Time
	// HTTPClient talks to the clouds' token services (STS, Google's and
	// Microsoft's token endpoints); it honours HTTPS_PROXY.
	HTTPClient *http.Client
	// MetadataClient talks to the link-local metadata services of the
	// host (EC2 IMDS, ECS, GCE metadata, Azure IMDS), never through a
	// proxy, with short timeouts (an agent not on that cloud fails fast).
	MetadataClient *http.Client
	Logger         *slog.Logger
}

// Authenticator makes passwords for connections to one source.
type Authenticator struct {
	src  config.Source
	kind string
	now  func() time.Time
	web  *http.Client
	meta *http.Client
	log  *slog.Logger

	mu sync.Mutex
	// aws are the cached AWS credentials (awsRdsIam); token the cached
	// access token (gcpCloudSqlIam, azureAd).
	aws   cached[sigv4.Credentials]
	token cached[string]
}

// cached is a value with its expiry (zero: re-resolve every time, as
// for static keys that may change in the environment or the files).
type cached[T any] struct {
	v       T
	expires time.Time
	source  string
}

func (c cached[T]) valid(now time.Time) bool {
	return !c.expires.IsZero() && now.Add(refreshBefore).Before(c.expires)
}

// New returns the Authenticator for src. It fetches nothing yet.
func New(src config.Source, opt Options) *Authenticator {
	a := &Authenticator{src: src, kind: src.AuthKind(), now: opt.Now, web: opt.HTTPClient, meta: opt.MetadataClient, log: opt.Logger}
	if a.now == nil {
		a.now = time.Now
	}
	if a.web == nil {
		a.web = &http.Client{Timeout: 30 * time.Second}
	}
	if a.meta == nil {
		a.meta = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil, DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext}}
	}
	if a.log == nil {
		a.log = slog.Default()
	}
	return a
}

// Kind is the source's authentication kind (config.Auth*).
func (a *Authenticator) Kind() string { return a.kind }

// Password returns the password for one new connection to the source
// whose libpq parameters are params (host, port and user name the RDS
// token's endpoint and role). With kind password it returns "" and ok
// false: the configured password stands; so does a nil Authenticator.
func (a *Authenticator) Password(ctx context.Context, params map[string]string) (pw string, ok bool, err error) {
	if a == nil {
		return "", false, nil
	}
	switch a.kind {
	case config.AuthPassword:
		return "", false, nil
	case config.AuthAWSRDSIAM:
		creds, err := a.awsCredentials(ctx)
		if err != nil {
			return "", false, fmt.Errorf("retrieval.source.auth awsRdsIam: %w", err)
		}
		port := params["port"]
		if port == "" {
			port = "5432"
		}
		return sigv4.RDSAuthToken(net.JoinHostPort(params["host"], port), a.src.AWSRegion(), params["user"], creds, a.now()), true, nil
	case config.AuthGCPCloudSQLIAM, config.AuthAzureAD:
		tok, err := a.accessToken(ctx)
		if err != nil {
			return "", false, fmt.Errorf("retrieval.source.auth %s: %w", a.kind, err)
		}
		return tok, true, nil
	}
	return "", false, fmt.Errorf("retrieval.source.auth.kind %q is not supported: use password, awsRdsIam, gcpCloudSqlIam or azureAd", a.kind)
}

// accessToken is the cached GCP or Azure access token, fetched anew
// when it is about to expire.
func (a *Authenticator) accessToken(ctx context.Context) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.token.valid(a.now()) {
		return a.token.v, nil
	}
	var t cached[string]
	var err error
	if a.kind == config.AuthGCPCloudSQLIAM {
		t, err = a.gcpToken(ctx)
	} else {
		t, err = a.azureToken(ctx)
	}
	if err != nil {
		return "", err
	}
	a.token = t
	a.log.Info("cloud access token obtained for the retrieval source", "kind", a.kind, "from", t.source, "expires", t.expires.UTC().Format(time.RFC3339))
	return t.v, nil
}

// getenv reads the agent's environment (tests set it with t.Setenv).
func getenv(k string) string { return strings.TrimSpace(os.Getenv(k)) }

// endpointURL parses a configured endpoint; http is allowed only for
// the host's own link-local metadata addresses and loopback, since the
// request carries a credential.
func checkCredentialURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("%q is not a URL", raw)
	}
	switch u.Scheme {
	case "https":
		return u, nil
	case "http":
		if ip := net.ParseIP(u.Hostname()); ip != nil && (ip.IsLoopback() || ip.IsLinkLocalUnicast()) || u.Hostname() == "localhost" {
			return u, nil
		}
		// ECS on IPv6 and EKS pod identity.
		if h := u.Hostname(); h == "fd00:ec2::23" || h == "fd00:ec2::254" {
			return u, nil
		}
		return nil, fmt.Errorf("%s is plain http to a host that is neither loopback nor link-local: credentials sent there could be read on the way; use https", u.Redacted())
	}
	return nil, fmt.Errorf("%q: use an http(s) URL", raw)
}

// httpError is a failed request's status and the start of its body
// (token services explain themselves there; they never echo secrets).
func httpError(what string, resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	msg := strings.Join(strings.Fields(string(b)), " ")
	return fmt.Errorf("%s: %s: %s", what, resp.Status, msg)
}

// doJSON sends req with c and decodes a 200 answer's JSON into out; it
// returns the answer's headers.
func doJSON(c *http.Client, req *http.Request, what string, out any) (http.Header, error) {
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return nil, httpError(what, resp)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxResponse)).Decode(out); err != nil {
		return nil, fmt.Errorf("%s: the answer is not the expected JSON: %w", what, err)
	}
	return resp.Header, nil
}

// oauthToken is the answer of an OAuth 2.0 token endpoint (and, with
// expires_on, of Azure's managed identity endpoint).
type oauthToken struct {
	AccessToken string          `json:"access_token"`
	ExpiresIn   json.RawMessage `json:"expires_in"`
	ExpiresOn   json.RawMessage `json:"expires_on"`
}

// lifetime reads expires_in (seconds, a number or a string as Azure's
// IMDS sends it) or, failing that, expires_on (Unix seconds).
func (t oauthToken) expiry(now time.Time) (time.Time, error) {
	if t.AccessToken == "" {
		return time.Time{}, errors.New("the answer has no access_token")
	}
	if n, ok := jsonSeconds(t.ExpiresIn); ok {
		return now.Add(time.Duration(n) * time.Second), nil
	}
	if n, ok := jsonSeconds(t.ExpiresOn); ok {
		return time.Unix(n, 0), nil
	}
	return time.Time{}, errors.New("the answer has neither expires_in nor expires_on")
}

func jsonSeconds(raw json.RawMessage) (int64, bool) {
	if len(raw) == 0 {
		return 0, false
	}
	var n json.Number
	s := strings.Trim(string(raw), `"`)
	n = json.Number(s)
	v, err := n.Int64()
	return v, err == nil && v > 0
}
