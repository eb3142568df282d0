package agent

import (
	"strings"
	"testing"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/internal/logtest"
)

func TestWarnUnusedPlatform(t *testing.T) {
	const secret = "enroll-secret-4f2a"
	for _, tc := range []struct {
		name     string
		platform config.Platform
		warn     bool
	}{
		{"unset", config.Platform{}, false},
		{"set", config.Platform{URL: "https://thinlab.example.com", Token: secret}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs := &logtest.Buffer{}
			warnUnusedPlatform(&config.Config{Platform: tc.platform}, logs.Logger())
			got := strings.Contains(logs.String(), "platform section is validated but not used")
			if got != tc.warn {
				t.Fatalf("warning logged = %v, want %v; log:\n%s", got, tc.warn, logs.String())
			}
			if strings.Contains(logs.String(), secret) {
				t.Fatalf("the platform token reached the log:\n%s", logs.String())
			}
		})
	}
}
