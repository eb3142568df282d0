package cloudauth

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // G505: x5t is the certificate's SHA-1 thumbprint
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/config"
)

// verifyJWT checks an RS256 JWT's signature with pub and returns its
// header and claims.
func verifyJWT(jwt string, pub *rsa.PublicKey) (header, claims map[string]any, err error) {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return nil, nil, fmt.Errorf("%d parts", len(parts))
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return nil, nil, err
	}
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, sum[:], sig); err != nil {
		return nil, nil, fmt.Errorf("signature: %w", err)
	}
	for i, out := range []*map[string]any{&header, &claims} {
		b, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			return nil, nil, err
		}
		if err := json.Unmarshal(b, out); err != nil {
			return nil, nil, err
		}
	}
	return header, claims, nil
}

func rsaKey(t *testing.T) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// serviceAccountKey writes a Google service-account key file whose
// token_uri is tokenURI.
func serviceAccountKey(t *testing.T, key *rsa.PrivateKey, tokenURI string) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(map[string]string{
		"type": "service_account", "project_id": "proj", "private_key_id": "kid-1",
		"private_key":  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email": "thinlab@proj.iam.gserviceaccount.com", "client_id": "1", "token_uri": tokenURI,
	})
	path := filepath.Join(t.TempDir(), "sa.json")
	write(t, path, string(b))
	return path
}

