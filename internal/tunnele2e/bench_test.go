package tunnele2e

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/thinlab/thinlab/internal/tlstest"
	"github.com/thinlab/thinlab/sdk/agentapi"
)

// BenchmarkTunnelOverhead measures the latency of one API request through
// the tunnel (platform hub -> websocket over TLS -> yamux -> the agent's
// handler) against the same request straight to the handler on loopback,
// and reports the difference of the medians and of the 99th percentiles
// (BENCH tunnel_overhead_p50 / tunnel_overhead_p99, ms).
//
//	go test -run '^$' -bench BenchmarkTunnelOverhead -benchtime 4x ./internal/tunnele2e/
func BenchmarkTunnelOverhead(b *testing.B) {
	files := tlstest.New(b)
	db := newPlatformDB()
	p := startPlatform(b, db, files, "")
	startAgent(b, agentConfig{url: p.URL, stateDir: b.TempDir(), caFile: files.CA})
	waitFor(b, "enrollment", func() bool { db.mu.Lock(); defer db.mu.Unlock(); return len(db.creds) == 1 })
	id := db.agentID(b)
	waitFor(b, "the session", func() bool { return connected(p, id) })

	direct := httptest.NewServer(echoAPI())
	b.Cleanup(direct.Close)
	directClient := direct.Client()
	tunnelClient := &http.Client{Transport: p.hub.RoundTripper(id)}

	call := func(c *http.Client, url string) time.Duration {
		req, err := http.NewRequestWithContext(b.Context(), http.MethodGet, url, nil)
		if err != nil {
			b.Fatal(err)
		}
		req.Header.Set(agentapi.VerificationTokenHeader, agentAPIToken)
		start := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		took := time.Since(start)
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("%s: %s", url, resp.Status)
		}
		return took
	}
	// Warm both paths (connections, TLS is already up).
	for range 20 {
		call(tunnelClient, "http://agent/status")
		call(directClient, direct.URL+"/status")
	}
	var viaTunnel, straight []time.Duration
	b.ResetTimer()
	// Each iteration is a round of pairs, so that `make bench`
	// (-benchtime 1x) still gets percentiles of many requests.
	const pairs = 500
	for b.Loop() {
		for range pairs {
			viaTunnel = append(viaTunnel, call(tunnelClient, "http://agent/status"))
			straight = append(straight, call(directClient, direct.URL+"/status"))
		}
	}
	b.StopTimer()
	pct := func(d []time.Duration, q float64) float64 {
		s := slices.Clone(d)
		slices.Sort(s)
		return float64(s[min(len(s)-1, int(q*float64(len(s))))]) / float64(time.Millisecond)
	}
	p50, p99 := pct(viaTunnel, 0.5)-pct(straight, 0.5), pct(viaTunnel, 0.99)-pct(straight, 0.99)
	b.ReportMetric(p50, "tunnel_overhead_p50_ms")
	b.ReportMetric(p99, "tunnel_overhead_p99_ms")
	b.ReportMetric(pct(viaTunnel, 0.5), "tunnel_p50_ms")
	b.ReportMetric(pct(straight, 0.5), "direct_p50_ms")
	fmt.Printf("BENCH tunnel_overhead_p50 %.3f ms\n", p50)
	fmt.Printf("BENCH tunnel_overhead_p99 %.3f ms\n", p99)
}
