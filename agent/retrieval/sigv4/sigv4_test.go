package sigv4

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// The example credentials and request of AWS's SigV4 documentation for S3
// ("Authenticating Requests: Using Query Parameters" and "Signature
// Calculations for the Authorization Header"), with their published
// signatures.
var docCreds = Credentials{AccessKeyID: "AKIAIOSFODNN7EXAMPLE", SecretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}

var docTime = time.Date(2013, 5, 24, 0, 0, 0, 0, time.UTC)

func TestPresignMatchesAWSExample(t *testing.T) {
	u, _ := url.Parse("https://examplebucket.s3.amazonaws.com/test.txt")
	got := Presign(http.MethodGet, u, docCreds, docTime, 86400*time.Second, "us-east-1", "s3", UnsignedPayload)
	if sig := got.Query().Get("X-Amz-Signature"); sig != "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404" {
		t.Fatalf("signature %s (url %s)", sig, got)
	}
}

func TestSignRequestMatchesAWSExample(t *testing.T) {
	req, _ := http.NewRequest(http.MethodGet, "https://examplebucket.s3.amazonaws.com/test.txt", nil)
	req.Header.Set("Range", "bytes=0-9")
	SignRequest(req, docCreds, docTime, "us-east-1", "s3", EmptyHash)
	want := "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
	if got := req.Header.Get("Authorization"); got != want {
		t.Fatalf("Authorization\n got %s\nwant %s", got, want)
	}
}

// TestRDSAuthToken: with fixed credentials and a fixed clock the token
// is the presigned connect URL AWS's SDKs produce: host:port, Action and
// DBUser, a 900 s lifetime, the rds-db scope, no scheme.
func TestRDSAuthToken(t *testing.T) {
	c := docCreds
	c.SessionToken = "tok/en+="
	tok := RDSAuthToken("mydb.123456789012.us-east-1.rds.amazonaws.com:5432", "us-east-1", "jane doe", c, docTime)
	if !strings.HasPrefix(tok, "mydb.123456789012.us-east-1.rds.amazonaws.com:5432/?") {
		t.Fatalf("token %s", tok)
	}
	u, err := url.Parse("https://" + tok)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	for k, want := range map[string]string{
		"Action": "connect", "DBUser": "jane doe", "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
		"X-Amz-Credential": "AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/rds-db/aws4_request",
		"X-Amz-Date":       "20130524T000000Z", "X-Amz-Expires": "900", "X-Amz-SignedHeaders": "host",
		"X-Amz-Security-Token": "tok/en+=",
	} {
		if got := q.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	// The signature is over the canonical request AWS verifies: the
	// same token again, and a different one a second later.
	if again := RDSAuthToken("mydb.123456789012.us-east-1.rds.amazonaws.com:5432", "us-east-1", "jane doe", c, docTime); again != tok {
		t.Fatal("the token is not deterministic for fixed credentials and clock")
	}
	if later := RDSAuthToken("mydb.123456789012.us-east-1.rds.amazonaws.com:5432", "us-east-1", "jane doe", c, docTime.Add(time.Second)); later == tok {
		t.Fatal("the token does not depend on the time")
	}
	if len(q.Get("X-Amz-Signature")) != 64 {
		t.Fatalf("signature %q", q.Get("X-Amz-Signature"))
	}
}

// TestRDSAuthTokenMatchesBotocore: the token of botocore's
// generate_db_auth_token test (akid/skid, 2016-11-07T17:39:33Z,
// us-east-1, port 3306) has its published signature.
func TestRDSAuthTokenMatchesBotocore(t *testing.T) {
	tok := RDSAuthToken("prod-instance.us-east-1.rds.amazonaws.com:3306", "us-east-1", "someusername",
		Credentials{AccessKeyID: "akid", SecretAccessKey: "skid"}, time.Date(2016, 11, 7, 17, 39, 33, 0, time.UTC))
	want := "prod-instance.us-east-1.rds.amazonaws.com:3306/?Action=connect&DBUser=someusername&X-Amz-Algorithm=AWS4-HMAC-SHA256" +
		"&X-Amz-Credential=akid%2F20161107%2Fus-east-1%2Frds-db%2Faws4_request&X-Amz-Date=20161107T173933Z&X-Amz-Expires=900" +
		"&X-Amz-Signature=d1138cdbc0ca63eec012ec0fc6c2267e03642168f5884a7795320d4c18374c61&X-Amz-SignedHeaders=host"
	if tok != want {
		t.Fatalf("token\n got %s\nwant %s", tok, want)
	}
}
