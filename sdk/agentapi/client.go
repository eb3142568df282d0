package agentapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Client talks to one agent (or DLE engine). The zero HTTPClient means
// http.DefaultClient. BaseURL may carry a path prefix (e.g.
// "https://host/api"); IDs go into paths unescaped, as DLE expects.
type Client struct {
	BaseURL string
	Token   string
	// BearerToken, when set, is sent as Authorization: Bearer: the
	// platform's engine proxy (BaseURL .../agents/{id}/engine) takes the
	// caller's personal API token, not the agent's verification token.
	BearerToken string
	HTTPClient  *http.Client
	// PollInterval is how often WaitClone and WaitCloneDestroyed poll
	// (250ms when zero).
	PollInterval time.Duration
}

// APIError is an answer with status >= 400.
type APIError struct {
	StatusCode int
	Code       string
	Message    string
	Detail     string
}

func (e *APIError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.StatusCode)
	}
	if e.Code != "" {
		return fmt.Sprintf("agent API: %s (%d %s)", msg, e.StatusCode, e.Code)
	}
	return fmt.Sprintf("agent API: %s (%d)", msg, e.StatusCode)
}

// IsNotFound reports whether err is a 404 from the API.
func IsNotFound(err error) bool {
	var e *APIError
	return errors.As(err, &e) && e.StatusCode == http.StatusNotFound
}

// httpClient is a copy of HTTPClient (or http.DefaultClient) whose
// redirects never carry the token away: Go's client drops Authorization
// on a redirect to another domain but keeps custom headers such as
// Verification-Token, and keeps both on a downgrade from https to http.
func (c *Client) httpClient() *http.Client {
	base := c.HTTPClient
	if base == nil {
		base = http.DefaultClient
	}
	hc := *base
	hc.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if leftOrigin(req, via) {
			req.Header.Del(VerificationTokenHeader)
			req.Header.Del("Authorization")
		}
		if base.CheckRedirect != nil {
			return base.CheckRedirect(req, via)
		}
		if len(via) >= 10 {
			return errors.New("stopped after 10 redirects")
		}
		return nil
	}
	return &hc
}

// leftOrigin reports whether the redirect chain (via, then req) has left
// the first request's origin (scheme, host and port) at any hop: then the
// token stays behind, even when a later hop comes back.
func leftOrigin(req *http.Request, via []*http.Request) bool {
	if len(via) == 0 {
		return false
	}
	first := origin(via[0].URL)
	for _, r := range append(via[1:], req) {
		if origin(r.URL) != first {
			return true
		}
	}
	return false
}

func origin(u *url.URL) string {
	port := u.Port()
	if port == "" {
		switch strings.ToLower(u.Scheme) {
		case "https":
			port = "443"
		case "http":
			port = "80"
		}
	}
	return strings.ToLower(u.Scheme) + "://" + strings.ToLower(u.Hostname()) + ":" + port
}

// NewHTTPClient is an HTTP client for an agent whose certificate is
// signed by the CA in caFile (PEM), on top of the system's roots; an
// empty caFile uses the system's roots only. timeout bounds each request
// (0: none).
func NewHTTPClient(caFile string, timeout time.Duration) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if caFile != "" {
		pem, err := os.ReadFile(caFile) //nolint:gosec // G304: the caller names its CA file; reading it is the point
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", caFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: tr, Timeout: timeout}, nil
}

