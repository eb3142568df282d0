// Package orgrules holds the organization's rules: which organizations,
// invitations and tokens may be created, who may see and revoke which
// tokens, which member a caller may change, to which role, and why a
// member change fails, and what agent names, agent facts and enrollment
// tokens are accepted. The JSON API (platform/api) and the web UI
// (platform/web) both call it and only map its errors to answers (a JSON
// error body or a page), so the two cannot drift apart.
//
// Every refusal is an *Error: errors.Is tells its kind (ErrInvalid,
// ErrForbidden, ErrNotFound, ErrConflict, ErrLastOwner, ErrSlugReserved)
// and Field names the request field at fault, when there is one.
package orgrules

import (
	"errors"
	"fmt"
	"net/mail"
	"strings"
	"time"
	"unicode"

	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

// Kinds of refusal; test with errors.Is.
var (
	// ErrInvalid: the request is malformed (HTTP 400).
	ErrInvalid = errors.New("invalid request")
	// ErrForbidden: the caller's role does not allow it (HTTP 403).
	ErrForbidden = errors.New("forbidden")
	// ErrNotFound: the thing does not exist, or the caller may not know
	// that it does (HTTP 404).
	ErrNotFound = errors.New("not found")
	// ErrConflict: the state of the organization refuses it (HTTP 409).
	ErrConflict = errors.New("conflict")
	// ErrLastOwner: the change would leave the organization without an
	// owner; it is also an ErrConflict.
	ErrLastOwner = errors.New("last owner")
	// ErrSlugReserved: an identity provider group mapping owns the slug;
	// it is also an ErrConflict.
	ErrSlugReserved = errors.New("slug reserved")
)

// Error is a refused request: its kind, the request field at fault ("" for
// none) and a message for the person or program that sent it.
type Error struct {
	Kind    error
	Field   string
	Message string
}

func (e *Error) Error() string { return e.Message }

// Unwrap lets errors.Is match the kind, and ErrConflict for the specific
// conflicts.
func (e *Error) Unwrap() []error {
	if e.Kind == ErrLastOwner || e.Kind == ErrSlugReserved {
		return []error{e.Kind, ErrConflict}
	}
	return []error{e.Kind}
}

func refuse(kind error, field, format string, args ...any) *Error {
	return &Error{Kind: kind, Field: field, Message: fmt.Sprintf(format, args...)}
}

// Limits of names and addresses.
const (
	MaxTokenName = 100
	MaxOrgName   = 200
	// MaxEmail is RFC 5321's cap on an address. Checking it first also
	// keeps megabyte inputs away from net/mail's parser.
	MaxEmail = 254
)

// NewOrganization checks a requested organization: a valid slug and a
// name of at most MaxOrgName characters.
func NewOrganization(slug, name string) error {
	if err := store.ValidSlug(slug); err != nil {
		return &Error{Kind: ErrInvalid, Field: "slug", Message: err.Error()}
	}
	if len(name) > MaxOrgName {
		return refuse(ErrInvalid, "name", "name is longer than %d characters", MaxOrgName)
	}
	return nil
}

// CreateOrganizationFailed explains why the store refused to create the
// organization slug; other errors are returned as they are.
func CreateOrganizationFailed(err error, slug string) error {
	switch {
	case errors.Is(err, store.ErrSlugReserved):
		return refuse(ErrSlugReserved, "slug", "slug %s is reserved: an identity provider group mapping places people in this organization; choose another slug", slug)
	case errors.Is(err, store.ErrConflict):
		return refuse(ErrConflict, "slug", "slug %s is taken: choose another", slug)
	}
	return err
}

// GrantRole parses a requested role and checks that the caller, whose
// role is actor, may grant it: nobody grants a role stronger than their own.
func GrantRole(actor rbac.Role, raw string) (rbac.Role, error) {
	role, err := rbac.ParseRole(raw)
	if err != nil {
		return "", &Error{Kind: ErrInvalid, Field: "role", Message: err.Error()}
	}
	if !rbac.AtLeast(actor, role) {
		return "", refuse(ErrForbidden, "", "your role %s cannot grant role %s", actor, role)
	}
	return role, nil
}

// MayChangeMember checks that the caller, whose role is actor, may change
// or remove a member whose role is target: only someone at least as
// strong (only owners change owners).
func MayChangeMember(actor, target rbac.Role) error {
	if !rbac.AtLeast(actor, target) {
		return refuse(ErrForbidden, "", "your role %s cannot change a member whose role is %s", actor, target)
	}
	return nil
}

// MemberChangeFailed explains why the store refused a member change
// (field is the request field the change came from, "" for a removal):
// the last owner cannot be removed or demoted, a member who is gone
// cannot be changed. Other errors are returned as they are.
func MemberChangeFailed(err error, field string) error {
	switch {
	case errors.Is(err, store.ErrLastOwner):
		return &Error{Kind: ErrLastOwner, Field: field, Message: store.ErrLastOwner.Error()}
	case errors.Is(err, store.ErrNotFound):
		return refuse(ErrNotFound, "", "member not found")
	}
	return err
}

// InvitationEmail returns the plain address an invitation is for.
func InvitationEmail(raw string) (string, error) {
	if len(raw) > MaxEmail {
		return "", refuse(ErrInvalid, "email", "email is longer than %d characters", MaxEmail)
	}
	addr, err := mail.ParseAddress(strings.TrimSpace(raw))
	if err != nil || addr.Name != "" {
		return "", refuse(ErrInvalid, "email", "email %q is not an email address: use a plain address such as ada@example.com", strings.TrimSpace(raw))
	}
	return addr.Address, nil
}

// TokenName trims and checks an API token's name.
func TokenName(raw string) (string, error) {
	name := strings.TrimSpace(raw)
	switch {
	case name == "":
		return "", refuse(ErrInvalid, "name", "name is required: say what the token is for, such as \"ci\"")
	case len(name) > MaxTokenName:
		return "", refuse(ErrInvalid, "name", "name is longer than %d characters", MaxTokenName)
	}
	return name, nil
}

// TokenExpiry checks a token's expiry (nil: never) against now.
func TokenExpiry(expiresAt *time.Time, now time.Time) error {
	if expiresAt != nil && !expiresAt.After(now) {
		return refuse(ErrInvalid, "expires_at", "expires_at is in the past: give a future time or leave it out")
	}
	return nil
}

// SeesAllTokens reports whether a member with role sees and revokes every
// member's tokens: people who manage members do; others see and revoke
// only their own.
func SeesAllTokens(role rbac.Role) bool { return rbac.Can(role, rbac.MemberManage) }

// VisibleTokens is the part of toks that the member userID with role may
// see.
func VisibleTokens(toks []store.APIToken, role rbac.Role, userID string) []store.APIToken {
	all := SeesAllTokens(role)
	out := []store.APIToken{}
	for _, t := range toks {
		if all || t.UserID == userID {
			out = append(out, t)
		}
	}
	return out
}

// MayRevokeToken checks that the member userID with role may revoke tok.
// Someone else's token is ErrNotFound to a caller who may not see it, so
// that its existence does not leak.
func MayRevokeToken(tok *store.APIToken, role rbac.Role, userID string) error {
	if !SeesAllTokens(role) && tok.UserID != userID {
		return refuse(ErrNotFound, "", "token not found")
	}
	return nil
}

// Limits of agents and enrollment tokens.
const (
	MaxAgentName = store.MaxAgentName
	// DefaultEnrollmentTTL is how long an enrollment token works when its
	// creator gives no expiry; MaxEnrollmentTTL caps a given one.
	DefaultEnrollmentTTL = 24 * time.Hour
	MaxEnrollmentTTL     = 365 * 24 * time.Hour
)

// AgentName checks a new name for an agent and returns it trimmed.
func AgentName(raw string) (string, error) {
	name := strings.TrimSpace(raw)
	switch {
	case name == "":
		return "", refuse(ErrInvalid, "name", "name is required: say which host or environment the agent is, such as \"staging-db\"")
	case len(name) > MaxAgentName:
		return "", refuse(ErrInvalid, "name", "name is longer than %d bytes", MaxAgentName)
	case strings.IndexFunc(name, unicode.IsControl) >= 0:
		return "", refuse(ErrInvalid, "name", "name contains control characters: use letters, digits and punctuation")
	}
	return name, nil
}

// AgentRenameFailed translates the store's answer to a rename.
func AgentRenameFailed(err error, name string) error {
	if errors.Is(err, store.ErrConflict) {
		return refuse(ErrConflict, "name", "another agent of the organization is named %q: choose another name", name)
	}
	return err
}

// EnrollmentTokenName checks an enrollment token's optional name.
func EnrollmentTokenName(raw string) (string, error) {
	name := strings.TrimSpace(raw)
	if len(name) > MaxTokenName {
		return "", refuse(ErrInvalid, "name", "name is longer than %d characters", MaxTokenName)
	}
	return name, nil
}

// EnrollmentExpiry returns when a new enrollment token expires: the
// requested time, or DefaultEnrollmentTTL from now; refused in the past
// or more than MaxEnrollmentTTL ahead (a long-lived token that mints
// agent credentials is a standing risk).
func EnrollmentExpiry(expiresAt *time.Time, now time.Time) (time.Time, error) {
	if expiresAt == nil {
		return now.Add(DefaultEnrollmentTTL).UTC(), nil
	}
	switch {
	case !expiresAt.After(now):
		return time.Time{}, refuse(ErrInvalid, "expires_at", "expires_at is in the past: give a future time or leave it out (24 hours)")
	case expiresAt.Sub(now) > MaxEnrollmentTTL:
		return time.Time{}, refuse(ErrInvalid, "expires_at", "expires_at is more than a year ahead: enrollment tokens are short-lived, create a new one when needed")
	}
	return expiresAt.UTC(), nil
}

// Bounds on the facts an agent reports (at enrollment and on every tunnel
// connect); the request body is bounded too, these keep lists sane.
const (
	MaxFactPools    = 64
	MaxFactVersions = 32
)

// AgentFacts checks the facts an agent reports. The tunnel hub calls it
// too before UpdateAgentFacts.
func AgentFacts(f tunnel.AgentFacts) error {
	switch {
	case len(f.Pools) > MaxFactPools:
		return refuse(ErrInvalid, "facts.pools", "facts.pools has %d entries, at most %d are accepted", len(f.Pools), MaxFactPools)
	case len(f.PostgresVersions) > MaxFactVersions:
		return refuse(ErrInvalid, "facts.postgresVersions", "facts.postgresVersions has %d entries, at most %d are accepted", len(f.PostgresVersions), MaxFactVersions)
	}
	return nil
}
