// Package command runs external programs for Thinlab. Every call goes
// through Runner so that it is logged the same way and a failure carries the
// program's stderr. Arguments are passed as a vector, never through a shell.
package command

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Runner runs programs. The zero value logs to slog.Default().
type Runner struct {
	Logger *slog.Logger
}

// Cmd describes one program invocation.
type Cmd struct {
	Name  string
	Args  []string
	Dir   string
	Env   []string // appended to the current environment
	Stdin io.Reader
	// Stdout, when set, receives the command's output as it is written
	// (a stream too large to buffer); RunCmd then returns no output.
	Stdout io.Writer
	// Credential, when set, runs the program as another OS user (for example
	// postgres, because initdb and postgres refuse to run as root).
	Credential *syscall.Credential
	// Secret arguments are replaced by "***" in logs and errors.
	SecretArgs []int
}

// Error is returned when a program fails; it carries the trimmed stderr.
type Error struct {
	Cmdline  string
	ExitCode int
	Stderr   string
	Err      error
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("%s: %v", e.Cmdline, e.Err)
	if e.Stderr != "" {
		msg += ": " + e.Stderr
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// Run runs name with args and returns its stdout.
func (r Runner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return r.RunCmd(ctx, Cmd{Name: name, Args: args})
}

// RunCmd runs c and returns its stdout. On failure the error is an *Error
// holding stderr.
func (r Runner) RunCmd(ctx context.Context, c Cmd) ([]byte, error) {
	logger := r.Logger
	if logger == nil {
		logger = slog.Default()
	}
	cmdline := c.cmdline()
	cmd := exec.CommandContext(ctx, c.Name, c.Args...) //nolint:gosec // G204: the one place that runs external tools: argv without a shell, names validated by the callers (storage.ValidateName)
	cmd.Dir = c.Dir
	if len(c.Env) > 0 {
		cmd.Env = append(os.Environ(), c.Env...)
	}
	cmd.Stdin = c.Stdin
	if c.Credential != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.Credential}
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	if c.Stdout != nil {
		cmd.Stdout = c.Stdout
	}
	cmd.Stderr = &stderr
	start := time.Now()
	err := cmd.Run()
	elapsed := time.Since(start)
	if err != nil {
		exitCode := -1
		if exitErr, ok := errors.AsType[*exec.ExitError](err); ok {
			exitCode = exitErr.ExitCode()
		}
		logger.Debug("command failed", "cmd", cmdline, "elapsed", elapsed, "exit", exitCode, "stderr", strings.TrimSpace(stderr.String()))
		return stdout.Bytes(), &Error{Cmdline: cmdline, ExitCode: exitCode, Stderr: strings.TrimSpace(stderr.String()), Err: err}
	}
	logger.Debug("command", "cmd", cmdline, "elapsed", elapsed)
	return stdout.Bytes(), nil
}

func (c Cmd) cmdline() string {
	parts := make([]string, 0, len(c.Args)+1)
	parts = append(parts, c.Name)
	for i, a := range c.Args {
		secret := false
		for _, s := range c.SecretArgs {
			if s == i {
				secret = true
			}
		}
		if secret {
			a = "***"
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}
