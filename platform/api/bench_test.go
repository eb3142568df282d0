package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/thinlab/thinlab/platform/platformtest"
	"github.com/thinlab/thinlab/platform/rbac"
)

// Environment of the load generator process.
const (
	envLoadURL      = "THINLAB_PLATFORM_LOADGEN_URL"
	envLoadToken    = "THINLAB_PLATFORM_LOADGEN_TOKEN"
	envLoadOrg      = "THINLAB_PLATFORM_LOADGEN_ORG"
	envLoadRate     = "THINLAB_PLATFORM_LOADGEN_RATE"
	envLoadDuration = "THINLAB_PLATFORM_LOADGEN_DURATION"
)

type loadResult struct {
	Requests int     `json:"requests"`
	Errors   int     `json:"errors"`
	P50ms    float64 `json:"p50_ms"`
	P99ms    float64 `json:"p99_ms"`
	Seconds  float64 `json:"seconds"`
}

// BenchmarkPlatformAPI starts a platform server (platformtest: real
// PostgreSQL) and drives it from a second process (this test binary
// re-executed as a load generator) at a fixed rate for a fixed time with a
// mix of list calls (members, tokens, audit) and invitation creation over
// loopback with a bearer token. Run with -benchtime 1x.
func BenchmarkPlatformAPI(b *testing.B) {
	env := platformtest.New(b)
	owner := env.User("owner@bench.example")
	org := env.Org("bench", owner)
	for i := range 20 {
		env.Member(org, fmt.Sprintf("m%02d@bench.example", i), rbac.Member)
	}
	token := env.Token(org, owner)
	rate, duration := "200", "10s"
	if v := os.Getenv(envLoadRate); v != "" {
		rate = v
	}
	if v := os.Getenv(envLoadDuration); v != "" {
		duration = v
	}
	for i := 0; i < b.N; i++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$") //nolint:gosec // G702: re-runs this test binary as the load generator
		cmd.Env = append(os.Environ(), envLoadURL+"="+env.URL, envLoadToken+"="+token, envLoadOrg+"="+org.Slug,
			envLoadRate+"="+rate, envLoadDuration+"="+duration)
		var stdout bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			b.Fatalf("load generator: %v\n%s", err, stdout.String())
		}
		var res loadResult
		if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
			b.Fatalf("load generator output %q: %v", stdout.String(), err)
		}
		if res.Errors > 0 {
			b.Fatalf("%d of %d requests failed", res.Errors, res.Requests)
		}
		fmt.Printf("BENCH platform_api_p50 %.2f ms\n", res.P50ms)
		fmt.Printf("BENCH platform_api_p99 %.2f ms\n", res.P99ms)
		fmt.Printf("BENCH platform_api_rps %.1f req/s\n", float64(res.Requests)/res.Seconds)
	}
}

// runLoadGenerator is the benchmark's second process: when the load
// environment is set it sends the request mix at the given rate, prints a
// loadResult as JSON and exits.
func runLoadGenerator() bool {
	base := os.Getenv(envLoadURL)
	if base == "" {
		return false
	}
	token, org := os.Getenv(envLoadToken), os.Getenv(envLoadOrg)
	rate, err := strconv.Atoi(os.Getenv(envLoadRate))
	if err != nil || rate <= 0 {
		fmt.Fprintln(os.Stderr, envLoadRate, "must be a positive number")
		os.Exit(2)
	}
	duration, err := time.ParseDuration(os.Getenv(envLoadDuration))
	if err != nil {
		fmt.Fprintln(os.Stderr, envLoadDuration, err)
		os.Exit(2)
	}
	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{MaxIdleConns: 128, MaxIdleConnsPerHost: 128},
	}
	prefix := base + "/api/v1/orgs/" + org
	// The mix, in tenths: 3 members, 2 tokens, 3 audit pages, 2 invitations
	// created (API tokens cannot create tokens).
	mix := []struct{ method, url, body string }{
		{"GET", prefix + "/members", ""},
		{"GET", prefix + "/members", ""},
		{"GET", prefix + "/members", ""},
		{"GET", prefix + "/tokens", ""},
		{"GET", prefix + "/tokens", ""},
		{"GET", prefix + "/audit?limit=100", ""},
		{"GET", prefix + "/audit?limit=100&action=token.", ""},
		{"GET", prefix + "/audit?limit=100", ""},
		{"POST", prefix + "/invitations", `{"email":"bench@example.com","role":"viewer"}`},
		{"POST", prefix + "/invitations", `{"email":"bench@example.com","role":"viewer"}`},
	}
	var (
		mu        sync.Mutex
		latencies []time.Duration
		errors    int
		wg        sync.WaitGroup
	)
	send := func(i int) {
		defer wg.Done()
		m := mix[i%len(mix)]
		var body io.Reader
		if m.body != "" {
			body = bytes.NewReader([]byte(m.body))
		}
		// Background: the load generator is its own process, without a testing.TB.
		req, _ := http.NewRequestWithContext(context.Background(), m.method, m.url, body)
		req.Header.Set("Authorization", "Bearer "+token)
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		start := time.Now()
		resp, err := client.Do(req)
		ok := err == nil && resp.StatusCode < http.StatusMultipleChoices
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body) // drained to reuse the connection; the status was counted
			_ = resp.Body.Close()
		}
		d := time.Since(start)
		mu.Lock()
		latencies = append(latencies, d)
		if !ok {
			errors++
		}
		mu.Unlock()
	}
	// Open loop: requests start on schedule whether or not earlier ones
	// finished, so a slow server shows up as latency, not as a lower rate.
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	tick := time.NewTicker(interval)
	for i := 0; time.Since(start) < duration; i++ {
		wg.Add(1)
		go send(i)
		<-tick.C
	}
	tick.Stop()
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(latencies)
	pct := func(p float64) float64 {
		if len(latencies) == 0 {
			return 0
		}
		idx := int(p * float64(len(latencies)-1))
		return float64(latencies[idx].Microseconds()) / 1000
	}
	if err := json.NewEncoder(os.Stdout).Encode(loadResult{
		Requests: len(latencies), Errors: errors, P50ms: pct(0.50), P99ms: pct(0.99), Seconds: elapsed.Seconds(),
	}); err != nil {
		fmt.Fprintln(os.Stderr, "load generator: write the result:", err)
		os.Exit(1)
	}
	os.Exit(0)
	return true
}
