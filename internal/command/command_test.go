package command

import (
	"errors"
	"strings"
	"testing"
)

func TestRunReturnsStdout(t *testing.T) {
	out, err := Runner{}.Run(t.Context(), "echo", "hello")
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(out)) != "hello" {
		t.Fatalf("stdout = %q", out)
	}
}

func TestRunErrorCarriesStderr(t *testing.T) {
	_, err := Runner{}.Run(t.Context(), "ls", "/does/not/exist")
	var cmdErr *Error
	if !errors.As(err, &cmdErr) {
		t.Fatalf("err = %v, want *Error", err)
	}
	if cmdErr.ExitCode == 0 || !strings.Contains(err.Error(), "No such file") {
		t.Fatalf("err = %v", err)
	}
}

func TestSecretArgsAreMasked(t *testing.T) {
	_, err := Runner{}.RunCmd(t.Context(), Cmd{Name: "false", Args: []string{"user", "hunter2"}, SecretArgs: []int{1}})
	if err == nil || strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "***") {
		t.Fatalf("err = %v", err)
	}
}
