//go:build tools

// Package walg pins WAL-G for the physical retrieval tests. It is its own
// module: WAL-G v0.2.20 (the only version the Go module proxy serves)
// needs cgo and an old dependency graph that must not mix with tools/go.mod.
// deploy/dev/deps.sh builds it once per hash of this module into the tools
// cache.
package walg

import _ "github.com/wal-g/wal-g/main/pg"
