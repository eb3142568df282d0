package cli

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent"
	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/cli/clientconfig"
	"github.com/thinlab/thinlab/internal/logtest"
	"github.com/thinlab/thinlab/internal/tlstest"
	"github.com/thinlab/thinlab/sdk/agentapi"
)

func freeAddr(t *testing.T) (string, int) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr, port := l.Addr().String(), l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr, port
}

// TestAgentTLSAndMetricsAddress runs the real agent (agent.New: its own
// listener, TLS from server.tls, metrics on server.metricsAddress) on a
// real pool, and the CLI and SDK against it with and without the CA.
func TestAgentTLSAndMetricsAddress(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: loop devices and mounts: run the tests as root (make test does)")
	}
	isolate(t)
	files := tlstest.New(t)
	pool := clonetest.NewPool(t)
	cfg := clonetest.Config(t, pool, 2)
	_, port := freeAddr(t)
	cfg.Server.Port = port
	cfg.Server.TLS = config.TLS{CertFile: files.Cert, KeyFile: files.Key}
	cfg.Server.MetricsAddress, _ = freeAddr(t)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	logs := &logtest.Buffer{}
	ctx, cancel := context.WithCancel(t.Context())
	a, err := agent.NewWithOptions(ctx, agent.Options{Config: cfg, Pools: []storage.Pool{pool}, Logger: logs.Logger(), Version: "test"})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent.Run: %v", err)
		}
		clonetest.KillClones(pool)
	})
	url := "https://127.0.0.1:" + strconv.Itoa(port)
	tok := cfg.Server.VerificationToken

	// The CLI without the CA refuses the certificate and says what to set.
	code, _, errOut := runCLI(t, "", "status", "--url", url, "--token", tok)
	if code != 1 || !strings.Contains(errOut, "certificate") || !strings.Contains(errOut, "--ca-file") || !strings.Contains(errOut, "THINLAB_CA_FILE") {
		t.Fatalf("status without the CA: want exit 1 naming --ca-file and THINLAB_CA_FILE, got %d %q", code, errOut)
	}
	// With the CA from the flag, the variable or the context, it works.
	if code, out, errOut := runCLI(t, "", "status", "--url", url, "--token", tok, "--ca-file", files.CA); code != 0 || !strings.Contains(out, "OK") {
		t.Fatalf("status --ca-file: exit %d\n%s\n%s", code, out, errOut)
	}
	t.Setenv(clientconfig.EnvCAFile, files.CA)
	if code, _, errOut := runCLI(t, "", "status", "--url", url, "--token", tok); code != 0 {
		t.Fatalf("status with THINLAB_CA_FILE: exit %d %s", code, errOut)
	}
	t.Setenv(clientconfig.EnvCAFile, "")
	if code, _, errOut := runCLI(t, "", "context", "add", "tls", "--url", url, "--token", tok, "--ca-file", files.CA, "--use"); code != 0 {
		t.Fatalf("context add --ca-file: %d %s", code, errOut)
	}
	if code, _, errOut := runCLI(t, "", "clone", "list"); code != 0 {
		t.Fatalf("clone list with the context's ca-file: exit %d %s", code, errOut)
	}
	// A CA file that holds no certificate is a usage error naming it.
	if code, _, errOut := runCLI(t, "", "status", "--url", url, "--token", tok, "--ca-file", files.Key); code != 2 || !strings.Contains(errOut, files.Key) {
		t.Fatalf("--ca-file with a key: want exit 2 naming the file, got %d %q", code, errOut)
	}

	// The SDK: verified with the CA, refused without.
	hc, err := agentapi.NewHTTPClient(files.CA, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (&agentapi.Client{BaseURL: url, Token: tok, HTTPClient: hc}).Status(t.Context()); err != nil {
		t.Fatalf("SDK with the CA: %v", err)
	}
	_, err = (&agentapi.Client{BaseURL: url, Token: tok}).Status(t.Context())
	if err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Fatalf("SDK without the CA: want an unknown authority error, got %v", err)
	}

	// /metrics on the API needs the token; on metricsAddress it does not,
	// and that listener serves nothing else.
	get := func(c *http.Client, u, bearer string) (int, string) {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if err := resp.Body.Close(); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(b)
	}
	if code, _ := get(hc, url+"/metrics", ""); code != http.StatusUnauthorized {
		t.Fatalf("GET /metrics on the API without a token: want 401, got %d", code)
	}
	if code, body := get(hc, url+"/metrics", tok); code != http.StatusOK || !strings.Contains(body, "thinlab_agent_clones") {
		t.Fatalf("GET /metrics with Bearer: %d %.200s", code, body)
	}
	maddr := "http://" + a.MetricsAddr()
	if code, body := get(http.DefaultClient, maddr+"/metrics", ""); code != http.StatusOK || !strings.Contains(body, `thinlab_agent_clones{status="OK"} 0`) {
		t.Fatalf("GET /metrics on metricsAddress: %d %.200s", code, body)
	}
	if code, _ := get(http.DefaultClient, maddr+"/status", ""); code != http.StatusNotFound {
		t.Fatalf("GET /status on metricsAddress: want 404, got %d", code)
	}

	// An agent without a token (a config built in code, never validated)
	// does not start.
	bare := *cfg
	bare.Server.VerificationToken = ""
	bare.Server.TLS = config.TLS{}
	bare.Server.MetricsAddress = ""
	_, err = agent.NewWithOptions(t.Context(), agent.Options{Config: &bare, Pools: []storage.Pool{pool}, Logger: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), "server.verificationToken is empty") {
		t.Fatalf("agent without a token: want a server.verificationToken error, got %v", err)
	}
	if strings.Contains(logs.String(), tok) {
		t.Fatal("the token appears in the log")
	}
}
