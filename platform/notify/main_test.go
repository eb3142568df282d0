package notify_test

import (
	"os"
	"testing"

	"github.com/thinlab/thinlab/platform/platformtest"
)

func TestMain(m *testing.M) {
	// The kill test runs delivery workers as separate processes of this
	// binary (workerChildEnv), so that it can SIGKILL one mid-delivery.
	if cfg := os.Getenv(workerChildEnv); cfg != "" {
		os.Exit(runWorkerChild(cfg))
	}
	platformtest.Main(m)
}
