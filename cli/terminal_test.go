package cli

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/thinlab/thinlab/sdk/agentapi"
)

// openPTY opens a real pseudo-terminal: what the program sees (tty) and
// the other end a test writes keystrokes to and reads the screen from.
func openPTY(t *testing.T) (ptmx, tty *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("no pseudo-terminals here (/dev/ptmx): %v", err)
	}
	closeAtCleanup(t, m, "the pty master")
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("pty number: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open pty: %v", err)
	}
	closeAtCleanup(t, s, "the pty")
	return m, s
}

// On a terminal, progress is a spinner redrawn in place with the elapsed
// time, and the final line replaces it.
func TestProgressSpinnerOnTerminal(t *testing.T) {
	ptmx, tty := openPTY(t)
	var (
		mu     sync.Mutex
		screen strings.Builder
	)
	read := func() string { mu.Lock(); defer mu.Unlock(); return screen.String() }
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := ptmx.Read(buf) // EIO once the tty closes
			mu.Lock()
			screen.Write(buf[:n])
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	waitFor := func(re *regexp.Regexp) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); !re.MatchString(read()); {
			if time.Now().After(deadline) {
				t.Fatalf("%s never appeared on the terminal: %q", re, read())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	p := startProgress(tty, "Creating clone x")
	if !p.tty {
		t.Fatal("a pty was not detected as a terminal")
	}
	p.Update("CREATING")
	// A redrawn line: carriage return, clear line, a spinner frame, the
	// state and the elapsed time.
	waitFor(regexp.MustCompile("\r\x1b\\[K[" + strings.Join(spinnerFrames, "") + "] Creating clone x \\(CREATING\\) \\d+s"))
	p.Stop("ready")
	waitFor(regexp.MustCompile(`Creating clone x: ready in \d+s`))
}

// clone create asks for the password twice, without echo, on a real
// terminal, and sends it in the request (the server here records requests;
// it is not an agent).
func TestCloneCreatePromptsForPasswordOnTerminal(t *testing.T) {
	isolate(t)
	var got agentapi.CreateCloneRequest
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := json.NewDecoder(r.Body).Decode(&got); err != nil {
			t.Errorf("decode the create request: %v", err)
		}
		replyJSON(t, w, http.StatusCreated, agentapi.Clone{ID: "c1", Status: agentapi.Status{Code: agentapi.StatusOK}, DB: agentapi.Database{Username: got.DB.Username}})
	}))
	t.Cleanup(srv.Close)
	t.Setenv("THINLAB_URL", srv.URL)

	ptmx, tty := openPTY(t)
	// Answer each prompt when it appears; whatever is echoed would show up
	// here too.
	var screen strings.Builder
	done := make(chan struct{})
	go func() {
		defer close(done)
		r := bufio.NewReader(ptmx)
		for prompts := 0; prompts < 2; {
			line, err := r.ReadString(':')
			screen.WriteString(line)
			if err != nil {
				return
			}
			if strings.HasSuffix(line, "Password for alice:") || strings.HasSuffix(line, "Repeat the password:") {
				prompts++
				// Type only once the prompt turned echo off, as a person
				// would after seeing it.
				for range 500 {
					tio, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
					if err == nil && tio.Lflag&unix.ECHO == 0 {
						break
					}
					time.Sleep(10 * time.Millisecond)
				}
				if _, err := ptmx.Write([]byte("Typed-Pa55word-xyz!\n")); err != nil {
					t.Errorf("type the password: %v", err)
					return
				}
			}
		}
	}()

	root := NewRootCommand()
	root.SetArgs([]string{"clone", "create", "--username", "alice", "--save-password=false", "-o", "json"})
	root.SetIn(tty)
	root.SetErr(tty)
	var out strings.Builder
	root.SetOut(&out)
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("prompts not seen")
	}
	if got.DB == nil || got.DB.Password != "Typed-Pa55word-xyz!" || got.DB.Username != "alice" {
		t.Errorf("request: %+v", got.DB)
	}
	if strings.Contains(screen.String(), "Typed-Pa55word") {
		t.Errorf("the password was echoed: %q", screen.String())
	}
}
