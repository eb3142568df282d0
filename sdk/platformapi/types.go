// Package platformapi is the typed client and the JSON types of the
// platform's /api/v1. It imports nothing of the platform, so the CLI, CI
// jobs and tests link only this.
package platformapi

import (
	"time"

	"github.com/thinlab/thinlab/sdk/tunnel"
)

// ErrorBody is the one error shape of the API:
// {"error":{"code":"...","message":"...","field":"..."}}.
type ErrorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// Field names the request field that is wrong, when one is.
	Field string `json:"field,omitempty"`
}

// ErrorResponse wraps ErrorBody.
type ErrorResponse struct {
	Error ErrorBody `json:"error"`
}

// Error codes.
const (
	CodeUnauthenticated = "unauthenticated"
	CodeForbidden       = "forbidden"
	CodeNotFound        = "not_found"
	CodeInvalid         = "invalid"
	CodeConflict        = "conflict"
	CodeLastOwner       = "last_owner"
	CodeInternal        = "internal"
	CodeRateLimited     = "rate_limited" // 429; Retry-After says when to try again
	CodeGone            = "gone"         // 410: the route was removed; the message says what replaces it
)

// Org is an organization as seen by the caller.
type Org struct {
	ID        string    `json:"id"`
	Slug      string    `json:"slug"`
	Name      string    `json:"name"`
	Role      string    `json:"role"`
	CreatedAt time.Time `json:"created_at"`
}

// Me is the caller.
type Me struct {
	ID     string `json:"id"`
	Email  string `json:"email"`
	Name   string `json:"name"`
	Method string `json:"auth_method"`
	// TokenOrgID is the only organization an API token may act in.
	TokenOrgID string `json:"token_org_id,omitempty"`
	Orgs       []Org  `json:"orgs"`
}

// Member is a user's membership in an organization.
type Member struct {
	UserID    string    `json:"user_id"`
	Email     string    `json:"email"`
	Name      string    `json:"name"`
	Role      string    `json:"role"`
	CreatedAt time.Time `json:"created_at"`
}

// UpdateMemberRequest changes a member's role.
type UpdateMemberRequest struct {
	Role string `json:"role"`
}

// Invitation invites an email address into an organization.
type Invitation struct {
	ID        string    `json:"id"`
	Email     string    `json:"email"`
	Role      string    `json:"role"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	// Token is the acceptance secret, present only in the create answer.
	Token string `json:"token,omitempty"`
}

// CreateInvitationRequest invites email with role.
type CreateInvitationRequest struct {
	Email string `json:"email"`
	Role  string `json:"role"`
}

// AcceptedInvitation answers an accepted invitation.
type AcceptedInvitation struct {
	Org  Org    `json:"org"`
	Role string `json:"role"`
}

// Token is an API token's metadata; the secret is never listed.
type Token struct {
	ID         string     `json:"id"`
	Name       string     `json:"name"`
	Prefix     string     `json:"prefix"`
	UserID     string     `json:"user_id"`
	CreatedAt  time.Time  `json:"created_at"`
	ExpiresAt  *time.Time `json:"expires_at,omitempty"`
	RevokedAt  *time.Time `json:"revoked_at,omitempty"`
	LastUsedAt *time.Time `json:"last_used_at,omitempty"`
}

// CreateTokenRequest creates a token; ExpiresAt is optional (never expires).
type CreateTokenRequest struct {
	Name      string     `json:"name"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
}

// CreatedToken carries the secret, shown this once.
type CreatedToken struct {
	Token
	Secret string `json:"secret"`
}

// AuditEvent is one entry of an organization's audit log.
type AuditEvent struct {
	ID        int64     `json:"id"`
	Time      time.Time `json:"time"`
	ActorID   string    `json:"actor_id,omitempty"`
	Actor     string    `json:"actor"`
	Action    string    `json:"action"`
	Target    string    `json:"target"`
	IP        string    `json:"ip"`
	UserAgent string    `json:"user_agent"`
	Result    string    `json:"result"`
	Error     string    `json:"error,omitempty"`
}

// AuditQuery filters the audit log; zero fields match everything.
type AuditQuery struct {
	Actor  string
	Action string
	Target string
	Since  time.Time
	Until  time.Time
}

// List wraps a listing.
type List[T any] struct {
	Items []T `json:"items"`
}

// CreateOrgRequest creates an organization with the caller as owner.
type CreateOrgRequest struct {
	Slug string `json:"slug"`
	Name string `json:"name"`
}

// EnrollmentToken is an enrollment token's metadata; the secret is never
// listed. MaxUses is absent for a token that enrolls any number of agents
// until it expires.
type EnrollmentToken struct {
	ID        string     `json:"id"`
	Name      string     `json:"name"`
	Prefix    string     `json:"prefix"`
	MaxUses   *int       `json:"max_uses,omitempty"`
	Uses      int        `json:"uses"`
	CreatedBy string     `json:"created_by,omitempty"`
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt time.Time  `json:"expires_at"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
	// Usable is false once the token is revoked, expired or used up.
	Usable bool `json:"usable"`
}

// CreateEnrollmentTokenRequest creates an enrollment token. ExpiresAt
// defaults to 24 hours from now (at most a year ahead); SingleUse makes
// the token enroll one agent only.
type CreateEnrollmentTokenRequest struct {
	Name      string     `json:"name,omitempty"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	SingleUse bool       `json:"single_use,omitempty"`
}

// CreatedEnrollmentToken carries the secret, shown this once, and the
// command that enrolls an agent with it.
type CreatedEnrollmentToken struct {
	EnrollmentToken
	Secret  string `json:"secret"`
	Command string `json:"command"`
}

// Connection states of an agent's tunnel, as the platform last recorded.
const (
	AgentConnected    = "connected"
	AgentStale        = "stale" // recorded as connected, but no heartbeat lately
	AgentDisconnected = "disconnected"
	AgentNeverSeen    = "never_connected"
	AgentRevoked      = "revoked"
)

// AgentConnection is the state of an agent's tunnel. It is the platform's
// view, apart from the agent's own health (in its facts and events).
type AgentConnection struct {
	State             string     `json:"state"`
	ConnectedSince    *time.Time `json:"connected_since,omitempty"`
	LastHeartbeatAt   *time.Time `json:"last_heartbeat_at,omitempty"`
	DisconnectedSince *time.Time `json:"disconnected_since,omitempty"`
}

// Agent is an enrolled agent with what it last reported about itself.
type Agent struct {
	ID             string            `json:"id"`
	Name           string            `json:"name"`
	Version        string            `json:"version"`
	EnrolledAt     time.Time         `json:"enrolled_at"`
	RevokedAt      *time.Time        `json:"revoked_at,omitempty"`
	Connection     AgentConnection   `json:"connection"`
	Facts          tunnel.AgentFacts `json:"facts"`
	FactsUpdatedAt time.Time         `json:"facts_updated_at"`
}

// UpdateAgentRequest renames an agent.
type UpdateAgentRequest struct {
	Name string `json:"name"`
}