// GoogleTokenServer is a fake Google token endpoint: it accepts the
// JWT-bearer grant whose assertion verifies with pub and is addressed to
// it with the sqlservice.login scope, and issues tokenFor(n) for the n-th
// grant, valid for an hour.
func fakeGoogleToken(t *testing.T, pub *rsa.PublicKey, clk *testClock, tokenFor func(int32) string, calls *atomic.Int32) *httptest.Server {
	t.Helper()
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil || r.PostForm.Get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
			http.Error(w, `{"error":"unsupported_grant_type"}`, http.StatusBadRequest)
			return
		}
		h, c, err := verifyJWT(r.PostForm.Get("assertion"), pub)
		if err != nil {
			http.Error(w, `{"error":"invalid_grant","error_description":"`+err.Error()+`"}`, http.StatusBadRequest)
			return
		}
		iat, _ := c["iat"].(float64)
		exp, _ := c["exp"].(float64)
		if h["alg"] != "RS256" || h["kid"] != "kid-1" || c["iss"] != "thinlab@proj.iam.gserviceaccount.com" || c["scope"] != GCPScope ||
			c["aud"] != srv.URL+"/token" || int64(iat) != clk.Now().Unix() || exp-iat != 3600 {
			http.Error(w, fmt.Sprintf(`{"error":"invalid_grant","error_description":"claims %v header %v"}`, c, h), http.StatusBadRequest)
			return
		}
		n := calls.Add(1)
		_, _ = fmt.Fprintf(w, `{"access_token":%q,"expires_in":3599,"token_type":"Bearer"}`, tokenFor(n))
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestGCPServiceAccountKey: a service-account key (auth.gcp.keyFile, or
// GOOGLE_APPLICATION_CREDENTIALS) is exchanged at its token_uri for an
// access token with a JWT assertion that verifies with the key's public
// half and carries the sqlservice.login scope, issuer, audience and
// times of the fixed clock; the token is the password, kept until 5
// minutes before it expires.
func TestGCPServiceAccountKey(t *testing.T) {
	clearCloudEnv(t)
	clk := &testClock{t: t0}
	key := rsaKey(t)
	var calls atomic.Int32
	srv := fakeGoogleToken(t, &key.PublicKey, clk, func(n int32) string { return fmt.Sprintf("ya29.token-%d", n) }, &calls)
	file := serviceAccountKey(t, key, srv.URL+"/token")
	src := config.Source{Host: "10.0.0.5", Username: "thinlab@proj.iam", Auth: config.SourceAuth{Kind: config.AuthGCPCloudSQLIAM, GCP: config.GCPAuth{KeyFile: file}}}
	a, log := newAuth(t, src, clk)
	pw := func(a *Authenticator) string {
		t.Helper()
		p, ok, err := a.Password(t.Context(), map[string]string{"host": "10.0.0.5", "user": "thinlab@proj.iam"})
		if err != nil || !ok {
			t.Fatalf("Password: %v %v", ok, err)
		}
		return p
	}
	if got := pw(a); got != "ya29.token-1" {
		t.Fatalf("password %q, want ya29.token-1", got)
	}
	clk.Add(50 * time.Minute)
	if got := pw(a); got != "ya29.token-1" || calls.Load() != 1 {
		t.Fatalf("cached token: %q after %d grants", got, calls.Load())
	}
	clk.Add(5 * time.Minute)
	if got := pw(a); got != "ya29.token-2" {
		t.Fatalf("near expiry: %q, want the fresh ya29.token-2", got)
	}
	if strings.Contains(log.String(), "ya29.") {
		t.Fatalf("the log holds the token:\n%s", log)
	}
	// The same key through GOOGLE_APPLICATION_CREDENTIALS.
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", file)
	src.Auth.GCP.KeyFile = ""
	if got := pw(New(src, Options{Now: clk.Now})); got != "ya29.token-3" {
		t.Fatalf("GOOGLE_APPLICATION_CREDENTIALS: %q", got)
	}
	// A key the token endpoint does not know: its signature fails there.
	other := serviceAccountKey(t, rsaKey(t), srv.URL+"/token")
	src.Auth.GCP.KeyFile = other
	if _, _, err := New(src, Options{Now: clk.Now}).Password(t.Context(), nil); err == nil || !strings.Contains(err.Error(), "invalid_grant") || !strings.Contains(err.Error(), "Google token endpoint") {
		t.Fatalf("unknown key: %v", err)
	}
	// A token_uri over plain http to a remote host is refused.
	src.Auth.GCP.KeyFile = serviceAccountKey(t, key, "http://192.0.2.1/token")
	if _, _, err := New(src, Options{Now: clk.Now}).Password(t.Context(), nil); err == nil || !strings.Contains(err.Error(), "use https") {
		t.Fatalf("plain http token_uri: %v", err)
	}
}

// TestGCPMetadataServer: without a key file the token comes from the
// metadata server (overridden endpoint), asked with Metadata-Flavor:
// Google for the sqlservice.login scope; an answer without that header
// is not trusted.
func TestGCPMetadataServer(t *testing.T) {
	clearCloudEnv(t)
	clk := &testClock{t: t0}
	flavor := "Google"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Metadata-Flavor") != "Google" || r.URL.Path != "/computeMetadata/v1/instance/service-accounts/default/token" || r.URL.Query().Get("scopes") != GCPScope {
			http.Error(w, "bad", http.StatusForbidden)
			return
		}
		w.Header().Set("Metadata-Flavor", flavor)
		_, _ = fmt.Fprint(w, `{"access_token":"ya29.metadata","expires_in":1800,"token_type":"Bearer"}`)
	}))
	t.Cleanup(srv.Close)
	src := config.Source{Host: "10.0.0.5", Username: "u", Auth: config.SourceAuth{Kind: config.AuthGCPCloudSQLIAM, GCP: config.GCPAuth{MetadataEndpoint: srv.URL}}}
	if pw, _, err := New(src, Options{Now: clk.Now}).Password(t.Context(), nil); err != nil || pw != "ya29.metadata" {
		t.Fatalf("metadata token %q, %v", pw, err)
	}
	flavor = ""
	if _, _, err := New(src, Options{Now: clk.Now}).Password(t.Context(), nil); err == nil || !strings.Contains(err.Error(), "not the metadata server") {
		t.Fatalf("an answer without Metadata-Flavor: %v", err)
	}
}

