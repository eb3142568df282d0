package access

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/rbac"
)

// Mount refuses routes whose declaration would leave them unguarded or
// unaudited, so no route can skip the chain by accident.
func TestMountRefusesIncompleteRoutes(t *testing.T) {
	h := func(*gin.Context) {}
	cases := []struct {
		route Route
		want  string
	}{
		{Route{Method: http.MethodGet, Path: "/api/v1/orgs/:org/things", Handler: h}, "must declare a permission"},
		{Route{Method: http.MethodGet, Path: "/api/v1/things", Permission: rbac.AgentRead, Handler: h}, "needs an :org"},
		{Route{Method: http.MethodPost, Path: "/api/v1/orgs/:org/things", Permission: rbac.AgentManage, Handler: h}, "audit action"},
		{Route{Method: http.MethodGet, Path: "/api/v1/orgs/:org/x", Public: true, Permission: rbac.AgentRead, Handler: h}, "public route"},
		{Route{Method: http.MethodGet, Path: "/x"}, "no handler"},
	}
	g := &Guard{}
	for _, tc := range cases {
		err := g.Mount(gin.New(), []Route{tc.route})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s %s: %v, want %q", tc.route.Method, tc.route.Path, err, tc.want)
		}
	}
	ok := []Route{
		{Method: http.MethodGet, Path: "/healthz", Public: true, Handler: h},
		{Method: http.MethodPost, Path: "/login", Public: true, Handler: h},
		{Method: http.MethodGet, Path: "/api/v1/me", Handler: h},
		{Method: http.MethodDelete, Path: "/api/v1/orgs/:org/things/:id", Permission: rbac.AgentManage, Action: "thing.delete", Handler: h},
	}
	if err := (&Guard{Audit: nil}).Mount(gin.New(), ok[:3]); err != nil {
		t.Fatal(err)
	}
	for _, r := range ok {
		if err := r.Validate(); err != nil {
			t.Errorf("%s %s: %v", r.Method, r.Path, err)
		}
	}
}

// TestHandlerWithoutItsChainFailsLoudly: a handler that reads the
// organization, role or caller on a route the chain did not authorize gets
// a panic naming the route (answered 500 by the recovery), never a nil it
// could run tenant queries with.
func TestHandlerWithoutItsChainFailsLoudly(t *testing.T) {
	gin.SetMode(gin.ReleaseMode)
	for name, read := range map[string]func(*gin.Context){
		"Org":    func(c *gin.Context) { _ = Org(c) },
		"OrgID":  func(c *gin.Context) { _ = OrgID(c) },
		"Role":   func(c *gin.Context) { _ = Role(c) },
		"Caller": func(c *gin.Context) { _ = Caller(c) },
		"Member": func(c *gin.Context) { _ = Member(c) },
		"Token":  func(c *gin.Context) { _ = Token(c) },
	} {
		t.Run(name, func(t *testing.T) {
			var recovered string
			e := gin.New()
			e.Use(gin.CustomRecoveryWithWriter(nil, func(c *gin.Context, v any) {
				recovered = fmt.Sprint(v)
				c.AbortWithStatus(http.StatusInternalServerError)
			}))
			e.GET("/o/:org/things", func(c *gin.Context) {
				read(c)
				c.Status(http.StatusOK)
			})
			w := httptest.NewRecorder()
			e.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/o/acme/things", nil))
			if w.Code != http.StatusInternalServerError {
				t.Fatalf("HTTP %d, want 500 from the panic", w.Code)
			}
			if !strings.Contains(recovered, "/o/:org/things") || !strings.Contains(recovered, "access") {
				t.Fatalf("panic %q does not name the route and the access chain", recovered)
			}
		})
	}
}
