package fleete2e

import (
	"os"
	"testing"

	"github.com/thinlab/thinlab/platform/platformtest"
)

// agentChildEnv, when set, makes this test binary run a real agent from
// the JSON configuration file it names instead of running tests (see
// startAgentChild): an agent in its own process, which the test can kill
// with SIGKILL in the middle of an operation.
const agentChildEnv = "THINLAB_FLEETE2E_AGENT_CONFIG"

func TestMain(m *testing.M) {
	if path := os.Getenv(agentChildEnv); path != "" {
		os.Exit(runAgentChild(path))
	}
	platformtest.Main(m)
}
