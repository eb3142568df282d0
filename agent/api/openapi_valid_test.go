package api

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/internal/openapitest"
)

// servedOpenAPI is the document as clients fetch it.
func servedOpenAPI(t *testing.T) []byte {
	t.Helper()
	rec := httptest.NewRecorder()
	New(Options{Config: config.Default()}).Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/openapi.yaml", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /openapi.yaml = %d, want 200", rec.Code)
	}
	return rec.Body.Bytes()
}

func TestOpenAPIIsValid(t *testing.T) {
	openapitest.Validate(t, servedOpenAPI(t))
}

func TestOpenAPIClientCompiles(t *testing.T) {
	openapitest.ClientCompiles(t, servedOpenAPI(t), ".yaml")
}
