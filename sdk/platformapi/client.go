package platformapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Client calls the platform's /api/v1 with an API token.
type Client struct {
	BaseURL string // such as https://thinlab.example.com
	Token   string
	HTTP    *http.Client
}

// NewClient returns a client for baseURL authenticated with token.
func NewClient(baseURL, token string) *Client {
	return &Client{BaseURL: strings.TrimRight(baseURL, "/"), Token: token, HTTP: &http.Client{Timeout: 30 * time.Second}}
}

// APIError is an error answer of the API.
type APIError struct {
	Status int
	ErrorBody
}

func (e *APIError) Error() string {
	msg := fmt.Sprintf("platform API: %d %s: %s", e.Status, e.Code, e.Message)
	if e.Field != "" {
		msg += " (field " + e.Field + ")"
	}
	return msg
}

// do sends a request and decodes a JSON answer into out (when not nil).
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	raw, err := c.raw(ctx, method, path, in)
	if err != nil {
		return err
	}
	if out == nil || len(raw) == 0 {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("platform API %s %s: decode answer: %w", method, path, err)
	}
	return nil
}

func (c *Client) raw(ctx context.Context, method, path string, in any) ([]byte, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+"/api/v1"+path, body)
	if err != nil {
		return nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 400 {
		apiErr := &APIError{Status: resp.StatusCode}
		var er ErrorResponse
		if json.Unmarshal(raw, &er) == nil && er.Error.Code != "" {
			apiErr.ErrorBody = er.Error
		} else {
			apiErr.Code, apiErr.Message = "http_error", strings.TrimSpace(string(raw))
		}
		return nil, apiErr
	}
	return raw, nil
}

func esc(s string) string { return url.PathEscape(s) }

// Me returns the caller.
func (c *Client) Me(ctx context.Context) (*Me, error) {
	var out Me
	return &out, c.do(ctx, http.MethodGet, "/me", nil, &out)
}

// Orgs lists the caller's organizations.
func (c *Client) Orgs(ctx context.Context) ([]Org, error) {
	var out List[Org]
	return out.Items, c.do(ctx, http.MethodGet, "/orgs", nil, &out)
}

// CreateOrg creates an organization (signed-in sessions only).
func (c *Client) CreateOrg(ctx context.Context, req CreateOrgRequest) (*Org, error) {
	var out Org
	return &out, c.do(ctx, http.MethodPost, "/orgs", req, &out)
}

// Members lists an organization's members.
func (c *Client) Members(ctx context.Context, org string) ([]Member, error) {
	var out List[Member]
	return out.Items, c.do(ctx, http.MethodGet, "/orgs/"+esc(org)+"/members", nil, &out)
}

// SetMemberRole changes a member's role.
func (c *Client) SetMemberRole(ctx context.Context, org, userID, role string) (*Member, error) {
	var out Member
	return &out, c.do(ctx, http.MethodPatch, "/orgs/"+esc(org)+"/members/"+esc(userID), UpdateMemberRequest{Role: role}, &out)
}

// RemoveMember removes a member.
func (c *Client) RemoveMember(ctx context.Context, org, userID string) error {
	return c.do(ctx, http.MethodDelete, "/orgs/"+esc(org)+"/members/"+esc(userID), nil, nil)
}

// Invitations lists open invitations.
func (c *Client) Invitations(ctx context.Context, org string) ([]Invitation, error) {
	var out List[Invitation]
	return out.Items, c.do(ctx, http.MethodGet, "/orgs/"+esc(org)+"/invitations", nil, &out)
}

// Invite invites an email address; the answer carries the acceptance token.
func (c *Client) Invite(ctx context.Context, org string, req CreateInvitationRequest) (*Invitation, error) {
	var out Invitation
	return &out, c.do(ctx, http.MethodPost, "/orgs/"+esc(org)+"/invitations", req, &out)
}

// DeleteInvitation withdraws an invitation.
func (c *Client) DeleteInvitation(ctx context.Context, org, id string) error {
	return c.do(ctx, http.MethodDelete, "/orgs/"+esc(org)+"/invitations/"+esc(id), nil, nil)
}

// AcceptInvitation accepts an invitation as the caller.
func (c *Client) AcceptInvitation(ctx context.Context, token string) (*AcceptedInvitation, error) {
	var out AcceptedInvitation
	return &out, c.do(ctx, http.MethodPost, "/invitations/"+esc(token)+"/accept", nil, &out)
}

