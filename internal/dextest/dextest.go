// Package dextest runs the real Dex identity provider (bin/dex, built by
// `make deps`) for tests and the demo: memory storage, the password
// database with static users, one static client, no approval screen. It
// listens on a random 127.0.0.1 port and is stopped by PID at cleanup.
package dextest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
	"gopkg.in/yaml.v3"

	"github.com/thinlab/thinlab/internal/testenv"
)

// User is a static password user of the Dex password database. Dex signs
// its users in by email.
type User struct {
	Email    string
	Password string
	Username string
	// UserID becomes the ID token's subject (through Dex's connector
	// encoding); random when empty.
	UserID string
}

// Options configure one Dex instance.
type Options struct {
	// RedirectURIs of the static client, e.g. the platform's
	// http://127.0.0.1:PORT/auth/callback/dex. Required.
	RedirectURIs []string
	// Users of the password database; one default user when empty.
	Users []User
	// ClientID of the static client; "thinlab" when empty.
	ClientID string
}

// Dex is a running Dex server.
type Dex struct {
	Issuer       string
	ClientID     string
	ClientSecret string
	Users        []User
	// Dir holds config.yaml and dex.log.
	Dir string

	cmd    *exec.Cmd
	exited chan struct{}
}

// DefaultUser is the user created when Options.Users is empty.
var DefaultUser = User{Email: "ada@example.com", Password: "correct-horse-battery", Username: "ada"}

// Binary finds bin/dex of the repository (THINLAB_DEX_BIN overrides it).
func Binary() (string, error) {
	if p := os.Getenv("THINLAB_DEX_BIN"); p != "" {
		return p, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			p := filepath.Join(dir, "bin", "dex")
			if _, err := os.Stat(p); err != nil {
				return "", fmt.Errorf("dex binary %s is missing: run make deps", p)
			}
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("dex binary not found (no go.mod above the working directory): run make deps")
		}
		dir = parent
	}
}

// Start runs Dex for the test and stops it at cleanup. It fails the test
// (never skips) when bin/dex is missing.
func Start(t testing.TB, opts Options) *Dex {
	t.Helper()
	testenv.NeedsSystem(t, "the Dex daemon")
	bin, err := Binary()
	if err != nil {
		t.Fatal(err)
	}
	if len(opts.RedirectURIs) == 0 {
		t.Fatal("dextest.Options.RedirectURIs is empty: pass the platform's OIDC callback URL")
	}
	d, err := start(bin, t.TempDir(), opts)
	if d != nil {
		t.Cleanup(d.Stop)
	}
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func start(bin, dir string, opts Options) (*Dex, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	d := &Dex{
		Issuer:       fmt.Sprintf("http://127.0.0.1:%d/dex", port),
		ClientID:     opts.ClientID,
		ClientSecret: randomHex(16),
		Users:        opts.Users,
		Dir:          dir,
	}
	if d.ClientID == "" {
		d.ClientID = "thinlab"
	}
	if len(d.Users) == 0 {
		d.Users = []User{DefaultUser}
	}
	cfg, err := d.config(port, opts.RedirectURIs)
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "dex.log"))
	if err != nil {
		return nil, err
	}
	// dex has its own copy of the descriptor once started; ours only
	// needs closing, and the log is read by name.
	defer func() { _ = logf.Close() }()
	d.cmd = exec.Command(bin, "serve", cfgPath)
	d.cmd.Stdout = logf
	d.cmd.Stderr = logf
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan error, 1)
	d.exited = make(chan struct{})
	go func() { exited <- d.cmd.Wait(); close(d.exited) }()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := waitReady(ctx, d.Issuer+"/.well-known/openid-configuration", exited); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "dex.log"))
		return d, fmt.Errorf("dex did not become ready: %w\n%s", err, tail(string(log), 2000))
	}
	return d, nil
}

// Stop kills Dex by its PID; safe to call twice.
func (d *Dex) Stop() {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	_ = syscall.Kill(d.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
	}
	d.cmd = nil
}

// LogContent returns what Dex logged so far (for failure messages).
func (d *Dex) LogContent() string {
	b, _ := os.ReadFile(filepath.Join(d.Dir, "dex.log"))
	return string(b)
}

type staticPassword struct {
	Email    string `yaml:"email"`
	Hash     string `yaml:"hash"`
	Username string `yaml:"username"`
	UserID   string `yaml:"userID"`
}

type staticClient struct {
	ID           string   `yaml:"id"`
	Secret       string   `yaml:"secret"`
	Name         string   `yaml:"name"`
	RedirectURIs []string `yaml:"redirectURIs"`
}

func (d *Dex) config(port int, redirectURIs []string) ([]byte, error) {
	var pws []staticPassword
	for i := range d.Users {
		u := &d.Users[i]
		if u.UserID == "" {
			u.UserID = randomHex(8)
		}
		if u.Username == "" {
			u.Username, _, _ = strings.Cut(u.Email, "@")
		}
		// Dex refuses hashes below bcrypt's default cost (10).
		hash, err := bcrypt.GenerateFromPassword([]byte(u.Password), bcrypt.DefaultCost)
		if err != nil {
			return nil, fmt.Errorf("hash password of %s: %w", u.Email, err)
		}
		pws = append(pws, staticPassword{Email: u.Email, Hash: string(hash), Username: u.Username, UserID: u.UserID})
	}
	cfg := map[string]any{
		"issuer":           d.Issuer,
		"storage":          map[string]any{"type": "memory"},
		"web":              map[string]any{"http": fmt.Sprintf("127.0.0.1:%d", port)},
		"oauth2":           map[string]any{"skipApprovalScreen": true},
		"logger":           map[string]any{"level": "info"},
		"enablePasswordDB": true,
		"staticPasswords":  pws,
		"staticClients": []staticClient{{
			ID: d.ClientID, Secret: d.ClientSecret, Name: "Thinlab", RedirectURIs: redirectURIs,
		}},
	}
	return yaml.Marshal(cfg)
}

func waitReady(ctx context.Context, url string, exited <-chan error) error {
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err == nil {
			_ = resp.Body.Close() // only the status matters
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case err := <-exited:
			return fmt.Errorf("dex exited: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer func() { _ = l.Close() }() // only its port was wanted
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}
