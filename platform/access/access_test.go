package access

import (
	"net/http"
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
