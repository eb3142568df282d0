package tunnele2e

import (
	"os"
	"testing"
)

// childModeEnv selects what a re-executed copy of this test binary does
// instead of running tests: "agent" (one agent tunnel client that emits
// events until it is killed, failover_test.go) or "fleet" (many idle
// agent tunnel clients, fleetbench_test.go). The parent passes the rest
// in the environment and keeps the child's stdin open: the child exits
// when it closes, so a parent that dies leaves nothing behind.
const childModeEnv = "THINLAB_TUNNELE2E_CHILD"

func TestMain(m *testing.M) {
	switch os.Getenv(childModeEnv) {
	case "":
		os.Exit(m.Run())
	case "agent":
		os.Exit(runEmittingAgentChild())
	case "fleet":
		os.Exit(runFleetChild())
	default:
		_, _ = os.Stderr.WriteString(childModeEnv + " must be agent or fleet\n")
		os.Exit(2)
	}
}
