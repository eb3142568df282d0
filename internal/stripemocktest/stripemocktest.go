// Package stripemocktest runs the real stripe-mock (bin/stripe-mock, built
// by make deps; v0.190.0 serves billing meter events and validates
// request shapes) for a test, behind a recording proxy: the test sees
// every request the Stripe client sent (path, Idempotency-Key, form
// values) and can make the next requests to a path fail, as Stripe being
// down would.
package stripemocktest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/thinlab/thinlab/internal/testenv"
)

// Request is one request that reached the proxy.
type Request struct {
	Method         string
	Path           string
	IdempotencyKey string
	Form           url.Values
	// Status is what the client got (500 for an injected failure).
	Status int
}

// Mock is a running stripe-mock behind the recording proxy.
type Mock struct {
	// URL is the proxy's address: point stripe-go (billing.apiURL) here.
	URL string

	mu       sync.Mutex
	requests []Request
	failures map[string]int // path -> how many of the next requests fail
}

// Binary finds bin/stripe-mock of the repository (THINLAB_STRIPE_MOCK_BIN
// overrides it).
func Binary() (string, error) {
	if p := os.Getenv("THINLAB_STRIPE_MOCK_BIN"); p != "" {
		return p, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			p := filepath.Join(dir, "bin", "stripe-mock")
			if _, err := os.Stat(p); err != nil {
				return "", fmt.Errorf("stripe-mock binary %s is missing: run make deps", p)
			}
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("stripe-mock not found (no go.mod above the working directory): run make deps")
		}
		dir = parent
	}
}

// Start runs stripe-mock and the proxy for the test, stopped at cleanup.
// It fails the test (never skips) when the binary is missing.
func Start(t testing.TB) *Mock {
	t.Helper()
	testenv.NeedsSystem(t, "the stripe-mock daemon")
	bin, err := Binary()
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()                                // stripe-mock listens on it next
	cmd := exec.Command(bin, "-http-addr", addr) //nolint:gosec // the repository's own tool
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatalf("start stripe-mock: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	// Drain its output (it logs every request) and wait for the listener.
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stripe-mock did not listen on %s within 30 s", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	target, _ := url.Parse("http://" + addr)
	m := &Mock{failures: map[string]int{}}
	rp := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		form, _ := url.ParseQuery(string(body))
		req := Request{Method: r.Method, Path: r.URL.Path, IdempotencyKey: r.Header.Get("Idempotency-Key"), Form: form, Status: http.StatusOK}
		m.mu.Lock()
		fail := m.failures[r.URL.Path] > 0
		if fail {
			m.failures[r.URL.Path]--
			req.Status = http.StatusInternalServerError
		}
		m.requests = append(m.requests, req)
		m.mu.Unlock()
		if fail {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = io.WriteString(w, `{"error":{"type":"api_error","message":"injected failure (stripemocktest)"}}`)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	m.URL = srv.URL
	return m
}

// FailNext makes the next n requests to path answer 500.
func (m *Mock) FailNext(path string, n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.failures[path] = n
}

// Requests returns the requests to paths starting with prefix, in order.
func (m *Mock) Requests(prefix string) []Request {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Request
	for _, r := range m.requests {
		if strings.HasPrefix(r.Path, prefix) {
			out = append(out, r)
		}
	}
	return out
}
