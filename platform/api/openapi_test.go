package api_test

import (
	"encoding/json"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/thinlab/thinlab/platform/api"
	"github.com/thinlab/thinlab/platform/platformtest"
)

type openAPIDoc struct {
	OpenAPI string                                `json:"openapi"`
	Paths   map[string]map[string]json.RawMessage `json:"paths"`
}

type openAPIOp struct {
	OperationID string `json:"operationId"`
	Permission  string `json:"x-permission"`
}

var ginParam = regexp.MustCompile(`[:*]([a-z]+)`)

// TestOpenAPICoversEveryRoute: every /api/v1 route of the route table is in
// the embedded OpenAPI document with the same permission, and the document
// names no route that does not exist. The served copy is the embedded one.
func TestOpenAPICoversEveryRoute(t *testing.T) {
	env := platformtest.New(t)
	r := env.Do(http.MethodGet, "/api/v1/openapi.json", "", nil)
	if r.Status != http.StatusOK || string(r.Body) != string(api.OpenAPI()) {
		t.Fatalf("GET /api/v1/openapi.json: %d", r.Status)
	}
	var doc openAPIDoc
	if err := json.Unmarshal(r.Body, &doc); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi version %q", doc.OpenAPI)
	}
	documented := map[string]openAPIOp{}
	for path, item := range doc.Paths {
		for method, raw := range item {
			if method == "parameters" {
				continue
			}
			var op openAPIOp
			if err := json.Unmarshal(raw, &op); err != nil {
				t.Fatal(err)
			}
			if op.OperationID == "" {
				t.Errorf("%s %s has no operationId", method, path)
			}
			documented[strings.ToUpper(method)+" "+path] = op
		}
	}
	seen := map[string]bool{}
	for _, rt := range env.Server.Routes() {
		if !strings.HasPrefix(rt.Path, api.Prefix+"/") {
			continue
		}
		key := rt.Method + " " + ginParam.ReplaceAllString(strings.TrimPrefix(rt.Path, api.Prefix), "{$1}")
		seen[key] = true
		op, ok := documented[key]
		if !ok {
			t.Errorf("route %s %s is missing from openapi.json (as %s)", rt.Method, rt.Path, key)
			continue
		}
		if op.Permission != string(rt.Permission) {
			t.Errorf("%s: openapi x-permission %q, route needs %q", key, op.Permission, rt.Permission)
		}
	}
	var stale []string
	for key := range documented {
		if !seen[key] {
			stale = append(stale, key)
		}
	}
	sort.Strings(stale)
	if len(stale) > 0 {
		t.Errorf("openapi.json documents routes that do not exist: %v", stale)
	}
}
