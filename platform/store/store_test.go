package store_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/thinlab/thinlab/platform/platformtest"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/platform/store"
)

func TestMain(m *testing.M) { platformtest.Main(m) }

func open(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(platformtest.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("close the store: %v", err)
		}
	})
	return st
}

// Two owners demoting each other at the same moment: the membership rows
// are locked, so exactly one succeeds and the organization keeps an owner.
func TestConcurrentDemotionsKeepAnOwner(t *testing.T) {
	st := open(t)
	ctx := t.Context()
	for round := range 10 {
		a, err := st.UpsertOIDCUser(ctx, "iss", "a", "a@example.com", "", true)
		if err != nil {
			t.Fatal(err)
		}
		b, err := st.UpsertOIDCUser(ctx, "iss", "b", "b@example.com", "", true)
		if err != nil {
			t.Fatal(err)
		}
		org, err := st.CreateOrganization(ctx, "race-"+string(rune('a'+round)), "", a.ID)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.AddMember(ctx, org.ID, b.ID, rbac.Owner); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, u := range []*store.User{a, b} {
			wg.Go(func() { errs[i] = st.SetMemberRole(ctx, org.ID, u.ID, rbac.Admin) })
		}
		wg.Wait()
		failed := 0
		for _, err := range errs {
			if errors.Is(err, store.ErrLastOwner) {
				failed++
			} else if err != nil {
				t.Fatal(err)
			}
		}
		members, _ := st.ListMembers(ctx, org.ID)
		owners := 0
		for _, m := range members {
			if m.Role == rbac.Owner {
				owners++
			}
		}
		if failed != 1 || owners != 1 {
			t.Fatalf("round %d: %d demotions refused, %d owners left; want 1 and 1", round, failed, owners)
		}
	}
}

func TestUsersUniqueByIssuerAndSubject(t *testing.T) {
	st := open(t)
	ctx := t.Context()
	u1, err := st.UpsertOIDCUser(ctx, "https://idp-a", "42", "old@example.com", "Old", true)
	if err != nil {
		t.Fatal(err)
	}
	u2, err := st.UpsertOIDCUser(ctx, "https://idp-a", "42", "new@example.com", "New", true)
	if err != nil {
		t.Fatal(err)
	}
	if u1.ID != u2.ID || u2.Email != "new@example.com" || u2.Name != "New" {
		t.Fatalf("same identity gave %+v then %+v", u1, u2)
	}
	u3, err := st.UpsertOIDCUser(ctx, "https://idp-b", "42", "new@example.com", "", true)
	if err != nil || u3.ID == u1.ID {
		t.Fatalf("another issuer's subject 42 must be another user: %+v %v", u3, err)
	}
}

func TestTokenLifecycle(t *testing.T) {
	st := open(t)
	ctx := t.Context()
	u, _ := st.UpsertOIDCUser(ctx, "iss", "u", "u@example.com", "", true)
	org, _ := st.CreateOrganization(ctx, "tok", "", u.ID)
	soon := time.Now().Add(time.Hour)
	tok, secret, err := st.CreateAPIToken(ctx, org.ID, u.ID, "ci", &soon)
	if err != nil {
		t.Fatal(err)
	}
	got, err := st.AuthenticateAPIToken(ctx, secret)
	if err != nil || got.ID != tok.ID || got.LastUsedAt == nil {
		t.Fatalf("authenticate: %+v %v", got, err)
	}
	if _, err := st.AuthenticateAPIToken(ctx, "thl_unknown"); !errors.Is(err, store.ErrTokenInvalid) {
		t.Fatalf("unknown: %v", err)
	}
	// Another organization cannot see or revoke it.
	other, _ := st.CreateOrganization(ctx, "other", "", u.ID)
	if err := st.RevokeAPIToken(ctx, other.ID, tok.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("revoke through another org: %v", err)
	}
	if err := st.RevokeAPIToken(ctx, org.ID, tok.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := st.AuthenticateAPIToken(ctx, secret); !errors.Is(err, store.ErrTokenRevoked) {
		t.Fatalf("revoked: %v", err)
	}
}
