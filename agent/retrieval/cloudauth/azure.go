package cloudauth

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // G505: x5t is by definition the certificate's SHA-1 thumbprint, an identifier, not a signature
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// AzureScope is the scope of Entra ID tokens for Azure Database for
// PostgreSQL; AzureResource is the same for the managed identity
// endpoint, which takes a resource, not a scope.
const (
	AzureScope    = "https://ossrdbms-aad.database.windows.net/.default"
	AzureResource = "https://ossrdbms-aad.database.windows.net"
)

// azureToken gets an Entra ID access token: by the client credentials
// grant when a tenant, a client and a secret, certificate or federated
// token are known (config, else AZURE_TENANT_ID, AZURE_CLIENT_ID,
// AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH,
// AZURE_FEDERATED_TOKEN_FILE), else from the VM's managed identity.
func (a *Authenticator) azureToken(ctx context.Context) (cached[string], error) {
	c := a.src.Auth.Azure
	tenant, client := c.TenantID, c.ClientID
	if tenant == "" {
		tenant = getenv("AZURE_TENANT_ID")
	}
	if client == "" {
		client = getenv("AZURE_CLIENT_ID")
	}
	secret := ""
	if c.ClientSecretEnv != "" {
		if secret = os.Getenv(c.ClientSecretEnv); secret == "" {
			return cached[string]{}, fmt.Errorf("retrieval.source.auth.azure.clientSecretEnv names %s, which is empty in the agent's environment: set it to the client secret", c.ClientSecretEnv)
		}
	} else if c.CertificateFile == "" {
		secret = os.Getenv("AZURE_CLIENT_SECRET")
	}
	cert := c.CertificateFile
	if cert == "" && secret == "" {
		cert = getenv("AZURE_CLIENT_CERTIFICATE_PATH")
	}
	federated := ""
	if secret == "" && cert == "" {
		federated = getenv("AZURE_FEDERATED_TOKEN_FILE")
	}
	if c.ManagedIdentity || tenant == "" || (secret == "" && cert == "" && federated == "") {
		t, err := a.azureManagedIdentity(ctx, client)
		if err != nil && !c.ManagedIdentity {
			return t, fmt.Errorf("no client credentials (retrieval.source.auth.azure tenantID, clientID and clientSecretEnv or certificateFile) and the managed identity failed: %w", err)
		}
		return t, err
	}
	if client == "" {
		return cached[string]{}, errors.New("retrieval.source.auth.azure.clientID (or AZURE_CLIENT_ID) is empty: set the application (client) id")
	}
	authority := c.AuthorityHost
	if authority == "" {
		authority = getenv("AZURE_AUTHORITY_HOST")
	}
	if authority == "" {
		authority = "https://login.microsoftonline.com"
	}
	u, err := checkCredentialURL(strings.TrimSuffix(authority, "/") + "/" + url.PathEscape(tenant) + "/oauth2/v2.0/token")
	if err != nil {
		return cached[string]{}, fmt.Errorf("retrieval.source.auth.azure.authorityHost: %w", err)
	}
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {client}, "scope": {AzureScope}}
	how := "client secret"
	switch {
	case secret != "":
		form.Set("client_secret", secret)
	case cert != "":
		assertion, err := a.azureCertAssertion(cert, client, u.String())
		if err != nil {
			return cached[string]{}, err
		}
		form.Set("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
		form.Set("client_assertion", assertion)
		how = "certificate"
	default:
		b, err := os.ReadFile(federated)
		if err != nil {
			return cached[string]{}, fmt.Errorf("AZURE_FEDERATED_TOKEN_FILE: %w", err)
		}
		form.Set("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
		form.Set("client_assertion", strings.TrimSpace(string(b)))
		how = "federated token"
	}
	t, err := a.postToken(ctx, u.String(), form, "Entra ID token endpoint")
	if err != nil {
		return t, err
	}
	t.source = "client " + client + " (" + how + ")"
	return t, nil
}

// azureCertAssertion is the client assertion of certificate credentials:
// a JWT for the token endpoint signed with the certificate's key, naming
// the certificate by its thumbprint (x5t).
func (a *Authenticator) azureCertAssertion(file, client, aud string) (string, error) {
	b, err := os.ReadFile(file) //nolint:gosec // G304: the certificate file the admin configured
	if err != nil {
		return "", fmt.Errorf("retrieval.source.auth.azure.certificateFile: %w", err)
	}
	var certDER []byte
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type == "CERTIFICATE" {
			certDER = blk.Bytes
			break
		}
	}
	if certDER == nil {
		return "", fmt.Errorf("retrieval.source.auth.azure.certificateFile %s has no CERTIFICATE block: put the certificate and its private key in one PEM file", file)
	}
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return "", fmt.Errorf("retrieval.source.auth.azure.certificateFile: %w", err)
	}
	key, err := parseRSAKey(b)
	if err != nil {
		return "", fmt.Errorf("retrieval.source.auth.azure.certificateFile %s: %w", file, err)
	}
	if pub, ok := cert.PublicKey.(*rsa.PublicKey); !ok || !pub.Equal(&key.PublicKey) {
		return "", fmt.Errorf("retrieval.source.auth.azure.certificateFile %s: the private key does not belong to the certificate", file)
	}
	thumb := sha1.Sum(certDER) //nolint:gosec // G401: see the import
	var jti [16]byte
	_, _ = rand.Read(jti[:])
	now := a.now()
	return signJWT(key, map[string]any{"x5t": base64.RawURLEncoding.EncodeToString(thumb[:])}, map[string]any{
		"aud": aud,
		"iss": client,
		"sub": client,
		"jti": hex.EncodeToString(jti[:]),
		"nbf": now.Unix(),
		"iat": now.Unix(),
		"exp": now.Add(10 * time.Minute).Unix(),
	})
}

// azureIMDSEndpoint is Azure's instance metadata service base URL.
func (a *Authenticator) azureIMDSEndpoint() string {
	if e := a.src.Auth.Azure.IMDSEndpoint; e != "" {
		return strings.TrimSuffix(e, "/")
	}
	return "http://169.254.169.254"
}

// azureManagedIdentity asks the VM's managed identity endpoint; client
// selects a user-assigned identity.
func (a *Authenticator) azureManagedIdentity(ctx context.Context, client string) (cached[string], error) {
	base := a.azureIMDSEndpoint()
	if _, err := checkCredentialURL(base); err != nil {
		return cached[string]{}, fmt.Errorf("retrieval.source.auth.azure.imdsEndpoint: %w", err)
	}
	q := url.Values{"api-version": {"2018-02-01"}, "resource": {AzureResource}}
	if client != "" {
		q.Set("client_id", client)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metadata/identity/oauth2/token?"+q.Encode(), nil)
	if err != nil {
		return cached[string]{}, err
	}
	req.Header.Set("Metadata", "true")
	var tok oauthToken
	if _, err := doJSON(a.meta, req, "Azure managed identity", &tok); err != nil {
		return cached[string]{}, err
	}
	exp, err := tok.expiry(a.now())
	if err != nil {
		return cached[string]{}, fmt.Errorf("the Azure managed identity endpoint: %w", err)
	}
	src := "managed identity"
	if client != "" {
		src += " " + client
	}
	return cached[string]{v: tok.AccessToken, expires: exp, source: src}, nil
}
