package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/config"
)

func TestPlatformTunnelNeedsEnrollTokenOrCredential(t *testing.T) {
	a := &Agent{cfg: &config.Config{StateDir: t.TempDir(), Platform: config.Platform{URL: "https://thinlab.example.com"}}}
	_, err := a.newPlatformTunnel("test", "inst", time.Now())
	if err == nil || !strings.Contains(err.Error(), "platform.enrollToken") {
		t.Fatalf("err = %v, want one naming platform.enrollToken", err)
	}
	a.cfg.Platform.URL = ""
	if c, err := a.newPlatformTunnel("test", "inst", time.Now()); c != nil || err != nil {
		t.Fatalf("without platform.url: %v %v, want no tunnel and no error", c, err)
	}
}