// Tokens lists API tokens (all of them for admins, else the caller's).
func (c *Client) Tokens(ctx context.Context, org string) ([]Token, error) {
	var out List[Token]
	return out.Items, c.do(ctx, http.MethodGet, "/orgs/"+esc(org)+"/tokens", nil, &out)
}

// CreateToken creates an API token; the secret is in the answer only.
func (c *Client) CreateToken(ctx context.Context, org string, req CreateTokenRequest) (*CreatedToken, error) {
	var out CreatedToken
	return &out, c.do(ctx, http.MethodPost, "/orgs/"+esc(org)+"/tokens", req, &out)
}

// RevokeToken revokes an API token.
func (c *Client) RevokeToken(ctx context.Context, org, id string) error {
	return c.do(ctx, http.MethodDelete, "/orgs/"+esc(org)+"/tokens/"+esc(id), nil, nil)
}

// EnrollmentTokens lists an organization's enrollment tokens.
func (c *Client) EnrollmentTokens(ctx context.Context, org string) ([]EnrollmentToken, error) {
	var out List[EnrollmentToken]
	return out.Items, c.do(ctx, http.MethodGet, "/orgs/"+esc(org)+"/enrollment-tokens", nil, &out)
}

// CreateEnrollmentToken creates an enrollment token; the secret is in the
// answer only.
func (c *Client) CreateEnrollmentToken(ctx context.Context, org string, req CreateEnrollmentTokenRequest) (*CreatedEnrollmentToken, error) {
	var out CreatedEnrollmentToken
	return &out, c.do(ctx, http.MethodPost, "/orgs/"+esc(org)+"/enrollment-tokens", req, &out)
}

// RevokeEnrollmentToken revokes an enrollment token; agents it enrolled
// stay enrolled.
func (c *Client) RevokeEnrollmentToken(ctx context.Context, org, id string) error {
	return c.do(ctx, http.MethodDelete, "/orgs/"+esc(org)+"/enrollment-tokens/"+esc(id), nil, nil)
}

// Agents lists an organization's agents, revoked ones included.
func (c *Client) Agents(ctx context.Context, org string) ([]Agent, error) {
	var out List[Agent]
	return out.Items, c.do(ctx, http.MethodGet, "/orgs/"+esc(org)+"/agents", nil, &out)
}

// Agent returns one agent.
func (c *Client) Agent(ctx context.Context, org, id string) (*Agent, error) {
	var out Agent
	return &out, c.do(ctx, http.MethodGet, "/orgs/"+esc(org)+"/agents/"+esc(id), nil, &out)
}

// RenameAgent renames an agent.
func (c *Client) RenameAgent(ctx context.Context, org, id, name string) (*Agent, error) {
	var out Agent
	return &out, c.do(ctx, http.MethodPatch, "/orgs/"+esc(org)+"/agents/"+esc(id), UpdateAgentRequest{Name: name}, &out)
}

// RevokeAgent revokes an agent: its credential stops working and its
// tunnel is closed.
func (c *Client) RevokeAgent(ctx context.Context, org, id string) error {
	return c.do(ctx, http.MethodDelete, "/orgs/"+esc(org)+"/agents/"+esc(id), nil, nil)
}

func (q AuditQuery) values(format string) url.Values {
	v := url.Values{}
	set := func(k, val string) {
		if val != "" {
			v.Set(k, val)
		}
	}
	set("actor", q.Actor)
	set("action", q.Action)
	set("target", q.Target)
	if !q.Since.IsZero() {
		v.Set("since", q.Since.UTC().Format(time.RFC3339))
	}
	if !q.Until.IsZero() {
		v.Set("until", q.Until.UTC().Format(time.RFC3339))
	}
	set("format", format)
	return v
}

// Audit lists audit events, newest first.
func (c *Client) Audit(ctx context.Context, org string, q AuditQuery) ([]AuditEvent, error) {
	var out List[AuditEvent]
	return out.Items, c.do(ctx, http.MethodGet, "/orgs/"+esc(org)+"/audit?"+q.values("json").Encode(), nil, &out)
}

// AuditCSV exports audit events as CSV.
func (c *Client) AuditCSV(ctx context.Context, org string, q AuditQuery) ([]byte, error) {
	return c.raw(ctx, http.MethodGet, "/orgs/"+esc(org)+"/audit?"+q.values("csv").Encode(), nil)
}
