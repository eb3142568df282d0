// Package testenv marks the tests that need the real system: root, loop
// devices and mounts, PostgreSQL, Dex, Chromium, zfs-fuse or the QEMU VM.
// Under -short (make test-unit) they skip, so the quick loop runs only the
// tests that need none of it; make test runs without -short, where a skip
// fails the run (deploy/dev/testreport) and a missing precondition fails
// the test with how to fix it.
package testenv

import (
	"os"
	"testing"
)

// NeedsSystem skips t under -short; what names what the test needs.
func NeedsSystem(t testing.TB, what string) {
	t.Helper()
	if testing.Short() {
		t.Skipf("-short: needs %s (make test runs it)", what)
	}
}

// NeedsRoot is NeedsSystem for tests that must run as root: without
// -short it fails t, with the fix, unless the process is root.
func NeedsRoot(t testing.TB, what string) {
	t.Helper()
	NeedsSystem(t, what)
	if os.Getuid() != 0 {
		t.Fatalf("needs %s: run the tests as root (make test does)", what)
	}
}