// do sends a request with an optional JSON body and decodes a JSON answer
// into out (when out is non-nil and the answer has a body).
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		raw, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(raw)
	}
	target := strings.TrimRight(c.BaseURL, "/") + path
	req, err := http.NewRequestWithContext(ctx, method, target, body)
	if err != nil {
		return fmt.Errorf("agent API: %w", err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.Token != "" {
		req.Header.Set(VerificationTokenHeader, c.Token)
	}
	if c.BearerToken != "" {
		req.Header.Set("Authorization", "Bearer "+c.BearerToken)
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return fmt.Errorf("agent API %s %s: %w", method, path, err)
	}
	// Closing only releases the connection: what was read is the answer.
	defer func() { _ = resp.Body.Close() }()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("agent API %s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode >= 400 {
		return decodeError(resp.StatusCode, raw)
	}
	if out == nil || len(bytes.TrimSpace(raw)) == 0 {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("agent API %s %s: decode answer: %w", method, path, err)
	}
	return nil
}

func decodeError(status int, raw []byte) error {
	e := &APIError{StatusCode: status}
	var b ErrorBody
	if err := json.Unmarshal(raw, &b); err == nil && (b.Code != "" || b.Message != "") {
		e.Code, e.Message, e.Detail = b.Code, b.Message, b.Detail
		return e
	}
	// The platform's engine proxy answers its own refusals (no such
	// agent, missing permission) in the platform's shape.
	var pb struct {
		Error struct{ Code, Message, Field string } `json:"error"`
	}
	if err := json.Unmarshal(raw, &pb); err == nil && pb.Error.Message != "" {
		e.Code, e.Message, e.Detail = pb.Error.Code, pb.Error.Message, pb.Error.Field
		return e
	}
	e.Message = strings.TrimSpace(string(raw))
	if len(e.Message) > 300 {
		e.Message = e.Message[:300] + "..."
	}
	return e
}

// Healthz reports the agent's version; it needs no token.
func (c *Client) Healthz(ctx context.Context) (*Health, error) {
	var h Health
	if err := c.do(ctx, http.MethodGet, "/healthz", nil, &h); err != nil {
		return nil, err
	}
	return &h, nil
}

// Status is GET /status: the instance, its pools, clones and retrieval.
func (c *Client) Status(ctx context.Context) (*InstanceStatus, error) {
	var s InstanceStatus
	if err := c.do(ctx, http.MethodGet, "/status", nil, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// Snapshots lists snapshots, newest first.
func (c *Client) Snapshots(ctx context.Context) ([]Snapshot, error) {
	var s []Snapshot
	if err := c.do(ctx, http.MethodGet, "/snapshots", nil, &s); err != nil {
		return nil, err
	}
	return s, nil
}

// Snapshot returns one snapshot.
func (c *Client) Snapshot(ctx context.Context, id string) (*Snapshot, error) {
	var s Snapshot
	if err := c.do(ctx, http.MethodGet, "/snapshot/"+id, nil, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// CreateSnapshot snapshots a pool's current data (the first pool when
// pool is empty).
func (c *Client) CreateSnapshot(ctx context.Context, pool string) (*PoolSnapshot, error) {
	var s PoolSnapshot
	if err := c.do(ctx, http.MethodPost, "/snapshot", CreateSnapshotRequest{PoolName: pool}, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// DeleteSnapshot deletes a snapshot. With force, clones made from it are
// destroyed first; without it, a snapshot with clones is refused.
func (c *Client) DeleteSnapshot(ctx context.Context, id string, force bool) error {
	path := "/snapshot/" + id
	if force {
		path += "?force=true"
	}
	return c.do(ctx, http.MethodDelete, path, nil, nil)
}

// UpdateSnapshot protects or unprotects a snapshot, or schedules its
// deletion.
func (c *Client) UpdateSnapshot(ctx context.Context, id string, r PatchSnapshotRequest) (*Snapshot, error) {
	var s Snapshot
	if err := c.do(ctx, http.MethodPatch, "/snapshot/"+id, r, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// Clones lists clones, newest first.
func (c *Client) Clones(ctx context.Context) ([]Clone, error) {
	var cl []Clone
	if err := c.do(ctx, http.MethodGet, "/clones", nil, &cl); err != nil {
		return nil, err
	}
	return cl, nil
}

// Clone returns one clone; a 404 *APIError (IsNotFound) when it does not
// exist.
func (c *Client) Clone(ctx context.Context, id string) (*Clone, error) {
	var cl Clone
	if err := c.do(ctx, http.MethodGet, "/clone/"+id, nil, &cl); err != nil {
		return nil, err
	}
	return &cl, nil
}

// CreateClone asks for a clone and returns at once (normally CREATING);
// WaitClone waits for it to be ready.
func (c *Client) CreateClone(ctx context.Context, r CreateCloneRequest) (*Clone, error) {
	var cl Clone
	if err := c.do(ctx, http.MethodPost, "/clone", r, &cl); err != nil {
		return nil, err
	}
	return &cl, nil
}

// UpdateClone changes a clone's protection.
func (c *Client) UpdateClone(ctx context.Context, id string, r PatchCloneRequest) (*Clone, error) {
	var cl Clone
	if err := c.do(ctx, http.MethodPatch, "/clone/"+id, r, &cl); err != nil {
		return nil, err
	}
	return &cl, nil
}

// ResetClone starts resetting a clone (it becomes RESETTING); WaitClone
// waits for the end.
func (c *Client) ResetClone(ctx context.Context, id string, r ResetCloneRequest) error {
	return c.do(ctx, http.MethodPost, "/clone/"+id+"/reset", r, nil)
}

// CreateReplicas makes count hot-standby replicas streaming from clone id
// (POST /clone/{id}/replicas, a Thinlab addition); they are CREATING.
func (c *Client) CreateReplicas(ctx context.Context, id string, count int) ([]Clone, error) {
	var out []Clone
	if err := c.do(ctx, http.MethodPost, "/clone/"+id+"/replicas", CreateReplicasRequest{Count: count}, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// DestroyClone starts destroying a clone (it becomes DELETING);
// WaitCloneDestroyed waits until it is gone.
func (c *Client) DestroyClone(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/clone/"+id, nil, nil)
}

// DiffSnapshots compares two snapshots' database db ("" = the agent's
// default) (GET /snapshots/diff).
func (c *Client) DiffSnapshots(ctx context.Context, from, to, db string) (*Diff, error) {
	q := url.Values{"from": {from}, "to": {to}}
	if db != "" {
		q.Set("db", db)
	}
	var out Diff
	if err := c.do(ctx, http.MethodGet, "/snapshots/diff?"+q.Encode(), nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// DiffClone compares a clone with its snapshot in database db ("" = the
// clone's) (GET /clone/{id}/diff).
func (c *Client) DiffClone(ctx context.Context, id, db string) (*Diff, error) {
	path := "/clone/" + id + "/diff"
	if db != "" {
		path += "?" + url.Values{"db": {db}}.Encode()
	}
	var out Diff
	if err := c.do(ctx, http.MethodGet, path, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Branches lists the branches of data (GET /branches), newest head first.
func (c *Client) Branches(ctx context.Context) ([]BranchView, error) {
	var out []BranchView
	if err := c.do(ctx, http.MethodGet, "/branches", nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// CreateBranch creates a branch at a snapshot or at the head of another
// branch (POST /branch).
func (c *Client) CreateBranch(ctx context.Context, r CreateBranchRequest) (*BranchName, error) {
	var out BranchName
	if err := c.do(ctx, http.MethodPost, "/branch", r, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ProtectBranch protects or unprotects a branch (PATCH /branch/{name});
// minutes nil means no expiry (capped by the agent's maximum).
func (c *Client) ProtectBranch(ctx context.Context, name string, protected bool, minutes *uint) (*BranchView, error) {
	var out BranchView
	if err := c.do(ctx, http.MethodPatch, "/branch/"+url.PathEscape(name), PatchSnapshotRequest{Protected: &protected, ProtectionDurationMinutes: minutes}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// DeleteBranch deletes a branch and its commits (DELETE /branch/{name}).
func (c *Client) DeleteBranch(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/branch/"+url.PathEscape(name), nil, nil)
}

// BranchLog is the branch's head and its parents (GET /branch/{name}/log).
func (c *Client) BranchLog(ctx context.Context, name string) ([]SnapshotDetails, error) {
	var out []SnapshotDetails
	if err := c.do(ctx, http.MethodGet, "/branch/"+url.PathEscape(name)+"/log", nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// BranchSnapshot is one snapshot of the branch graph (GET
// /branch/snapshot/{id}).
func (c *Client) BranchSnapshot(ctx context.Context, id string) (*SnapshotDetails, error) {
	var out SnapshotDetails
	if err := c.do(ctx, http.MethodGet, "/branch/snapshot/"+id, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Commit snapshots a clone's current state onto its branch with a message
// (POST /branch/snapshot) and returns the new snapshot's ID.
func (c *Client) Commit(ctx context.Context, cloneID, message string) (string, error) {
	var out CommitResponse
	if err := c.do(ctx, http.MethodPost, "/branch/snapshot", CloneSnapshotRequest{CloneID: cloneID, Message: message}, &out); err != nil {
		return "", err
	}
	return out.SnapshotID, nil
}

// SnapshotClone snapshots a clone's current state without moving its
// branch (POST /snapshot/clone).
func (c *Client) SnapshotClone(ctx context.Context, cloneID, message string) (*Snapshot, error) {
	var out Snapshot
	if err := c.do(ctx, http.MethodPost, "/snapshot/clone", CloneSnapshotRequest{CloneID: cloneID, Message: message}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Retrieval is GET /instance/retrieval.
func (c *Client) Retrieval(ctx context.Context) (*Retrieving, error) {
	var r Retrieving
	if err := c.do(ctx, http.MethodGet, "/instance/retrieval", nil, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// FullRefresh starts a full data refresh in the background.
func (c *Client) FullRefresh(ctx context.Context) (*Response, error) {
	var r Response
	if err := c.do(ctx, http.MethodPost, "/full-refresh", nil, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

func (c *Client) pollInterval() time.Duration {
	if c.PollInterval > 0 {
		return c.PollInterval
	}
	return 250 * time.Millisecond
}

// CloneFailedError is returned by WaitClone when the clone ended FATAL.
type CloneFailedError struct {
	ID      string
	Message string
}

func (e *CloneFailedError) Error() string {
	return "clone " + e.ID + " failed: " + e.Message
}

// WaitClone polls a clone until it is OK (returned) or FATAL (returned
// with a *CloneFailedError), or ctx ends.
func (c *Client) WaitClone(ctx context.Context, id string) (*Clone, error) {
	for {
		cl, err := c.Clone(ctx, id)
		if err != nil {
			return nil, err
		}
		switch cl.Status.Code {
		case StatusOK:
			return cl, nil
		case StatusFatal:
			return cl, &CloneFailedError{ID: id, Message: cl.Status.Message}
		}
		if err := sleep(ctx, c.pollInterval()); err != nil {
			return cl, fmt.Errorf("waiting for clone %s (status %s): %w", id, cl.Status.Code, err)
		}
	}
}

// WaitCloneDestroyed polls until the clone is gone (404). A clone that
// ends FATAL instead gives a *CloneFailedError.
func (c *Client) WaitCloneDestroyed(ctx context.Context, id string) error {
	for {
		cl, err := c.Clone(ctx, id)
		if IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if cl.Status.Code == StatusFatal {
			return &CloneFailedError{ID: id, Message: cl.Status.Message}
		}
		if err := sleep(ctx, c.pollInterval()); err != nil {
			return fmt.Errorf("waiting for clone %s to be destroyed (status %s): %w", id, cl.Status.Code, err)
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// PortNumber parses Database.Port (a string on the wire); 0 when unset.
func (d Database) PortNumber() int {
	p, _ := strconv.Atoi(d.Port)
	return p
}

// ExportSnapshot writes the stream of snapshot id (with base, the changes
// since that snapshot where the pool can) to w: GET /snapshots/export.
func (c *Client) ExportSnapshot(ctx context.Context, id, base string, w io.Writer) error {
	q := url.Values{"id": {id}}
	if base != "" {
		q.Set("base", base)
	}
	resp, err := c.stream(ctx, http.MethodGet, "/snapshots/export?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("agent API: export snapshot %s: %w", id, err)
	}
	return nil
}

// ImportSnapshot sends a stream made by ExportSnapshot to the agent, which
// makes the snapshot in pool (empty: its first pool): POST /snapshots/import.
func (c *Client) ImportSnapshot(ctx context.Context, pool string, r io.Reader) (*Snapshot, error) {
	path := "/snapshots/import"
	if pool != "" {
		path += "?" + url.Values{"pool": {pool}}.Encode()
	}
	resp, err := c.stream(ctx, http.MethodPost, path, r)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	var out Snapshot
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&out); err != nil {
		return nil, fmt.Errorf("agent API: import snapshot: decode answer: %w", err)
	}
	return &out, nil
}

// ShipSnapshot asks the agent to send a snapshot to another agent:
// POST /snapshots/ship.
func (c *Client) ShipSnapshot(ctx context.Context, r ShipRequest) (*ShipResult, error) {
	var out ShipResult
	if err := c.do(ctx, http.MethodPost, "/snapshots/ship", r, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// stream sends a request with a raw body and returns the response when
// its status is below 400 (the caller closes its body).
func (c *Client) stream(ctx context.Context, method, path string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.BaseURL, "/")+path, body)
	if err != nil {
		return nil, fmt.Errorf("agent API: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	if c.Token != "" {
		req.Header.Set(VerificationTokenHeader, c.Token)
	}
	if c.BearerToken != "" {
		req.Header.Set("Authorization", "Bearer "+c.BearerToken)
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return nil, fmt.Errorf("agent API %s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 400 {
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		_ = resp.Body.Close() // the error is the answer
		return nil, decodeError(resp.StatusCode, raw)
	}
	return resp, nil
}

// FetchSnapshot asks the agent to import a stream from its object storage:
// POST /snapshots/fetch.
func (c *Client) FetchSnapshot(ctx context.Context, r FetchRequest) (*Snapshot, error) {
	var out Snapshot
	if err := c.do(ctx, http.MethodPost, "/snapshots/fetch", r, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
