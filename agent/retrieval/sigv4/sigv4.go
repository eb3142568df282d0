// Package sigv4 signs requests with AWS Signature Version 4: the
// Authorization header of S3 requests (dumps in any S3-compatible
// storage) and presigned URLs, of which an RDS IAM authentication token
// is one (the source's password for RDS/Aurora with IAM auth).
package sigv4

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"
)

// Credentials are an AWS access key, with the session token of
// temporary credentials.
type Credentials struct {
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
}

// FromEnv reads credentials from the standard AWS environment variables
// (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), or from
// the variables named, when given.
func FromEnv(idVar, secretVar string) (Credentials, error) {
	if idVar == "" {
		idVar = "AWS_ACCESS_KEY_ID"
	}
	if secretVar == "" {
		secretVar = "AWS_SECRET_ACCESS_KEY" //nolint:gosec // G101: the variable's name, not a secret
	}
	c := Credentials{AccessKeyID: os.Getenv(idVar), SecretAccessKey: os.Getenv(secretVar), SessionToken: os.Getenv("AWS_SESSION_TOKEN")}
	if c.AccessKeyID == "" || c.SecretAccessKey == "" {
		return c, fmt.Errorf("no AWS credentials: set %s and %s in the agent's environment", idVar, secretVar)
	}
	return c, nil
}

// EmptyHash is the SHA-256 of an empty payload.
const EmptyHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

// UnsignedPayload is S3's payload hash for presigned URLs.
const UnsignedPayload = "UNSIGNED-PAYLOAD"

const (
	algorithm  = "AWS4-HMAC-SHA256"
	timeFormat = "20060102T150405Z"
	dayFormat  = "20060102"
)

// escape is RFC 3986 percent-encoding as SigV4 wants it: everything but
// unreserved characters, and "/" too unless keepSlash.
func escape(s string, keepSlash bool) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' || c == '~' || (keepSlash && c == '/') {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

func canonicalQuery(q url.Values) string {
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var parts []string
	for _, k := range keys {
		vs := slices.Clone(q[k])
		slices.Sort(vs)
		for _, v := range vs {
			parts = append(parts, escape(k, false)+"="+escape(v, false))
		}
	}
	return strings.Join(parts, "&")
}

func hmacSHA256(key []byte, data string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(data))
	return h.Sum(nil)
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// signature computes the signature of a canonical request.
func signature(c Credentials, t time.Time, region, service, canonicalRequest string) (scope, sig string) {
	day := t.Format(dayFormat)
	scope = day + "/" + region + "/" + service + "/aws4_request"
	toSign := algorithm + "\n" + t.Format(timeFormat) + "\n" + scope + "\n" + sha256Hex(canonicalRequest)
	k := hmacSHA256([]byte("AWS4"+c.SecretAccessKey), day)
	k = hmacSHA256(k, region)
	k = hmacSHA256(k, service)
	k = hmacSHA256(k, "aws4_request")
	return scope, hex.EncodeToString(hmacSHA256(k, toSign))
}

// SignRequest adds x-amz-date, x-amz-content-sha256 (payloadHash),
// x-amz-security-token (temporary credentials) and Authorization to req,
// signing host and those headers.
func SignRequest(req *http.Request, c Credentials, t time.Time, region, service, payloadHash string) {
	t = t.UTC()
	req.Header.Set("X-Amz-Date", t.Format(timeFormat))
	req.Header.Set("X-Amz-Content-Sha256", payloadHash)
	if c.SessionToken != "" {
		req.Header.Set("X-Amz-Security-Token", c.SessionToken)
	}
	host := req.URL.Host
	if req.Host != "" {
		host = req.Host
	}
	headers := map[string]string{"host": host}
	for k, v := range req.Header {
		lk := strings.ToLower(k)
		if strings.HasPrefix(lk, "x-amz-") || lk == "range" {
			headers[lk] = strings.TrimSpace(strings.Join(v, ","))
		}
	}
	names := make([]string, 0, len(headers))
	for k := range headers {
		names = append(names, k)
	}
	slices.Sort(names)
	var canon strings.Builder
	for _, k := range names {
		canon.WriteString(k + ":" + headers[k] + "\n")
	}
	signed := strings.Join(names, ";")
	path := req.URL.EscapedPath()
	if u, err := url.PathUnescape(path); err == nil {
		path = escape(u, true)
	}
	if path == "" {
		path = "/"
	}
	cr := strings.Join([]string{req.Method, path, canonicalQuery(req.URL.Query()), canon.String(), signed, payloadHash}, "\n")
	scope, sig := signature(c, t, region, service, cr)
	req.Header.Set("Authorization", fmt.Sprintf("%s Credential=%s/%s, SignedHeaders=%s, Signature=%s", algorithm, c.AccessKeyID, scope, signed, sig))
}

// Presign returns u (host and path, with query parameters) signed in its
// query string for method, valid for expires from t; only the host header
// is signed. payloadHash is UnsignedPayload for S3, EmptyHash for RDS.
func Presign(method string, u *url.URL, c Credentials, t time.Time, expires time.Duration, region, service, payloadHash string) *url.URL {
	t = t.UTC()
	out := *u
	q := out.Query()
	day := t.Format(dayFormat)
	q.Set("X-Amz-Algorithm", algorithm)
	q.Set("X-Amz-Credential", c.AccessKeyID+"/"+day+"/"+region+"/"+service+"/aws4_request")
	q.Set("X-Amz-Date", t.Format(timeFormat))
	q.Set("X-Amz-Expires", fmt.Sprint(int(expires.Seconds())))
	q.Set("X-Amz-SignedHeaders", "host")
	if c.SessionToken != "" {
		q.Set("X-Amz-Security-Token", c.SessionToken)
	}
	path := out.EscapedPath()
	if p, err := url.PathUnescape(path); err == nil {
		path = escape(p, true)
	}
	if path == "" {
		path = "/"
	}
	cr := strings.Join([]string{method, path, canonicalQuery(q), "host:" + out.Host + "\n", "host", payloadHash}, "\n")
	_, sig := signature(c, t, region, service, cr)
	q.Set("X-Amz-Signature", sig)
	out.RawQuery = canonicalQuery(q)
	return &out
}

// RDSAuthToken is an RDS IAM authentication token for user at
// endpoint (host:port) in region: a presigned "connect" URL without its
// scheme, valid for 15 minutes from t, used as the password.
func RDSAuthToken(endpoint, region, user string, c Credentials, t time.Time) string {
	u := &url.URL{Scheme: "https", Host: endpoint, Path: "/"}
	q := url.Values{}
	q.Set("Action", "connect")
	q.Set("DBUser", user)
	u.RawQuery = q.Encode()
	signed := Presign(http.MethodGet, u, c, t, 15*time.Minute, region, "rds-db", EmptyHash)
	return strings.TrimPrefix(signed.String(), "https://")
}
