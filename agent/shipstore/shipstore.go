// Package shipstore keeps snapshot streams (agent/storage/ship) in an
// S3-compatible object storage (config shipping.s3), path-style, signed
// with our own SigV4. An upload is a multipart upload completed only after
// the whole stream was read, and aborted otherwise: an interrupted export
// leaves no object behind.
package shipstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/retrieval/sigv4"
)

// PartSize is the size of one uploaded part (S3's minimum is 5 MiB for
// all but the last); one part is held in memory at a time.
const PartSize = 8 << 20

// ErrBadKey is a key that is not a plain object name.
var ErrBadKey = errors.New("bad key")

// ErrNotFound is a key with no object.
var ErrNotFound = errors.New("no such object")

var keyRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._@/-]{0,255}$`)

// Store is the configured bucket.
type Store struct {
	endpoint *url.URL
	region   string
	bucket   string
	prefix   string
	creds    sigv4.Credentials
	http     *http.Client
}

// New opens the store of c; credentials are read from the environment
// variables c names.
func New(c config.ShippingS3) (*Store, error) {
	if c.Endpoint == "" {
		return nil, errors.New("shipping.s3.endpoint is not configured: set shipping.s3 (endpoint, bucket, credentials) in the agent's config")
	}
	u, err := url.Parse(c.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("shipping.s3.endpoint: %w", err)
	}
	creds, err := sigv4.FromEnv(c.AccessKeyIDEnv, c.SecretAccessKeyEnv)
	if err != nil {
		return nil, fmt.Errorf("shipping.s3: %w", err)
	}
	return NewWithCredentials(u, c.Region, c.Bucket, c.Prefix, creds), nil
}

// NewWithCredentials is New with explicit credentials (tests).
func NewWithCredentials(endpoint *url.URL, region, bucket, prefix string, creds sigv4.Credentials) *Store {
	if region == "" {
		region = "us-east-1"
	}
	// No overall timeout: a stream takes as long as its size needs.
	return &Store{endpoint: endpoint, region: region, bucket: bucket, prefix: prefix, creds: creds, http: &http.Client{}}
}

// CheckKey refuses keys that are not plain object names.
func CheckKey(key string) error {
	if !keyRE.MatchString(key) || strings.Contains(key, "..") || strings.Contains(key, "//") {
		return fmt.Errorf("%w: key %q: use letters, digits and . _ @ / - (no .., no leading /)", ErrBadKey, key)
	}
	return nil
}

func (s *Store) url(key string, q url.Values) *url.URL {
	u := *s.endpoint
	u.Path = path.Join("/", u.Path, s.bucket, s.prefix+key)
	u.RawQuery = q.Encode()
	return &u
}

// call signs and sends one request with an in-memory body; it returns the
// response's header and body (read and closed) when the status is 2xx.
func (s *Store) call(ctx context.Context, method string, u *url.URL, body []byte) (http.Header, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, u.String(), bytes.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	sum := sha256.Sum256(body)
	req.ContentLength = int64(len(body))
	sigv4.SignRequest(req, s.creds, time.Now(), s.region, "s3", hex.EncodeToString(sum[:]))
	resp, err := s.http.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode/100 != 2 {
		return nil, nil, fmt.Errorf("S3 %s %s: %s: %s", method, u.Path, resp.Status, strings.TrimSpace(string(raw)))
	}
	return resp.Header, raw, nil
}

type completePart struct {
	PartNumber int    `xml:"PartNumber"`
	ETag       string `xml:"ETag"`
}

// Put stores everything r yields at key. The object appears only when r
// ended cleanly (io.EOF); any error aborts the upload.
func (s *Store) Put(ctx context.Context, key string, r io.Reader) (n int64, err error) {
	if err := CheckKey(key); err != nil {
		return 0, err
	}
	_, raw, err := s.call(ctx, http.MethodPost, s.url(key, url.Values{"uploads": {""}}), nil)
	if err != nil {
		return 0, err
	}
	var init struct {
		UploadID string `xml:"UploadId"`
	}
	if err := xml.Unmarshal(raw, &init); err != nil || init.UploadID == "" {
		return 0, fmt.Errorf("S3 create multipart upload: no upload id in %q", raw)
	}
	defer func() {
		if err != nil {
			// A fresh context: the caller's may be what failed.
			actx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_, _, _ = s.call(actx, http.MethodDelete, s.url(key, url.Values{"uploadId": {init.UploadID}}), nil) // best effort: the upload's parts expire by the bucket's lifecycle otherwise
		}
	}()
	var parts []completePart
	buf := make([]byte, PartSize)
	for {
		m, rerr := io.ReadFull(r, buf)
		if rerr != nil && !errors.Is(rerr, io.EOF) && !errors.Is(rerr, io.ErrUnexpectedEOF) {
			return n, rerr
		}
		if m > 0 || len(parts) == 0 {
			num := len(parts) + 1
			hdr, _, err := s.call(ctx, http.MethodPut, s.url(key, url.Values{"partNumber": {strconv.Itoa(num)}, "uploadId": {init.UploadID}}), buf[:m])
			if err != nil {
				return n, err
			}
			parts = append(parts, completePart{PartNumber: num, ETag: hdr.Get("ETag")})
			n += int64(m)
		}
		if rerr != nil {
			break
		}
	}
	body, err := xml.Marshal(struct {
		XMLName xml.Name       `xml:"CompleteMultipartUpload"`
		Parts   []completePart `xml:"Part"`
	}{Parts: parts})
	if err != nil {
		return n, err
	}
	_, raw, err = s.call(ctx, http.MethodPost, s.url(key, url.Values{"uploadId": {init.UploadID}}), body)
	if err != nil {
		return n, err
	}
	// S3 may answer 200 with an error in the body.
	if bytes.Contains(raw, []byte("<Error>")) {
		return n, fmt.Errorf("S3 complete multipart upload: %s", raw)
	}
	return n, nil
}

// Get opens the object at key; the caller closes it.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := CheckKey(key); err != nil {
		return nil, err
	}
	u := s.url(key, nil)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	sigv4.SignRequest(req, s.creds, time.Now(), s.region, "s3", sigv4.EmptyHash)
	resp, err := s.http.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusNotFound {
		_ = resp.Body.Close() // the status is the answer
		return nil, fmt.Errorf("%w: %s", ErrNotFound, key)
	}
	if resp.StatusCode/100 != 2 {
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
		_ = resp.Body.Close() // the error is the status
		return nil, fmt.Errorf("S3 GET %s: %s: %s", u.Path, resp.Status, strings.TrimSpace(string(raw)))
	}
	return resp.Body, nil
}
