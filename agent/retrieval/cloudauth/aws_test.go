package cloudauth

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/internal/logtest"
)

// No cloud endpoint is reachable from the tests: httptest servers on
// loopback stand in for STS, ECS, EC2 IMDS, Google's and Microsoft's token
// endpoints and metadata servers, with fixed credentials and a clock the
// test moves.

// testClock is a clock that moves only when told.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

var t0 = time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)

// clearCloudEnv unsets every variable the chains read, so the host's
// environment cannot leak into a test, and points HOME at an empty
// directory (no ~/.aws files).
func clearCloudEnv(t *testing.T) {
	t.Helper()
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
		"AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME",
		"AWS_ENDPOINT_URL_STS", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
		"AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "AWS_EC2_METADATA_DISABLED",
		"AWS_EC2_METADATA_SERVICE_ENDPOINT", "GOOGLE_APPLICATION_CREDENTIALS", "GCE_METADATA_HOST",
		"AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
		"AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST"} {
		t.Setenv(k, "")
	}
	t.Setenv("HOME", t.TempDir())
}

func rdsSource() config.Source {
	return config.Source{Host: "prod-instance.us-east-1.rds.amazonaws.com", Port: 3306, Username: "someusername",
		Auth: config.SourceAuth{Kind: config.AuthAWSRDSIAM, AWS: config.AWSAuth{Region: "us-east-1"}}}
}

var rdsParams = map[string]string{"host": "prod-instance.us-east-1.rds.amazonaws.com", "port": "3306", "user": "someusername"}

func newAuth(t *testing.T, src config.Source, clk *testClock) (*Authenticator, *logtest.Buffer) {
	t.Helper()
	log := &logtest.Buffer{}
	return New(src, Options{Now: clk.Now, Logger: log.Logger()}), log
}

func tokenQuery(t *testing.T, tok string) url.Values {
	t.Helper()
	u, err := url.Parse("https://" + tok)
	if err != nil {
		t.Fatalf("token %q is not a URL without its scheme: %v", tok, err)
	}
	return u.Query()
}

// TestRDSTokenKnownAnswer: with the key from the environment and a fixed
// clock the password is exactly the token botocore's
// generate_db_auth_token test expects (akid/skid, 2016-11-07T17:39:33Z,
// us-east-1, port 3306): the same signature.
func TestRDSTokenKnownAnswer(t *testing.T) {
	clearCloudEnv(t)
	t.Setenv("AWS_ACCESS_KEY_ID", "akid")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "skid")
	clk := &testClock{t: time.Date(2016, 11, 7, 17, 39, 33, 0, time.UTC)}
	a, _ := newAuth(t, rdsSource(), clk)
	pw, ok, err := a.Password(t.Context(), rdsParams)
	if err != nil || !ok {
		t.Fatalf("Password: %v %v", ok, err)
	}
	if !strings.HasPrefix(pw, "prod-instance.us-east-1.rds.amazonaws.com:3306/?") {
		t.Fatalf("token %s", pw)
	}
	want := url.Values{
		"Action": {"connect"}, "DBUser": {"someusername"}, "X-Amz-Algorithm": {"AWS4-HMAC-SHA256"},
		"X-Amz-Date": {"20161107T173933Z"}, "X-Amz-SignedHeaders": {"host"}, "X-Amz-Expires": {"900"},
		"X-Amz-Credential": {"akid/20161107/us-east-1/rds-db/aws4_request"},
		"X-Amz-Signature":  {"d1138cdbc0ca63eec012ec0fc6c2267e03642168f5884a7795320d4c18374c61"},
	}
	if got := tokenQuery(t, pw); got.Encode() != want.Encode() {
		t.Fatalf("token query\n got %s\nwant %s", got.Encode(), want.Encode())
	}
}

