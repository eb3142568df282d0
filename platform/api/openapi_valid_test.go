package api_test

import (
	"testing"

	"github.com/thinlab/thinlab/internal/openapitest"
	"github.com/thinlab/thinlab/platform/api"
)

// The document served at /api/v1/openapi.json (the route returns exactly
// these bytes).
func TestOpenAPIIsValid(t *testing.T) {
	openapitest.Validate(t, api.OpenAPI())
}

func TestOpenAPIClientCompiles(t *testing.T) {
	openapitest.ClientCompiles(t, api.OpenAPI(), ".json")
}