// fakeEntra is a fake Microsoft Entra ID token endpoint for tenant
// "tenant-1": client secret "s3cret" of client "app-1", or a client
// assertion that verifies with certKey and names the certificate by
// thumbprint; each grant gets a numbered token valid for an hour.
func fakeEntra(t *testing.T, cert *x509.Certificate, calls *atomic.Int32) *httptest.Server {
	t.Helper()
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil || r.URL.Path != "/tenant-1/oauth2/v2.0/token" || r.PostForm.Get("grant_type") != "client_credentials" ||
			r.PostForm.Get("client_id") != "app-1" || r.PostForm.Get("scope") != AzureScope {
			http.Error(w, `{"error":"invalid_request"}`, http.StatusBadRequest)
			return
		}
		switch {
		case r.PostForm.Get("client_secret") == "s3cret":
		case r.PostForm.Get("client_assertion_type") == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" && cert != nil:
			h, c, err := verifyJWT(r.PostForm.Get("client_assertion"), cert.PublicKey.(*rsa.PublicKey))
			thumb := sha1.Sum(cert.Raw) //nolint:gosec // G401: the thumbprint
			if err != nil || h["x5t"] != base64.RawURLEncoding.EncodeToString(thumb[:]) || c["iss"] != "app-1" || c["sub"] != "app-1" || c["aud"] != srv.URL+"/tenant-1/oauth2/v2.0/token" {
				http.Error(w, fmt.Sprintf(`{"error":"invalid_client","error_description":"AADSTS700027 %v %v"}`, err, c), http.StatusUnauthorized)
				return
			}
		default:
			http.Error(w, `{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided."}`, http.StatusUnauthorized)
			return
		}
		_, _ = fmt.Fprintf(w, `{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"eyJ.entra-%d"}`, calls.Add(1))
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestAzureClientCredentials: with tenant and client the token comes
// from the (overridden) authority host by the client credentials grant
// for the ossrdbms-aad scope: with the secret from the named environment
// variable, or with a certificate whose signed assertion verifies with
// its public key; the token is cached until it nears expiry. A wrong
// secret gets Entra's error.
func TestAzureClientCredentials(t *testing.T) {
	clearCloudEnv(t)
	clk := &testClock{t: t0}
	key := rsaKey(t)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "thinlab"}, NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	var calls atomic.Int32
	srv := fakeEntra(t, cert, &calls)
	t.Setenv("THINLAB_TEST_AZ_SECRET", "s3cret")
	src := config.Source{Host: "x.postgres.database.azure.com", Username: "thinlab", Auth: config.SourceAuth{Kind: config.AuthAzureAD,
		Azure: config.AzureAuth{TenantID: "tenant-1", ClientID: "app-1", ClientSecretEnv: "THINLAB_TEST_AZ_SECRET", AuthorityHost: srv.URL}}}
	a, log := newAuth(t, src, clk)
	get := func(a *Authenticator) (string, error) {
		pw, _, err := a.Password(t.Context(), nil)
		return pw, err
	}
	if pw, err := get(a); err != nil || pw != "eyJ.entra-1" {
		t.Fatalf("client secret: %q %v", pw, err)
	}
	clk.Add(40 * time.Minute)
	if pw, _ := get(a); pw != "eyJ.entra-1" {
		t.Fatalf("cached: %q", pw)
	}
	clk.Add(16 * time.Minute)
	if pw, _ := get(a); pw != "eyJ.entra-2" {
		t.Fatalf("near expiry: %q, want eyJ.entra-2", pw)
	}
	if strings.Contains(log.String(), "s3cret") || strings.Contains(log.String(), "eyJ.entra") {
		t.Fatalf("the log holds a secret:\n%s", log)
	}
	t.Setenv("THINLAB_TEST_AZ_SECRET", "wrong")
	if _, err := get(New(src, Options{Now: clk.Now})); err == nil || !strings.Contains(err.Error(), "AADSTS7000215") {
		t.Fatalf("wrong secret: %v", err)
	}

	keyDER := x509.MarshalPKCS1PrivateKey(key)
	pemFile := filepath.Join(t.TempDir(), "client.pem")
	write(t, pemFile, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))+string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: keyDER})))
	src.Auth.Azure.ClientSecretEnv = ""
	src.Auth.Azure.CertificateFile = pemFile
	if pw, err := get(New(src, Options{Now: clk.Now})); err != nil || !strings.HasPrefix(pw, "eyJ.entra-") {
		t.Fatalf("certificate: %q %v", pw, err)
	}
}

// TestAzureManagedIdentity: without client credentials the VM's managed
// identity endpoint (overridden) is asked with Metadata: true for the
// ossrdbms-aad resource (a user-assigned identity by client_id);
// expires_on comes as a string of Unix seconds.
func TestAzureManagedIdentity(t *testing.T) {
	clearCloudEnv(t)
	clk := &testClock{t: t0}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if r.Header.Get("Metadata") != "true" || r.URL.Path != "/metadata/identity/oauth2/token" || q.Get("resource") != AzureResource || q.Get("api-version") == "" {
			http.Error(w, `{"error":"invalid_request"}`, http.StatusBadRequest)
			return
		}
		_, _ = fmt.Fprintf(w, `{"access_token":"eyJ.mi-%s","expires_on":"%d","resource":%q,"token_type":"Bearer"}`, q.Get("client_id"), clk.Now().Add(time.Hour).Unix(), AzureResource) //nolint:gosec // G705: a test server answering JSON to the test
	}))
	t.Cleanup(srv.Close)
	src := config.Source{Host: "x", Username: "u", Auth: config.SourceAuth{Kind: config.AuthAzureAD, Azure: config.AzureAuth{IMDSEndpoint: srv.URL}}}
	if pw, _, err := New(src, Options{Now: clk.Now}).Password(t.Context(), nil); err != nil || pw != "eyJ.mi-" {
		t.Fatalf("system-assigned identity: %q %v", pw, err)
	}
	src.Auth.Azure.ClientID = "user-assigned-1"
	if pw, _, err := New(src, Options{Now: clk.Now}).Password(t.Context(), nil); err != nil || pw != "eyJ.mi-user-assigned-1" {
		t.Fatalf("user-assigned identity: %q %v", pw, err)
	}
	srv.Close()
	if _, _, err := New(src, Options{Now: clk.Now}).Password(t.Context(), nil); err == nil || !strings.Contains(err.Error(), "no client credentials") {
		t.Fatalf("no identity: %v", err)
	}
}

