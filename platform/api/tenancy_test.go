package api_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/platformtest"
	"github.com/thinlab/thinlab/platform/principal"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/platform/server"
	"github.com/thinlab/thinlab/platform/store"
)

// testUserHeader is read by a FAKE session authenticator used only in these
// tests: the real one (platform/auth) needs an OIDC sign-in. Unlike an API
// token, a session is not bound to one organization, so it exercises the
// membership check rather than the token's organization binding.
const testUserHeader = "X-Platformtest-User"

func fakeSession(s *server.Server) error {
	s.AddAuthenticator(func(c *gin.Context) (*principal.Principal, error) {
		id := c.GetHeader(testUserHeader)
		if id == "" {
			return nil, nil
		}
		u, err := s.Store().UserByID(c.Request.Context(), id)
		if err != nil {
			return nil, principal.Reject("unknown test user")
		}
		return &principal.Principal{UserID: u.ID, Email: u.Email, Method: principal.MethodSession}, nil
	})
	return nil
}

// tenants is two organizations with something of everything in each.
type tenants struct {
	env                 *platformtest.Env
	a, b                *store.Organization
	ownerA, ownerB      *store.User
	tokenA              string // ownerA's token in A
	tokenB              string
	memberB             *store.User
	tokenIDB            string
	invitationB         string // ID
	invitationSecretB   string
	invitationSecretBTo string // the invited email
}

func newTenants(t *testing.T) *tenants {
	env := platformtest.New(t, platformtest.WithSetup(fakeSession))
	ctx := context.Background()
	tt := &tenants{env: env}
	tt.ownerA = env.User("ann@a.example")
	tt.ownerB = env.User("bob@b.example")
	tt.a = env.Org("org-a", tt.ownerA)
	tt.b = env.Org("org-b", tt.ownerB)
	tt.tokenA = env.Token(tt.a, tt.ownerA)
	tt.memberB = env.Member(tt.b, "bea@b.example", rbac.Member)
	tok, secret, err := env.Store.CreateAPIToken(ctx, tt.b.ID, tt.memberB.ID, "b-ci", nil)
	if err != nil {
		t.Fatal(err)
	}
	tt.tokenB, tt.tokenIDB = secret, tok.ID
	inv, invSecret, err := env.Store.CreateInvitation(ctx, tt.b.ID, "new@b.example", rbac.Admin, tt.ownerB.ID)
	if err != nil {
		t.Fatal(err)
	}
	tt.invitationB, tt.invitationSecretB, tt.invitationSecretBTo = inv.ID, invSecret, inv.Email
	return tt
}

// fill replaces path parameters with org's slug and B's resources.
func (tt *tenants) fill(path, org string) string {
	r := strings.NewReplacer(
		":org", org,
		":user", tt.memberB.ID,
		":invitation", tt.invitationB,
		"/invitations/:token/accept", "/invitations/"+tt.invitationSecretB+"/accept",
		":token", tt.tokenIDB,
	)
	return r.Replace(path)
}

// bodies are valid requests, so a 4xx cannot come from validation.
func bodyFor(method, path string, tt *tenants) any {
	switch {
	case method == http.MethodPost && strings.HasSuffix(path, "/members"):
		return map[string]string{"user_id": tt.memberB.ID, "role": "viewer"}
	case method == http.MethodPatch && strings.Contains(path, "/members/"):
		return map[string]string{"role": "viewer"}
	case method == http.MethodPost && strings.HasSuffix(path, "/invitations"):
		return map[string]string{"email": "x@a.example", "role": "viewer"}
	case method == http.MethodPost && strings.HasSuffix(path, "/tokens"):
		return map[string]string{"name": "leak"}
	case method == http.MethodPost && strings.HasSuffix(path, "/orgs"):
		return map[string]string{"slug": "org-a2"}
	}
	return nil
}