// TestAWSSharedFiles: without keys in the environment the profile of the
// shared files counts: the credentials file's [default], a named profile
// with a session token chosen by AWS_PROFILE or auth.aws.profile, a
// profile only in the config file; a named profile in neither file is an
// error naming it.
func TestAWSSharedFiles(t *testing.T) {
	clearCloudEnv(t)
	dir := t.TempDir()
	creds := filepath.Join(dir, "credentials")
	cfgFile := filepath.Join(dir, "config")
	write(t, creds, "# comment\n[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = secretdefault\n\n[prod]\naws_access_key_id=AKIDPROD\naws_secret_access_key=secretprod\naws_session_token = sessprod\n")
	write(t, cfgFile, "[default]\nregion = us-east-1\n[profile cfgonly]\naws_access_key_id = AKIDCFG\naws_secret_access_key = secretcfg\n[profile prod]\naws_access_key_id = AKIDOVERRIDDEN\n")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", creds)
	t.Setenv("AWS_CONFIG_FILE", cfgFile)
	clk := &testClock{t: t0}
	keyOf := func(src config.Source) (string, string, error) {
		a, _ := newAuth(t, src, clk)
		pw, _, err := a.Password(t.Context(), rdsParams)
		if err != nil {
			return "", "", err
		}
		q := tokenQuery(t, pw)
		id, _, _ := strings.Cut(q.Get("X-Amz-Credential"), "/")
		return id, q.Get("X-Amz-Security-Token"), nil
	}
	if id, tok, err := keyOf(rdsSource()); err != nil || id != "AKIDDEFAULT" || tok != "" {
		t.Fatalf("default profile: key %q token %q err %v", id, tok, err)
	}
	t.Setenv("AWS_PROFILE", "prod")
	if id, tok, err := keyOf(rdsSource()); err != nil || id != "AKIDPROD" || tok != "sessprod" {
		t.Fatalf("AWS_PROFILE prod: key %q token %q err %v (the credentials file wins over the config file)", id, tok, err)
	}
	src := rdsSource()
	src.Auth.AWS.Profile = "cfgonly"
	if id, _, err := keyOf(src); err != nil || id != "AKIDCFG" {
		t.Fatalf("profile cfgonly from the config file: key %q err %v", id, err)
	}
	src.Auth.AWS.Profile = "missing"
	if _, _, err := keyOf(src); err == nil || !strings.Contains(err.Error(), `AWS profile "missing" is in neither`) {
		t.Fatalf("missing profile: %v", err)
	}
	// Keys in the environment come first.
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDENV")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secretenv")
	if id, _, err := keyOf(rdsSource()); err != nil || id != "AKIDENV" {
		t.Fatalf("environment keys: key %q err %v", id, err)
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// fakeSTS answers AssumeRoleWithWebIdentity for role with credentials
// numbered by call, valid for an hour from the clock.
func fakeSTS(t *testing.T, clk *testClock, role, webToken string, calls *atomic.Int32) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil || r.Method != http.MethodPost {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		if r.PostForm.Get("Action") != "AssumeRoleWithWebIdentity" || r.PostForm.Get("Version") != "2011-06-15" ||
			r.PostForm.Get("RoleArn") != role || r.PostForm.Get("WebIdentityToken") != webToken || r.PostForm.Get("RoleSessionName") == "" {
			w.WriteHeader(http.StatusForbidden)
			_, _ = fmt.Fprint(w, `<ErrorResponse><Error><Code>AccessDenied</Code><Message>Not authorized to perform sts:AssumeRoleWithWebIdentity</Message></Error></ErrorResponse>`)
			return
		}
		n := calls.Add(1)
		_, _ = fmt.Fprintf(w, `<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <Credentials>
      <AccessKeyId>ASIASTS%d</AccessKeyId>
      <SecretAccessKey>stssecret%d</SecretAccessKey>
      <SessionToken>stssession%d</SessionToken>
      <Expiration>%s</Expiration>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>`, n, n, n, clk.Now().Add(time.Hour).Format(time.RFC3339))
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestAWSWebIdentityCachesAndRefreshes: AWS_WEB_IDENTITY_TOKEN_FILE and
// AWS_ROLE_ARN are exchanged at the (overridden) STS endpoint for
// temporary credentials that sign the token (key and session token);
// they are reused while valid and fetched again 5 minutes before they
// expire. A refused exchange names STS and its answer.
func TestAWSWebIdentityCachesAndRefreshes(t *testing.T) {
	clearCloudEnv(t)
	clk := &testClock{t: t0}
	var calls atomic.Int32
	const role = "arn:aws:iam::123456789012:role/thinlab"
	sts := fakeSTS(t, clk, role, "eyJ.web.identity", &calls)
	tokFile := filepath.Join(t.TempDir(), "token")
	write(t, tokFile, "eyJ.web.identity\n")
	t.Setenv("AWS_WEB_IDENTITY_TOKEN_FILE", tokFile)
	t.Setenv("AWS_ROLE_ARN", role)
	src := rdsSource()
	src.Auth.AWS.STSEndpoint = sts.URL
	a, log := newAuth(t, src, clk)
	key := func() (string, string) {
		t.Helper()
		pw, _, err := a.Password(t.Context(), rdsParams)
		if err != nil {
			t.Fatal(err)
		}
		q := tokenQuery(t, pw)
		id, _, _ := strings.Cut(q.Get("X-Amz-Credential"), "/")
		return id, q.Get("X-Amz-Security-Token")
	}
	if id, tok := key(); id != "ASIASTS1" || tok != "stssession1" || calls.Load() != 1 {
		t.Fatalf("first: key %s token %s after %d STS calls", id, tok, calls.Load())
	}
	clk.Add(50 * time.Minute)
	if id, _ := key(); id != "ASIASTS1" || calls.Load() != 1 {
		t.Fatalf("10 minutes before expiry: key %s after %d STS calls, want the cached ASIASTS1", id, calls.Load())
	}
	clk.Add(6 * time.Minute)
	if id, tok := key(); id != "ASIASTS2" || tok != "stssession2" || calls.Load() != 2 {
		t.Fatalf("4 minutes before expiry: key %s token %s after %d STS calls, want fresh ASIASTS2", id, tok, calls.Load())
	}
	for _, secret := range []string{"stssecret", "stssession", "eyJ.web.identity"} {
		if strings.Contains(log.String(), secret) {
			t.Fatalf("the log holds a secret %q:\n%s", secret, log)
		}
	}
	t.Setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/other")
	b, _ := newAuth(t, src, clk)
	if _, _, err := b.Password(t.Context(), rdsParams); err == nil || !strings.Contains(err.Error(), "STS AssumeRoleWithWebIdentity") || !strings.Contains(err.Error(), "AccessDenied") {
		t.Fatalf("refused exchange: %v", err)
	}
}

// TestAWSContainerCredentials: AWS_CONTAINER_CREDENTIALS_FULL_URI with
// the authorization token (from the variable or its file) yields the
// container role's credentials; a plain-http URI to another host is
// refused before anything is sent.
func TestAWSContainerCredentials(t *testing.T) {
	clearCloudEnv(t)
	clk := &testClock{t: t0}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "ecs-auth-token" || r.URL.Path != "/v2/credentials/abc" {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		_, _ = fmt.Fprintf(w, `{"AccessKeyId":"ASIAECS","SecretAccessKey":"ecssecret","Token":"ecssession","Expiration":%q,"RoleArn":"arn:aws:iam::1:role/task"}`, clk.Now().Add(6*time.Hour).Format(time.RFC3339))
	}))
	t.Cleanup(srv.Close)
	t.Setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", srv.URL+"/v2/credentials/abc")
	tokFile := filepath.Join(t.TempDir(), "ecs-token")
	write(t, tokFile, "ecs-auth-token\n")
	t.Setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", tokFile)
	a, _ := newAuth(t, rdsSource(), clk)
	pw, _, err := a.Password(t.Context(), rdsParams)
	if err != nil {
		t.Fatal(err)
	}
	if q := tokenQuery(t, pw); !strings.HasPrefix(q.Get("X-Amz-Credential"), "ASIAECS/") || q.Get("X-Amz-Security-Token") != "ecssession" {
		t.Fatalf("container credentials not used: %v", q)
	}
	t.Setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "")
	t.Setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "wrong")
	if _, _, err := New(rdsSource(), Options{Now: clk.Now}).Password(t.Context(), rdsParams); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("wrong authorization token: %v", err)
	}
	t.Setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://192.0.2.10/creds")
	if _, _, err := New(rdsSource(), Options{Now: clk.Now}).Password(t.Context(), rdsParams); err == nil || !strings.Contains(err.Error(), "use https") {
		t.Fatalf("plain http to another host: %v", err)
	}
}

