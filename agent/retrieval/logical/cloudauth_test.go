package logical

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/retrieval/cloudauth"
	"github.com/thinlab/thinlab/agent/retrieval/retrievaltest"
	"github.com/thinlab/thinlab/agent/retrieval/sigv4"
	"github.com/thinlab/thinlab/internal/logtest"
)

// TestCloudSQLIAMRetrieval is the end to end of a cloud IAM source: no
// Google endpoint is reachable, so a loopback server stands in for the
// token endpoint of a service-account key and issues ya29.e2e-N for the
// N-th grant; a real PostgreSQL source has a login role whose password
// is set to the token it will issue. A logical retrieval logs in with
// the token (listing the databases over pgx, pg_dump through
// PGPASSWORD in its environment and never in its arguments) and copies
// the data. When the clock passes the token's expiry the next refresh
// gets a new token: refused while the role still has the old one, and
// succeeding once the role's password is the new token.
func TestCloudSQLIAMRetrieval(t *testing.T) {
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", "")
	src := retrievaltest.Source(t)
	src.Exec(t, "postgres", "CREATE ROLE iam_reader LOGIN PASSWORD 'ya29.e2e-1'", "GRANT pg_read_all_data TO iam_reader")

	var grants atomic.Int32
	tokenSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil || r.PostForm.Get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" || r.PostForm.Get("assertion") == "" {
			http.Error(w, `{"error":"invalid_grant"}`, http.StatusBadRequest)
			return
		}
		_, _ = fmt.Fprintf(w, `{"access_token":"ya29.e2e-%d","expires_in":3600,"token_type":"Bearer"}`, grants.Add(1))
	}))
	t.Cleanup(tokenSrv.Close)
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyJSON, _ := json.Marshal(map[string]string{"type": "service_account", "client_email": "thinlab@proj.iam.gserviceaccount.com",
		"private_key": string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), "token_uri": tokenSrv.URL + "/token"})
	keyFile := filepath.Join(t.TempDir(), "sa.json")
	if err := os.WriteFile(keyFile, keyJSON, 0o600); err != nil {
		t.Fatal(err)
	}

	source := config.Source{Host: "127.0.0.1", Port: src.Port, Username: "iam_reader", SSLMode: "disable",
		Auth: config.SourceAuth{Kind: config.AuthGCPCloudSQLIAM, GCP: config.GCPAuth{KeyFile: keyFile}}}
	log := &logtest.Buffer{}
	j := newTestJob(t, source, nil, log)
	now := time.Now()
	var clockMu sync.Mutex
	clock := func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return now }
	j.auth = cloudauth.New(source, cloudauth.Options{Now: clock, Logger: log.Logger()})

	// What pg_dump got, read from the kernel while it runs.
	var mu sync.Mutex
	var seen []string
	j.onStart = func(name string, pid int) {
		if name != "pg_dump" {
			return
		}
		cmdline, err1 := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		environ, err2 := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		mu.Lock()
		defer mu.Unlock()
		if err1 != nil || err2 != nil {
			seen = append(seen, "unreadable")
			return
		}
		if strings.Contains(string(cmdline), "ya29.") {
			seen = append(seen, "token in argv")
			return
		}
		for kv := range strings.SplitSeq(string(environ), "\x00") {
			if v, ok := strings.CutPrefix(kv, "PGPASSWORD="); ok {
				seen = append(seen, v)
			}
		}
	}
	p := clonetest.NewPool(t)
	out, snap, err := fill(t, j, p)
	if err != nil {
		t.Fatalf("retrieval with the IAM token: %v", err)
	}
	if got := retrievaltest.Query(t, p, snap.ID, "app", "SELECT count(*)::text FROM users"); got != "1000" {
		t.Fatalf("the snapshot has %s users, want 1000", got)
	}
	mu.Lock()
	if len(seen) != len(out.Databases) || len(seen) == 0 {
		t.Fatalf("pg_dump runs seen %v for databases %v", seen, out.Databases)
	}
	for _, s := range seen {
		if s != "ya29.e2e-1" {
			t.Fatalf("pg_dump's password %q, want the issued token ya29.e2e-1 in PGPASSWORD and nothing in argv", s)
		}
	}
	seen = nil
	mu.Unlock()
	if grants.Load() != 1 {
		t.Fatalf("%d token grants for one refresh, want 1 (cached)", grants.Load())
	}

	// An hour and more later: a new token, which the role does not have yet.
	clockMu.Lock()
	now = now.Add(61 * time.Minute)
	clockMu.Unlock()
	if _, _, err := fill(t, j, p); err == nil || !strings.Contains(err.Error(), "password authentication failed") {
		t.Fatalf("refresh with a token the role does not have: %v, want a refused login", err)
	}
	if grants.Load() != 2 {
		t.Fatalf("%d token grants after the expiry, want 2", grants.Load())
	}
	src.Exec(t, "postgres", "ALTER ROLE iam_reader PASSWORD 'ya29.e2e-2'")
	src.Exec(t, "app", "INSERT INTO users (email) VALUES ('after-rotation@example.com')")
	if _, snap, err = fill(t, j, p); err != nil {
		t.Fatalf("refresh with the new token: %v", err)
	}
	if got := retrievaltest.Query(t, p, snap.ID, "app", "SELECT count(*)::text FROM users"); got != "1001" {
		t.Fatalf("the new snapshot has %s users, want 1001", got)
	}
	for _, tok := range []string{"ya29.e2e-1", "ya29.e2e-2"} {
		if strings.Contains(log.String(), tok) {
			t.Fatalf("the log holds the token %s:\n%s", tok, log)
		}
	}
}

