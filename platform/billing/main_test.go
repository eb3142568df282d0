package billing_test

import (
	"testing"

	"github.com/thinlab/thinlab/platform/platformtest"
)

func TestMain(m *testing.M) { platformtest.Main(m) }