// TestAWSInstanceMetadata: with nothing else configured the EC2 instance
// role's credentials come from IMDSv2 (overridden endpoint): a PUT for a
// session token, which the two GETs must carry; they are refreshed when
// they near expiry. Without any source the error lists the ways to give
// credentials.
func TestAWSInstanceMetadata(t *testing.T) {
	clearCloudEnv(t)
	clk := &testClock{t: t0}
	var credCalls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && r.URL.Path == "/latest/api/token" {
			if r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds") == "" {
				http.Error(w, "ttl", http.StatusBadRequest)
				return
			}
			_, _ = fmt.Fprint(w, "imds-session")
			return
		}
		if r.Header.Get("X-aws-ec2-metadata-token") != "imds-session" {
			http.Error(w, "IMDSv2 token missing", http.StatusUnauthorized)
			return
		}
		switch r.URL.Path {
		case "/latest/meta-data/iam/security-credentials/":
			_, _ = fmt.Fprint(w, "thinlab-role")
		case "/latest/meta-data/iam/security-credentials/thinlab-role":
			n := credCalls.Add(1)
			_, _ = fmt.Fprintf(w, `{"Code":"Success","Type":"AWS-HMAC","AccessKeyId":"ASIAEC2%d","SecretAccessKey":"ec2secret","Token":"ec2session","Expiration":%q}`, n, clk.Now().Add(time.Hour).Format(time.RFC3339))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	src := rdsSource()
	src.Auth.AWS.IMDSEndpoint = srv.URL
	a, _ := newAuth(t, src, clk)
	keyID := func() string {
		t.Helper()
		pw, _, err := a.Password(t.Context(), rdsParams)
		if err != nil {
			t.Fatal(err)
		}
		id, _, _ := strings.Cut(tokenQuery(t, pw).Get("X-Amz-Credential"), "/")
		return id
	}
	if id := keyID(); id != "ASIAEC21" {
		t.Fatalf("key %s, want ASIAEC21", id)
	}
	clk.Add(30 * time.Minute)
	if id := keyID(); id != "ASIAEC21" || credCalls.Load() != 1 {
		t.Fatalf("cached: key %s after %d calls", id, credCalls.Load())
	}
	clk.Add(26 * time.Minute)
	if id := keyID(); id != "ASIAEC22" {
		t.Fatalf("near expiry: key %s, want fresh ASIAEC22", id)
	}

	// Nothing anywhere: IMDS on a closed port.
	srv.Close()
	b, _ := newAuth(t, src, clk)
	if _, _, err := b.Password(t.Context(), rdsParams); err == nil || !strings.Contains(err.Error(), "AWS_ACCESS_KEY_ID") || !strings.Contains(err.Error(), "AWS_WEB_IDENTITY_TOKEN_FILE") || !strings.Contains(err.Error(), "EC2 instance metadata") {
		t.Fatalf("no credentials anywhere: %v", err)
	}
}