// TestGCPAuthorizedUser: the authorized_user file of `gcloud auth
// application-default login` is exchanged at its token_uri by the
// refresh-token grant.
func TestGCPAuthorizedUser(t *testing.T) {
	clearCloudEnv(t)
	clk := &testClock{t: t0}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil || r.PostForm.Get("grant_type") != "refresh_token" || r.PostForm.Get("refresh_token") != "1//refresh" || r.PostForm.Get("client_id") != "cid.apps.googleusercontent.com" {
			http.Error(w, `{"error":"invalid_grant"}`, http.StatusBadRequest)
			return
		}
		_, _ = fmt.Fprint(w, `{"access_token":"ya29.user","expires_in":3599,"scope":"openid","token_type":"Bearer"}`)
	}))
	t.Cleanup(srv.Close)
	b, _ := json.Marshal(map[string]string{"type": "authorized_user", "client_id": "cid.apps.googleusercontent.com", "client_secret": "csecret", "refresh_token": "1//refresh", "token_uri": srv.URL + "/token"})
	file := filepath.Join(t.TempDir(), "adc.json")
	write(t, file, string(b))
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", file)
	src := config.Source{Host: "h", Username: "me@example.com", Auth: config.SourceAuth{Kind: config.AuthGCPCloudSQLIAM}}
	if pw, _, err := New(src, Options{Now: clk.Now}).Password(t.Context(), nil); err != nil || pw != "ya29.user" {
		t.Fatalf("authorized_user: %q %v", pw, err)
	}
	write(t, file, `{"type":"external_account"}`)
	if _, _, err := New(src, Options{Now: clk.Now}).Password(t.Context(), nil); err == nil || !strings.Contains(err.Error(), "GOOGLE_APPLICATION_CREDENTIALS") || !strings.Contains(err.Error(), "external_account") {
		t.Fatalf("external_account: %v", err)
	}
}

// TestAzureFederatedToken: with AZURE_TENANT_ID, AZURE_CLIENT_ID and
// AZURE_FEDERATED_TOKEN_FILE (AKS workload identity) the file's token is
// the client assertion of the client credentials grant.
func TestAzureFederatedToken(t *testing.T) {
	clearCloudEnv(t)
	clk := &testClock{t: t0}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil || r.URL.Path != "/tenant-1/oauth2/v2.0/token" || r.PostForm.Get("client_assertion") != "eyJ.k8s.sa" ||
			r.PostForm.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" || r.PostForm.Get("client_id") != "app-1" || r.PostForm.Get("scope") != AzureScope {
			http.Error(w, `{"error":"invalid_client"}`, http.StatusUnauthorized)
			return
		}
		_, _ = fmt.Fprint(w, `{"token_type":"Bearer","expires_in":3599,"access_token":"eyJ.federated"}`)
	}))
	t.Cleanup(srv.Close)
	tok := filepath.Join(t.TempDir(), "azure-identity-token")
	write(t, tok, "eyJ.k8s.sa\n")
	t.Setenv("AZURE_TENANT_ID", "tenant-1")
	t.Setenv("AZURE_CLIENT_ID", "app-1")
	t.Setenv("AZURE_FEDERATED_TOKEN_FILE", tok)
	t.Setenv("AZURE_AUTHORITY_HOST", srv.URL)
	src := config.Source{Host: "h", Username: "u", Auth: config.SourceAuth{Kind: config.AuthAzureAD}}
	if pw, _, err := New(src, Options{Now: clk.Now}).Password(t.Context(), nil); err != nil || pw != "eyJ.federated" {
		t.Fatalf("federated token: %q %v", pw, err)
	}
}
