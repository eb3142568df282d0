package auth

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"
)

// provider is one configured IdP. Discovery happens on first use (and is
// retried on the next sign-in if it failed), so the platform starts even
// when an IdP is briefly down.
type provider struct {
	cfg         ProviderConfig
	redirectURL string
	httpClient  *http.Client

	mu       sync.Mutex
	oauth    *oauth2.Config
	verifier *oidc.IDTokenVerifier
}

func newProvider(cfg ProviderConfig, baseURL string, client *http.Client) *provider {
	return &provider{cfg: cfg, redirectURL: baseURL + "/auth/callback/" + cfg.Name, httpClient: client}
}

func (p *provider) context(ctx context.Context) context.Context {
	return oidc.ClientContext(ctx, p.httpClient)
}

// discover returns the OAuth2 config and ID token verifier, fetching the
// provider's discovery document on first use.
func (p *provider) discover(ctx context.Context) (*oauth2.Config, *oidc.IDTokenVerifier, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.oauth != nil {
		return p.oauth, p.verifier, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	op, err := oidc.NewProvider(p.context(ctx), p.cfg.Issuer)
	if err != nil {
		return nil, nil, fmt.Errorf("identity provider %q (issuer %s) is unreachable or misconfigured: %w", p.cfg.Name, p.cfg.Issuer, err)
	}
	scopes := append([]string{oidc.ScopeOpenID}, p.cfg.Scopes...)
	p.oauth = &oauth2.Config{
		ClientID:     p.cfg.ClientID,
		ClientSecret: p.cfg.ClientSecret,
		Endpoint:     op.Endpoint(),
		RedirectURL:  p.redirectURL,
		Scopes:       scopes,
	}
	// The verifier checks signature, issuer, audience (our client ID) and
	// expiry; the nonce is checked by the callback.
	p.verifier = op.Verifier(&oidc.Config{ClientID: p.cfg.ClientID})
	return p.oauth, p.verifier, nil
}
