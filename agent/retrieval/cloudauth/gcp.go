package cloudauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// GCPScope is the OAuth scope of Cloud SQL IAM database logins.
const GCPScope = "https://www.googleapis.com/auth/sqlservice.login"

const gcpDefaultTokenURI = "https://oauth2.googleapis.com/token" //nolint:gosec // G101: a public endpoint, not a credential

// gcpKey is the part of a Google credentials JSON file the agent reads:
// a service-account key, or the authorized_user file of
// `gcloud auth application-default login`.
type gcpKey struct {
	Type         string `json:"type"`
	ClientEmail  string `json:"client_email"`
	PrivateKey   string `json:"private_key"`
	PrivateKeyID string `json:"private_key_id"`
	TokenURI     string `json:"token_uri"`
	ClientID     string `json:"client_id"`
	ClientSecret string `json:"client_secret"`
	RefreshToken string `json:"refresh_token"`
}

// gcpToken gets a Cloud SQL IAM access token: from the key file
// (auth.gcp.keyFile, else GOOGLE_APPLICATION_CREDENTIALS), else from the
// metadata server of the instance the agent runs on.
func (a *Authenticator) gcpToken(ctx context.Context) (cached[string], error) {
	file, field := a.src.Auth.GCP.KeyFile, "retrieval.source.auth.gcp.keyFile"
	if file == "" {
		file, field = getenv("GOOGLE_APPLICATION_CREDENTIALS"), "GOOGLE_APPLICATION_CREDENTIALS"
	}
	if file == "" {
		t, err := a.gcpMetadataToken(ctx)
		if err != nil {
			return t, fmt.Errorf("no key file (retrieval.source.auth.gcp.keyFile or GOOGLE_APPLICATION_CREDENTIALS) and the metadata server failed: %w", err)
		}
		return t, nil
	}
	b, err := os.ReadFile(file) //nolint:gosec // G304: the key file the admin configured
	if err != nil {
		return cached[string]{}, fmt.Errorf("%s: %w", field, err)
	}
	var k gcpKey
	if err := json.Unmarshal(b, &k); err != nil {
		// The error would quote the file: it holds a private key.
		return cached[string]{}, fmt.Errorf("%s %s is not a Google credentials JSON file", field, file)
	}
	tokenURI := k.TokenURI
	if tokenURI == "" {
		tokenURI = gcpDefaultTokenURI
	}
	u, err := checkCredentialURL(tokenURI)
	if err != nil {
		return cached[string]{}, fmt.Errorf("%s token_uri: %w", field, err)
	}
	var form url.Values
	switch k.Type {
	case "service_account":
		if k.ClientEmail == "" || k.PrivateKey == "" {
			return cached[string]{}, fmt.Errorf("%s %s: a service_account key needs client_email and private_key", field, file)
		}
		key, err := parseRSAKey([]byte(k.PrivateKey))
		if err != nil {
			return cached[string]{}, fmt.Errorf("%s %s: %w", field, file, err)
		}
		now := a.now()
		header := map[string]any{}
		if k.PrivateKeyID != "" {
			header["kid"] = k.PrivateKeyID
		}
		assertion, err := signJWT(key, header, map[string]any{
			"iss":   k.ClientEmail,
			"scope": GCPScope,
			"aud":   tokenURI,
			"iat":   now.Unix(),
			"exp":   now.Add(time.Hour).Unix(),
		})
		if err != nil {
			return cached[string]{}, err
		}
		form = url.Values{"grant_type": {"urn:ietf:params:oauth:grant-type:jwt-bearer"}, "assertion": {assertion}}
	case "authorized_user":
		if k.RefreshToken == "" || k.ClientID == "" {
			return cached[string]{}, fmt.Errorf("%s %s: an authorized_user file needs client_id and refresh_token", field, file)
		}
		form = url.Values{"grant_type": {"refresh_token"}, "refresh_token": {k.RefreshToken}, "client_id": {k.ClientID}, "client_secret": {k.ClientSecret}}
	default:
		return cached[string]{}, fmt.Errorf("%s %s has type %q: use a service_account key (or an authorized_user file); workload identity federation (external_account) is not supported", field, file, k.Type)
	}
	t, err := a.postToken(ctx, u.String(), form, "Google token endpoint")
	if err != nil {
		return t, err
	}
	t.source = "key file " + file
	if k.ClientEmail != "" {
		t.source += " (" + k.ClientEmail + ")"
	}
	return t, nil
}

// gcpMetadataEndpoint is the GCE metadata server's base URL.
func (a *Authenticator) gcpMetadataEndpoint() string {
	if e := a.src.Auth.GCP.MetadataEndpoint; e != "" {
		return strings.TrimSuffix(e, "/")
	}
	if h := getenv("GCE_METADATA_HOST"); h != "" {
		return "http://" + h
	}
	return "http://169.254.169.254"
}

// gcpMetadataToken asks the metadata server for the instance's default
// service account's token.
func (a *Authenticator) gcpMetadataToken(ctx context.Context) (cached[string], error) {
	base := a.gcpMetadataEndpoint()
	if _, err := checkCredentialURL(base); err != nil {
		return cached[string]{}, fmt.Errorf("retrieval.source.auth.gcp.metadataEndpoint: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/computeMetadata/v1/instance/service-accounts/default/token?scopes="+url.QueryEscape(GCPScope), nil)
	if err != nil {
		return cached[string]{}, err
	}
	req.Header.Set("Metadata-Flavor", "Google")
	var tok oauthToken
	hdr, err := doJSON(a.meta, req, "GCE metadata server", &tok)
	if err != nil {
		return cached[string]{}, err
	}
	// Whatever answers on the address must say it is the metadata server.
	if hdr.Get("Metadata-Flavor") != "Google" {
		return cached[string]{}, errors.New("GCE metadata server: the answer lacks Metadata-Flavor: Google; it is not the metadata server")
	}
	exp, err := tok.expiry(a.now())
	if err != nil {
		return cached[string]{}, fmt.Errorf("GCE metadata server: %w", err)
	}
	return cached[string]{v: tok.AccessToken, expires: exp, source: "GCE metadata server"}, nil
}

// postToken posts an OAuth 2.0 token request and reads the token.
func (a *Authenticator) postToken(ctx context.Context, endpoint string, form url.Values, what string) (cached[string], error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return cached[string]{}, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	var tok oauthToken
	if _, err := doJSON(a.web, req, what, &tok); err != nil {
		return cached[string]{}, err
	}
	exp, err := tok.expiry(a.now())
	if err != nil {
		return cached[string]{}, fmt.Errorf("%s: %w", what, err)
	}
	return cached[string]{v: tok.AccessToken, expires: exp}, nil
}
