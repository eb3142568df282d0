package api_test

import (
	"testing"

	"github.com/thinlab/thinlab/platform/platformtest"
)

func TestMain(m *testing.M) {
	if runLoadGenerator() { // the benchmark's second process
		return
	}
	platformtest.Main(m)
}