// TestRDSIAMRetrieval: the AWS path end to end, with a fixed clock. A
// loopback server stands in for STS and exchanges the web identity token
// (AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN) for temporary credentials;
// the RDS IAM token those sign for 127.0.0.1:port, the role and the
// region at the fixed time is deterministic, so the source role's
// password is set to exactly that token, and a logical retrieval with
// auth.kind awsRdsIam logs in with it and copies the data.
func TestRDSIAMRetrieval(t *testing.T) {
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL_STS"} {
		t.Setenv(k, "")
	}
	t.Setenv("HOME", t.TempDir())
	fixed := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	const role = "arn:aws:iam::123456789012:role/thinlab"
	sts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil || r.PostForm.Get("Action") != "AssumeRoleWithWebIdentity" || r.PostForm.Get("RoleArn") != role || r.PostForm.Get("WebIdentityToken") != "eyJ.irsa" {
			http.Error(w, "<ErrorResponse><Error><Code>AccessDenied</Code></Error></ErrorResponse>", http.StatusForbidden)
			return
		}
		_, _ = fmt.Fprintf(w, `<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>
<AccessKeyId>ASIAE2E</AccessKeyId><SecretAccessKey>e2esecret</SecretAccessKey><SessionToken>e2esession</SessionToken>
<Expiration>%s</Expiration></Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>`, fixed.Add(time.Hour).Format(time.RFC3339))
	}))
	t.Cleanup(sts.Close)
	tokFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokFile, []byte("eyJ.irsa"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_WEB_IDENTITY_TOKEN_FILE", tokFile)
	t.Setenv("AWS_ROLE_ARN", role)

	src := retrievaltest.Source(t)
	want := sigv4.RDSAuthToken(fmt.Sprintf("127.0.0.1:%d", src.Port), "eu-west-1", "rds_reader",
		sigv4.Credentials{AccessKeyID: "ASIAE2E", SecretAccessKey: "e2esecret", SessionToken: "e2esession"}, fixed)
	src.Exec(t, "postgres", "CREATE ROLE rds_reader LOGIN PASSWORD '"+strings.ReplaceAll(want, "'", "''")+"'", "GRANT pg_read_all_data TO rds_reader")

	source := config.Source{Host: "127.0.0.1", Port: src.Port, Username: "rds_reader", SSLMode: "disable",
		Auth: config.SourceAuth{Kind: config.AuthAWSRDSIAM, AWS: config.AWSAuth{Region: "eu-west-1", STSEndpoint: sts.URL}}}
	log := &logtest.Buffer{}
	j := newTestJob(t, source, []string{"app"}, log)
	j.auth = cloudauth.New(source, cloudauth.Options{Now: func() time.Time { return fixed }, Logger: log.Logger()})
	p := clonetest.NewPool(t)
	_, snap, err := fill(t, j, p)
	if err != nil {
		t.Fatalf("retrieval with the RDS IAM token: %v", err)
	}
	if got := retrievaltest.Query(t, p, snap.ID, "app", "SELECT count(*)::text FROM users"); got != "1000" {
		t.Fatalf("the snapshot has %s users, want 1000", got)
	}
	for _, secret := range []string{want, "e2esecret", "e2esession"} {
		if strings.Contains(log.String(), secret) {
			t.Fatalf("the log holds a secret:\n%s", log)
		}
	}
}
