// Package mailpittest runs a real SMTP server for tests: Mailpit (built by
// make deps into bin/mailpit), with STARTTLS required (a certificate from
// internal/tlstest), SMTP AUTH checked against a password file, and its
// HTTP API to read what arrived.
package mailpittest

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/thinlab/thinlab/internal/testenv"
	"github.com/thinlab/thinlab/internal/tlstest"
)

// Credentials the server accepts.
const (
	Username = "thinlab"
	Password = "mailpit-test-password-5d1c"
)

// Server is one running Mailpit.
type Server struct {
	Host   string // 127.0.0.1
	Port   int    // SMTP
	API    string // http://127.0.0.1:PORT
	CAFile string // verifies the SMTP certificate
	t      testing.TB
}

// Start runs Mailpit for t, stopped (by PID) at cleanup.
func Start(t testing.TB) *Server {
	t.Helper()
	testenv.NeedsSystem(t, "Mailpit (bin/mailpit, built by make deps)")
	bin := binary(t)
	tlsFiles := tlstest.New(t)
	dir := t.TempDir()
	auth := filepath.Join(dir, "smtp-auth")
	if err := os.WriteFile(auth, []byte(Username+":"+Password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	smtpPort, httpPort := freePort(t), freePort(t)
	s := &Server{Host: "127.0.0.1", Port: smtpPort, API: "http://127.0.0.1:" + strconv.Itoa(httpPort), CAFile: tlsFiles.CA, t: t}
	cmd := exec.Command(bin, //nolint:gosec // G204: the Mailpit binary of this checkout, with the test's own arguments
		"--smtp", "127.0.0.1:"+strconv.Itoa(smtpPort), "--listen", "127.0.0.1:"+strconv.Itoa(httpPort),
		"--database", filepath.Join(dir, "mailpit.db"), "--max", "0",
		"--smtp-tls-cert", tlsFiles.Cert, "--smtp-tls-key", tlsFiles.Key, "--smtp-require-starttls",
		"--smtp-auth-file", auth, "--smtp-disable-rdns", "--disable-version-check", "--quiet",
	)
	log, err := os.Create(filepath.Join(dir, "mailpit.log")) //nolint:gosec // G304: in the test's own temporary directory
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start mailpit: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill() // by PID; it may have exited already
		_ = cmd.Wait()         // reaps it; the exit status of a killed test server says nothing
		if t.Failed() {
			if b, err := os.ReadFile(log.Name()); err == nil {
				t.Logf("mailpit log:\n%s", b)
			}
		}
		_ = log.Close()
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(s.API + "/readyz") //nolint:noctx // a loopback readiness probe bounded by the loop
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("mailpit did not become ready at %s: %v", s.API, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return s
}

func binary(t testing.TB) string {
	_, file, _, _ := runtime.Caller(0)
	bin := filepath.Join(filepath.Dir(file), "..", "..", "bin", "mailpit")
	if _, err := os.Stat(bin); err != nil {
		if p, err := exec.LookPath("mailpit"); err == nil {
			return p
		}
		t.Fatalf("mailpit not found at %s: run make deps", bin)
	}
	return bin
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port
}

// Address is one mailbox of a message.
type Address struct {
	Name    string `json:"Name"`
	Address string `json:"Address"`
}

// Message is a stored message as the API lists it.
type Message struct {
	ID        string    `json:"ID"`
	MessageID string    `json:"MessageID"`
	From      Address   `json:"From"`
	To        []Address `json:"To"`
	Subject   string    `json:"Subject"`
	Snippet   string    `json:"Snippet"`
	Created   time.Time `json:"Created"`
}

// Messages lists every stored message (newest first), at most 1000.
func (s *Server) Messages() []Message {
	s.t.Helper()
	var out struct {
		Messages []Message `json:"messages"`
	}
	s.get("/api/v1/messages?limit=1000", &out)
	return out.Messages
}

// Search lists the messages matching a Mailpit search query (such as
// "to:ann@example.com").
func (s *Server) Search(query string) []Message {
	s.t.Helper()
	var out struct {
		Messages []Message `json:"messages"`
	}
	s.get("/api/v1/search?limit=1000&query="+url.QueryEscape(query), &out)
	return out.Messages
}

// Text returns the plain-text body of message id.
func (s *Server) Text(id string) string {
	s.t.Helper()
	var out struct {
		Text string `json:"Text"`
	}
	s.get("/api/v1/message/"+url.PathEscape(id), &out)
	return out.Text
}

// WaitFor polls until at least n messages are stored and returns them;
// the bound only keeps a broken test from hanging.
func (s *Server) WaitFor(n int) []Message {
	s.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ms := s.Messages()
		if len(ms) >= n {
			return ms
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("mailpit holds %d messages after 30s, want at least %d", len(ms), n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *Server) get(path string, dst any) {
	s.t.Helper()
	resp, err := http.Get(s.API + path) //nolint:noctx // the loopback test server
	if err != nil {
		s.t.Fatalf("mailpit API %s: %v", path, err)
	}
	defer func() { _ = resp.Body.Close() }() // read in full below
	if resp.StatusCode != http.StatusOK {
		s.t.Fatalf("mailpit API %s: HTTP %d", path, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(dst); err != nil {
		s.t.Fatalf("mailpit API %s: %v", path, fmt.Errorf("decode: %w", err))
	}
}
