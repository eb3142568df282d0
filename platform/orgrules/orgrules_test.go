package orgrules

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/platform/store"
)

// TestRefusalsAreTyped: every refusal is an *Error whose kind errors.Is
// finds and whose field names the request field, so both the API and the
// UI can map it without reading the message.
func TestRefusalsAreTyped(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	past := now.Add(-time.Second)
	cases := []struct {
		name  string
		err   error
		kind  error
		field string
		says  string
	}{
		{"empty slug", NewOrganization("", "x"), ErrInvalid, "slug", "slug"},
		{"long org name", NewOrganization("acme", strings.Repeat("n", MaxOrgName+1)), ErrInvalid, "name", "200"},
		{"reserved slug", CreateOrganizationFailed(store.ErrSlugReserved, "acme"), ErrSlugReserved, "slug", "reserved"},
		{"reserved is a conflict", CreateOrganizationFailed(store.ErrSlugReserved, "acme"), ErrConflict, "slug", "acme"},
		{"taken slug", CreateOrganizationFailed(fmt.Errorf("insert: %w", store.ErrConflict), "acme"), ErrConflict, "slug", "taken"},
		{"unknown role", second(GrantRole(rbac.Owner, "god")), ErrInvalid, "role", "god"},
		{"role above the caller's", second(GrantRole(rbac.Admin, "owner")), ErrForbidden, "", "cannot grant role owner"},
		{"member above the caller", MayChangeMember(rbac.Admin, rbac.Owner), ErrForbidden, "", "cannot change a member whose role is owner"},
		{"last owner", MemberChangeFailed(store.ErrLastOwner, "role"), ErrLastOwner, "role", "last owner"},
		{"last owner is a conflict", MemberChangeFailed(store.ErrLastOwner, ""), ErrConflict, "", "last owner"},
		{"member gone", MemberChangeFailed(store.ErrNotFound, ""), ErrNotFound, "", "member not found"},
		{"display-name email", second(InvitationEmail("Ada <ada@example.com>")), ErrInvalid, "email", "plain address"},
		{"long email", second(InvitationEmail(strings.Repeat("a", MaxEmail) + "@x.com")), ErrInvalid, "email", "254"},
		{"blank token name", second(TokenName("  ")), ErrInvalid, "name", "required"},
		{"long token name", second(TokenName(strings.Repeat("t", MaxTokenName+1))), ErrInvalid, "name", "100"},
		{"expired token", TokenExpiry(&past, now), ErrInvalid, "expires_at", "past"},
		{"someone else's token", MayRevokeToken(&store.APIToken{UserID: "usr_b"}, rbac.Member, "usr_a"), ErrNotFound, "", "token not found"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var re *Error
			if !errors.As(tc.err, &re) {
				t.Fatalf("error = %v (%T), want an *orgrules.Error", tc.err, tc.err)
			}
			if !errors.Is(tc.err, tc.kind) {
				t.Errorf("errors.Is(%v, %v) = false, want true", tc.err, tc.kind)
			}
			if re.Field != tc.field {
				t.Errorf("field = %q, want %q", re.Field, tc.field)
			}
			if !strings.Contains(re.Message, tc.says) {
				t.Errorf("message %q does not say %q", re.Message, tc.says)
			}
		})
	}
}

func second[T any](_ T, err error) error { return err }

// TestAllowed: what the rules let through, unchanged or normalised.
func TestAllowed(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	future := now.Add(time.Hour)
	if err := NewOrganization("acme", "Acme"); err != nil {
		t.Errorf("NewOrganization(acme) = %v, want nil", err)
	}
	if role, err := GrantRole(rbac.Admin, "admin"); err != nil || role != rbac.Admin {
		t.Errorf("admin grants admin: %q, %v; want admin, nil", role, err)
	}
	if err := MayChangeMember(rbac.Owner, rbac.Owner); err != nil {
		t.Errorf("owner changes owner: %v, want nil", err)
	}
	if addr, err := InvitationEmail(" ada@example.com "); err != nil || addr != "ada@example.com" {
		t.Errorf("InvitationEmail = %q, %v; want ada@example.com, nil", addr, err)
	}
	if name, err := TokenName("  ci  "); err != nil || name != "ci" {
		t.Errorf("TokenName = %q, %v; want ci, nil", name, err)
	}
	if err := TokenExpiry(&future, now); err != nil {
		t.Errorf("future expiry: %v, want nil", err)
	}
	if err := TokenExpiry(nil, now); err != nil {
		t.Errorf("no expiry: %v, want nil", err)
	}
	for _, err := range []error{CreateOrganizationFailed(nil, "x"), MemberChangeFailed(nil, "")} {
		if err != nil {
			t.Errorf("no store error gave %v, want nil", err)
		}
	}
	other := errors.New("connection reset")
	if err := MemberChangeFailed(other, ""); err != other {
		t.Errorf("a server error became %v, want it returned as it is", err)
	}
}

// TestTokenVisibility: member managers see every token, others their own.
func TestTokenVisibility(t *testing.T) {
	toks := []store.APIToken{{ID: "tok_a", UserID: "usr_a"}, {ID: "tok_b", UserID: "usr_b"}}
	for _, tc := range []struct {
		role rbac.Role
		want string
	}{
		{rbac.Owner, "tok_a,tok_b"},
		{rbac.Admin, "tok_a,tok_b"},
		{rbac.Member, "tok_a"},
		{rbac.Viewer, "tok_a"},
	} {
		t.Run(string(tc.role), func(t *testing.T) {
			var ids []string
			for _, tok := range VisibleTokens(toks, tc.role, "usr_a") {
				ids = append(ids, tok.ID)
			}
			if got := strings.Join(ids, ","); got != tc.want {
				t.Errorf("%s sees %s, want %s", tc.role, got, tc.want)
			}
			if err := MayRevokeToken(&toks[1], tc.role, "usr_a"); (err == nil) != SeesAllTokens(tc.role) {
				t.Errorf("%s revoking another member's token: %v", tc.role, err)
			}
		})
	}
}
