package logical

import (
	"context"
	"encoding/xml"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/retrieval/sigv4"
)

// s3Client reads dumps from an S3-compatible storage, path-style.
type s3Client struct {
	endpoint *url.URL
	region   string
	creds    sigv4.Credentials
	http     *http.Client
}

func newS3Client(c config.S3) (*s3Client, error) {
	u, err := url.Parse(c.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("retrieval.logical.s3.endpoint: %w", err)
	}
	creds, err := sigv4.FromEnv(c.AccessKeyIDEnv, c.SecretAccessKeyEnv)
	if err != nil {
		return nil, fmt.Errorf("retrieval.logical.s3: %w", err)
	}
	region := c.Region
	if region == "" {
		region = "us-east-1"
	}
	// No overall timeout: a dump streams for as long as the restore takes.
	return &s3Client{endpoint: u, region: region, creds: creds, http: &http.Client{}}, nil
}

// splitS3 splits s3://bucket/key.
func splitS3(p string) (bucket, key string, ok bool) {
	rest, ok := strings.CutPrefix(p, "s3://")
	if !ok {
		return "", "", false
	}
	bucket, key, _ = strings.Cut(rest, "/")
	return bucket, key, true
}

func (c *s3Client) url(bucket, key string, q url.Values) *url.URL {
	u := *c.endpoint
	u.Path = path.Join("/", u.Path, bucket, key)
	if strings.HasSuffix(key, "/") {
		u.Path += "/"
	}
	u.RawQuery = q.Encode()
	return &u
}

func (c *s3Client) do(ctx context.Context, u *url.URL, header http.Header) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	maps.Copy(req.Header, header)
	sigv4.SignRequest(req, c.creds, time.Now(), c.region, "s3", sigv4.EmptyHash)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
		_ = resp.Body.Close() // the error is the status
		return nil, fmt.Errorf("S3 GET %s: %s: %s", u.Path, resp.Status, strings.TrimSpace(string(body)))
	}
	return resp, nil
}

// object is an S3 object's body with its size and modification time.
type object struct {
	body    io.ReadCloser
	size    int64
	modTime time.Time
}

// get opens an object, whole or (rangeEnd >= 0) its first bytes.
func (c *s3Client) get(ctx context.Context, bucket, key string, rangeEnd int64) (object, error) {
	h := http.Header{}
	if rangeEnd >= 0 {
		h.Set("Range", fmt.Sprintf("bytes=0-%d", rangeEnd))
	}
	resp, err := c.do(ctx, c.url(bucket, key, nil), h) //nolint:bodyclose // the body is the returned object's, closed by the caller
	if err != nil {
		return object{}, err
	}
	o := object{body: resp.Body, size: resp.ContentLength}
	if cr := resp.Header.Get("Content-Range"); cr != "" {
		if _, total, ok := strings.Cut(cr, "/"); ok {
			_, _ = fmt.Sscan(total, &o.size)
		}
	}
	if lm, err := http.ParseTime(resp.Header.Get("Last-Modified")); err == nil {
		o.modTime = lm
	}
	return o, nil
}

type listed struct {
	Key          string
	Size         int64
	LastModified time.Time
}

// list returns the objects under prefix (ListObjectsV2, every page).
func (c *s3Client) list(ctx context.Context, bucket, prefix string) ([]listed, error) {
	var out []listed
	token := ""
	for {
		q := url.Values{"list-type": {"2"}, "prefix": {prefix}}
		if token != "" {
			q.Set("continuation-token", token)
		}
		resp, err := c.do(ctx, c.url(bucket, "", q), nil)
		if err != nil {
			return nil, err
		}
		var page struct {
			Contents              []listed
			IsTruncated           bool
			NextContinuationToken string
		}
		err = xml.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&page)
		_ = resp.Body.Close() // fully read
		if err != nil {
			return nil, fmt.Errorf("S3 list s3://%s/%s: %w", bucket, prefix, err)
		}
		out = append(out, page.Contents...)
		if !page.IsTruncated || page.NextContinuationToken == "" {
			return out, nil
		}
		token = page.NextContinuationToken
	}
}

// fetchDir copies a directory-format dump's objects into dir (which the
// caller removes). pg_restore needs a directory, so this is the one dump
// shape that is not streamed: it lands on the pool beside PGDATA, never
// on the host's disk, and is gone before the snapshot.
func (c *s3Client) fetchDir(ctx context.Context, bucket, prefix, dir string) (int64, time.Time, error) {
	objs, err := c.list(ctx, bucket, prefix)
	if err != nil {
		return 0, time.Time{}, err
	}
	var total int64
	var toc time.Time
	for _, o := range objs {
		name := strings.TrimPrefix(o.Key, prefix)
		// Only the flat file names pg_dump -Fd writes: a key cannot
		// reach outside dir.
		if name == "" || strings.Contains(name, "/") || name == "." || name == ".." {
			continue
		}
		if name == "toc.dat" {
			toc = o.LastModified
		}
		obj, err := c.get(ctx, bucket, o.Key, -1)
		if err != nil {
			return total, toc, err
		}
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600) //nolint:gosec // G304: a flat name checked above, in the dump directory the agent made
		if err == nil {
			var n int64
			n, err = io.Copy(f, obj.body)
			total += n
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		_ = obj.body.Close() // read to the end or failed
		if err != nil {
			return total, toc, fmt.Errorf("fetch s3://%s/%s: %w", bucket, o.Key, err)
		}
	}
	if toc.IsZero() {
		return total, toc, fmt.Errorf("s3://%s/%s holds no toc.dat: not a directory-format dump", bucket, prefix)
	}
	return total, toc, nil
}
