// Package version holds the version of this build. `make build` stamps it:
//
//	go build -ldflags "-X github.com/thinlab/thinlab/internal/version.Version=$(git describe --tags --always --dirty)"
//
// A plain `go build` or `go test` leaves "dev". It is shown by `thinlab
// version`, the agent's /healthz and /status, and the platform's /healthz.
package version

// Version is replaced at link time; see the package comment.
var Version = "dev"