// TestTenantIsolation walks EVERY route of the route table as the owner of
// organization A against organization B and B's resources, with A's API
// token and with a session. Every attempt must be 404 (or 403 where B's
// existence is already known to the caller, such as B's invitation secret).
// A route the walk does not know how to cover fails the test.
func TestTenantIsolation(t *testing.T) {
	tt := newTenants(t)
	env := tt.env
	// Routes that are not organization-scoped, and how each is checked.
	global := map[string]func(t *testing.T, as caller){
		"GET /healthz":             nil, // public
		"GET /api/v1/openapi.json": nil, // public
		"GET /api/v1/me": func(t *testing.T, as caller) {
			r := as.do(env, http.MethodGet, "/api/v1/me", nil)
			if r.Status != 200 || strings.Contains(string(r.Body), tt.b.ID) || strings.Contains(string(r.Body), "org-b") {
				t.Errorf("/me leaks B: %d %s", r.Status, r.Body)
			}
		},
		"GET /api/v1/orgs": func(t *testing.T, as caller) {
			r := as.do(env, http.MethodGet, "/api/v1/orgs", nil)
			if r.Status != 200 || strings.Contains(string(r.Body), tt.b.ID) || strings.Contains(string(r.Body), "org-b") {
				t.Errorf("/orgs leaks B: %d %s", r.Status, r.Body)
			}
		},
		"POST /api/v1/orgs": func(t *testing.T, as caller) {
			// Creating an organization touches no other tenant; slugs are
			// global names, so a taken slug is a plain conflict.
			r := as.do(env, http.MethodPost, "/api/v1/orgs", map[string]string{"slug": "org-b"})
			if r.Status != http.StatusConflict && r.Status != http.StatusForbidden {
				t.Errorf("POST /orgs with B's slug: %d %s", r.Status, r.Body)
			}
		},
		"POST /api/v1/invitations/:token/accept": func(t *testing.T, as caller) {
			r := as.do(env, http.MethodPost, tt.fill("/api/v1/invitations/:token/accept", ""), nil)
			if r.Status != http.StatusForbidden {
				t.Errorf("accepting B's invitation for %s as ann: %d %s", tt.invitationSecretBTo, r.Status, r.Body)
			}
		},
	}

	callers := []caller{
		{name: "api token of A", token: tt.tokenA},
		{name: "session of A's owner", userID: tt.ownerA.ID},
	}
	covered := map[string]bool{}
	for _, rt := range env.Server.Routes() {
		key := rt.Method + " " + rt.Path
		if !rt.OrgRoute() {
			check, ok := global[key]
			if !ok {
				t.Errorf("route %s is not covered by the isolation walk: add it to the table of global routes", key)
				continue
			}
			covered[key] = true
			if check != nil {
				for _, as := range callers {
					t.Run(as.name+"/"+key, func(t *testing.T) { check(t, as) })
				}
			}
			continue
		}
		covered[key] = true
		for _, as := range callers {
			// B's organization, by slug and by ID: not a member -> 404.
			for _, ref := range []string{tt.b.Slug, tt.b.ID} {
				path := tt.fill(rt.Path, ref)
				r := as.do(env, rt.Method, path, bodyFor(rt.Method, rt.Path, tt))
				if r.Status != http.StatusNotFound {
					t.Errorf("%s: %s %s = %d %s, want 404", as.name, rt.Method, path, r.Status, r.Body)
				}
				if strings.Contains(string(r.Body), tt.memberB.Email) {
					t.Errorf("%s: %s %s leaks B's data: %s", as.name, rt.Method, path, r.Body)
				}
			}
			// A's own organization, but B's resources in the path.
			if strings.Count(rt.Path, ":") > 1 {
				path := tt.fill(rt.Path, tt.a.Slug)
				r := as.do(env, rt.Method, path, bodyFor(rt.Method, rt.Path, tt))
				if r.Status != http.StatusNotFound {
					t.Errorf("%s: %s %s (B's resource under A) = %d %s, want 404", as.name, rt.Method, path, r.Status, r.Body)
				}
			}
		}
	}
	for key := range global {
		if !covered[key] {
			t.Errorf("isolation table lists %s, which is not a route any more", key)
		}
	}

	// B is untouched.
	ctx := context.Background()
	members, err := env.Store.ListMembers(ctx, tt.b.ID)
	if err != nil {
		t.Fatalf("list B's members: %v", err)
	}
	roles := map[string]rbac.Role{}
	for _, m := range members {
		roles[m.UserID] = m.Role
	}
	if len(members) != 2 || roles[tt.ownerB.ID] != rbac.Owner || roles[tt.memberB.ID] != rbac.Member {
		t.Errorf("B's members changed: %+v, want %s owner and %s member", members, tt.ownerB.Email, tt.memberB.Email)
	}
	tok, err := env.Store.APITokenByID(ctx, tt.b.ID, tt.tokenIDB)
	if err != nil || tok.RevokedAt != nil {
		t.Errorf("B's token changed: %+v %v", tok, err)
	}
	invs, _ := env.Store.ListInvitations(ctx, tt.b.ID)
	if len(invs) != 1 {
		t.Errorf("B's invitation changed: %+v", invs)
	}
	// B's token still works in B, and only there.
	if r := env.Do(http.MethodGet, "/api/v1/orgs/org-b/members", tt.tokenB, nil); r.Status != 200 {
		t.Errorf("B's token in B: %d %s", r.Status, r.Body)
	}
	if r := env.Do(http.MethodGet, "/api/v1/orgs/org-a/members", tt.tokenB, nil); r.Status != 404 {
		t.Errorf("B's token in A: %d %s", r.Status, r.Body)
	}
}

// caller is one way of authenticating in the walk.
type caller struct {
	name   string
	token  string
	userID string
}

func (c caller) do(env *platformtest.Env, method, path string, body any) platformtest.Response {
	if c.token != "" {
		return env.Do(method, path, c.token, body)
	}
	return env.DoWithHeader(method, path, testUserHeader, c.userID, body)
}

// TestPermissionsEnforcedOnEveryRoute calls every organization route with
// every role and expects 403 exactly where rbac denies the permission.
func TestPermissionsEnforcedOnEveryRoute(t *testing.T) {
	env := platformtest.New(t)
	owner := env.User("owner@example.com")
	org := env.Org("perm", owner)
	for _, role := range rbac.Roles {
		u := owner
		if role != rbac.Owner {
			u = env.Member(org, string(role)+"@example.com", role)
		}
		token := env.Token(org, u)
		for _, rt := range env.Server.Routes() {
			if !rt.OrgRoute() {
				continue
			}
			// Resource IDs that do not exist: an allowed call answers 404
			// for the resource, a denied one 403 before looking.
			path := strings.NewReplacer(":org", org.Slug, ":user", "usr_none", ":invitation", "inv_none", ":token", "tok_none").Replace(rt.Path)
			r := env.Do(rt.Method, path, token, "{}")
			denied := r.Status == http.StatusForbidden && r.Error().Code == "forbidden"
			if want := !rbac.Can(role, rt.Permission); denied != want {
				t.Errorf("%s: %s %s = %d %s; want denied=%v (needs %s)", role, rt.Method, rt.Path, r.Status, r.Body, want, rt.Permission)
			}
		}
	}
}
