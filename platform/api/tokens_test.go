package api_test

import (
	"crypto/sha256"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/platform/platformtest"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/sdk/platformapi"
)

func TestTokenRejections(t *testing.T) {
	env := platformtest.New(t)
	ctx := t.Context()
	owner := env.User("owner@example.com")
	org := env.Org("tok", owner)

	past := time.Now().Add(-time.Minute)
	_, expired, err := env.Store.CreateAPIToken(ctx, org.ID, owner.ID, "old", &past)
	if err != nil {
		t.Fatal(err)
	}
	revokedTok, revoked, err := env.Store.CreateAPIToken(ctx, org.ID, owner.ID, "gone", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Store.RevokeAPIToken(ctx, org.ID, revokedTok.ID); err != nil {
		t.Fatal(err)
	}
	good := env.Token(org, owner)

	cases := []struct{ name, header, want string }{
		{"expired", "Bearer " + expired, "token expired"},
		{"revoked", "Bearer " + revoked, "token revoked"},
		{"wrong", "Bearer " + good[:len(good)-1] + "x", "invalid token"},
		{"garbage", "Bearer nope", "invalid token"},
		{"scheme", "Basic " + good, `Authorization header must be "Bearer <api token>"`},
		{"none", "", "sign in or send Authorization: Bearer <api token>"},
	}
	for _, tc := range cases {
		r := env.DoWithHeader(http.MethodGet, "/api/v1/orgs/tok/members", "Authorization", tc.header, nil)
		if r.Status != http.StatusUnauthorized || r.Error().Code != "unauthenticated" || r.Error().Message != tc.want {
			t.Errorf("%s: %d %s, want 401 %q", tc.name, r.Status, r.Body, tc.want)
		}
	}
	if r := env.Do(http.MethodGet, "/api/v1/orgs/tok/members", good, nil); r.Status != http.StatusOK {
		t.Fatalf("good token: %d %s", r.Status, r.Body)
	}
}

// createToken creates a token as userID signed in (tokens cannot mint
// tokens) and returns the answer.
func createToken(t *testing.T, env *platformtest.Env, org, userID string, req platformapi.CreateTokenRequest) platformapi.CreatedToken {
	t.Helper()
	r := env.DoWithHeader(http.MethodPost, "/api/v1/orgs/"+org+"/tokens", testUserHeader, userID, req)
	var out platformapi.CreatedToken
	if err := json.Unmarshal(r.Body, &out); r.Status != http.StatusCreated || err != nil {
		t.Fatalf("create token as a session: %d %s, want 201", r.Status, r.Body)
	}
	return out
}

func TestTokenShownOnceStoredHashed(t *testing.T) {
	env := platformtest.New(t, platformtest.WithAuthenticator(fakeSession))
	ctx := t.Context()
	owner := env.User("owner@example.com")
	org := env.Org("tok", owner)
	member := env.Member(org, "mia@example.com", rbac.Member)
	c := env.Client(env.Token(org, owner))

	exp := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	created := createToken(t, env, "tok", owner.ID, platformapi.CreateTokenRequest{Name: "ci", ExpiresAt: &exp})
	if !strings.HasPrefix(created.Secret, "thl_") || !strings.HasPrefix(created.Secret, created.Prefix) || created.ExpiresAt == nil || !created.ExpiresAt.Equal(exp) {
		t.Fatalf("created token: %+v", created)
	}
	// The new token works and is listed without its secret.
	c2 := env.Client(created.Secret)
	toks, err := c2.Tokens(ctx, "tok")
	if err != nil {
		t.Fatal(err)
	}
	listed := env.Do(http.MethodGet, "/api/v1/orgs/tok/tokens", created.Secret, nil)
	if strings.Contains(string(listed.Body), created.Secret) || len(toks) != 2 {
		t.Fatalf("listing shows the secret or misses tokens: %s", listed.Body)
	}
	var found bool
	for _, tk := range toks {
		if tk.ID == created.ID {
			found = tk.LastUsedAt != nil
		}
	}
	if !found {
		t.Fatalf("token %s not listed with last_used_at: %+v", created.ID, toks)
	}

	// Nothing in the database holds the plaintext; the hash is SHA-256.
	for _, table := range []string{"api_tokens", "audit_events"} {
		for _, row := range env.QueryStrings("SELECT t::text FROM " + table + " t") {
			if strings.Contains(row, created.Secret) || strings.Contains(row, created.Secret[len("thl_"):]) {
				t.Fatalf("%s holds the plaintext secret: %s", table, row)
			}
		}
	}
	sum := sha256.Sum256([]byte(created.Secret))
	hashes := env.QueryStrings("SELECT encode(hash, 'hex') FROM api_tokens WHERE id = $1", created.ID)
	if len(hashes) != 1 || hashes[0] != hexString(sum[:]) {
		t.Fatalf("stored hash %v is not sha256 of the secret", hashes)
	}

	// A member sees and revokes only their own tokens.
	mc := env.Client(env.Token(org, member))
	mine, err := mc.Tokens(ctx, "tok")
	if err != nil || len(mine) != 1 || mine[0].UserID != member.ID {
		t.Fatalf("member's token list: %+v %v", mine, err)
	}
	if err := mc.RevokeToken(ctx, "tok", created.ID); !isStatus(err, http.StatusNotFound) {
		t.Fatalf("member revoking the owner's token: %v", err)
	}
	// The owner revokes it; it stops working with "token revoked".
	if err := c.RevokeToken(ctx, "tok", created.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Tokens(ctx, "tok"); !isStatus(err, http.StatusUnauthorized) || !strings.Contains(err.Error(), "token revoked") {
		t.Fatalf("revoked token: %v", err)
	}
}

func TestTokenValidation(t *testing.T) {
	env := platformtest.New(t, platformtest.WithAuthenticator(fakeSession))
	owner := env.User("owner@example.com")
	env.Org("tok", owner)
	cases := []struct {
		body  string
		field string
	}{
		{`{"name":""}`, "name"},
		{`{"name":"x","expires_at":"2001-01-01T00:00:00Z"}`, "expires_at"},
		{`{"name":"x","expires_at":"tomorrow"}`, ""},
		{`{"name":"x","scope":"all"}`, "scope"},
		{`{"name":5}`, "name"},
		{`not json`, ""},
	}
	for _, tc := range cases {
		r := env.DoWithHeader(http.MethodPost, "/api/v1/orgs/tok/tokens", testUserHeader, owner.ID, tc.body)
		if r.Status != http.StatusBadRequest || r.Error().Code != "invalid" || r.Error().Field != tc.field || r.Error().Message == "" {
			t.Errorf("%s: %d %s, want 400 naming field %q", tc.body, r.Status, r.Body, tc.field)
		}
	}
}

func hexString(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

func isStatus(err error, status int) bool {
	apiErr, ok := err.(*platformapi.APIError)
	return ok && apiErr.Status == status
}

// TestTokensCannotMintTokensOrAcceptInvitations: a leaked API token must
// not turn into more (or longer-lived) credentials, nor join its user to
// organizations. Both routes answer 403 with advice to sign in in the
// browser, whatever the body, and nothing is created.
func TestTokensCannotMintTokensOrAcceptInvitations(t *testing.T) {
	env := platformtest.New(t, platformtest.WithAuthenticator(fakeSession))
	ctx := t.Context()
	owner := env.User("owner@example.com")
	org := env.Org("tok", owner)
	boss := env.User("boss@example.com")
	other := env.Org("other", boss)
	soon := time.Now().Add(time.Hour)
	_, short, err := env.Store.CreateAPIToken(ctx, org.ID, owner.ID, "short-lived", &soon)
	if err != nil {
		t.Fatal(err)
	}
	_, invSecret, err := env.Store.CreateInvitation(ctx, other.ID, "owner@example.com", rbac.Admin, boss.ID)
	if err != nil {
		t.Fatal(err)
	}
	never := `{"name":"forever"}`
	r := env.Do(http.MethodPost, "/api/v1/orgs/tok/tokens", short, never)
	if r.Status != http.StatusForbidden || !strings.Contains(r.Error().Message, "sign in through the browser to create tokens") {
		t.Fatalf("token minting a token: %d %s, want 403 telling to sign in through the browser", r.Status, r.Body)
	}
	r = env.Do(http.MethodPost, "/api/v1/invitations/"+invSecret+"/accept", short, nil)
	if r.Status != http.StatusForbidden || !strings.Contains(r.Error().Message, "sign in through the browser") {
		t.Fatalf("token accepting an invitation: %d %s, want 403", r.Status, r.Body)
	}
	if names := env.QueryStrings("SELECT name FROM api_tokens ORDER BY name"); strings.Join(names, ",") != "short-lived" {
		t.Fatalf("tokens after the refused mint: %v, want only short-lived", names)
	}
	if _, err := env.Store.MembershipOf(ctx, other.ID, owner.ID); err == nil {
		t.Fatal("the token joined its user to another organization")
	}
	// The person, signed in, still can do both.
	createToken(t, env, "tok", owner.ID, platformapi.CreateTokenRequest{Name: "ci"})
	if r := env.DoWithHeader(http.MethodPost, "/api/v1/invitations/"+invSecret+"/accept", testUserHeader, owner.ID, nil); r.Status != http.StatusOK {
		t.Fatalf("signed-in accept: %d %s, want 200", r.Status, r.Body)
	}
}
