// Package openapiclient keeps the runtime of oapi-codegen's clients in
// this module: the OpenAPI tests (internal/openapitest) generate a client
// from the agent's and the platform's documents into a temporary package
// here and build it, to prove the documents make a client that compiles.
package openapiclient

import _ "github.com/oapi-codegen/runtime" // needed by the generated clients
