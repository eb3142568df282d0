package cli

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestPlatformHealth: thinlab platform health (the platform image's
// HEALTHCHECK) exits 0 and prints the version for 200 from /healthz, and
// exits 1 with the answer for 503 (the database unreachable) and for a
// server that is not there.
func TestPlatformHealth(t *testing.T) {
	status := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(status)
		if status == http.StatusOK {
			_, _ = w.Write([]byte(`{"status":"ok","version":"v1.2.3"}`))
		} else {
			_, _ = w.Write([]byte(`{"status":"unavailable","database":"unreachable","version":"v1.2.3"}`))
		}
	}))
	defer srv.Close()

	code, out, errOut := runCLI(t, "", "platform", "health", "--url", srv.URL+"/")
	if code != 0 || !strings.Contains(out, "ok (version v1.2.3)") {
		t.Fatalf("healthy: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	status = http.StatusServiceUnavailable
	code, _, errOut = runCLI(t, "", "platform", "health", "--url", srv.URL)
	if code != 1 || !strings.Contains(errOut, "503") || !strings.Contains(errOut, "unreachable") {
		t.Fatalf("database down: exit %d, stderr %q", code, errOut)
	}
	srv.Close()
	code, _, errOut = runCLI(t, "", "platform", "health", "--url", srv.URL)
	if code != 1 || errOut == "" {
		t.Fatalf("no server: exit %d, stderr %q", code, errOut)
	}
}
