package cli

import (
	"testing"

	"github.com/thinlab/thinlab/platform/platformtest"
)

// TestMain stops the platform's shared test database cluster (started by
// the tests that run a platform) when the tests are done.
func TestMain(m *testing.M) { platformtest.Main(m) }
