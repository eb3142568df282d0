package api

import (
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/thinlab/thinlab/agent/config"
)

var pathParamRE = regexp.MustCompile(`[:*]([a-zA-Z]+)`)

// TestOpenAPICoversEveryRoute checks that each route of the router is in
// the embedded OpenAPI document (bare path; /api mirrors the same), and
// that the document lists no route the router lacks.
func TestOpenAPICoversEveryRoute(t *testing.T) {
	var doc struct {
		Paths map[string]map[string]any `yaml:"paths"`
	}
	if err := yaml.Unmarshal(openAPISpec, &doc); err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	s := New(Options{Config: config.Default()})
	seen := map[string]bool{}
	for _, r := range s.router.Routes() {
		p := strings.TrimPrefix(r.Path, "/api")
		p = pathParamRE.ReplaceAllString(p, "{$1}")
		method := strings.ToLower(r.Method)
		seen[method+" "+p] = true
		ops, ok := doc.Paths[p]
		if !ok {
			t.Errorf("route %s %s (%s) is not in openapi.yaml", r.Method, r.Path, p)
			continue
		}
		if _, ok := ops[method]; !ok {
			t.Errorf("route %s %s: openapi.yaml has path %s without %s", r.Method, r.Path, p, method)
		}
	}
	for p, ops := range doc.Paths {
		for m := range ops {
			if m == "parameters" {
				continue
			}
			if !seen[m+" "+p] {
				t.Errorf("openapi.yaml documents %s %s, which the router does not serve", m, p)
			}
		}
	}
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/openapi.yaml", nil))
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "openapi: 3.0.3") {
		t.Fatalf("GET /openapi.yaml: %d", rec.Code)
	}
}
