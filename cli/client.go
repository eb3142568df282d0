package cli

import (
	"bufio"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/thinlab/thinlab/cli/clientconfig"
	"github.com/thinlab/thinlab/sdk/agentapi"
	"github.com/thinlab/thinlab/sdk/platformapi"
)

// Exit codes of the client commands.
const (
	exitError = 1
	exitUsage = 2
)

// usageErrorf is a mistake in how the command was called: exit code 2.
func usageErrorf(format string, args ...any) error {
	return exitCodeError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

// asUsage makes cobra's own flag errors (unknown flag, bad value) exit 2.
// Set on a command, it covers its subcommands too.
func asUsage(cmd *cobra.Command) *cobra.Command {
	cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return exitCodeError{code: exitUsage, err: fmt.Errorf("%w (see `%s --help`)", err, c.CommandPath())}
	})
	return cmd
}

// exactArgs requires the named positional arguments, as a usage error.
func exactArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		switch {
		case len(args) < len(names):
			return usageErrorf("missing %s (usage: %s)", strings.Join(names[len(args):], " "), cmd.UseLine())
		case len(args) > len(names):
			return usageErrorf("unexpected argument %q (usage: %s)", args[len(names)], cmd.UseLine())
		}
		for i, a := range args {
			if a == "" {
				return usageErrorf("%s must not be empty", names[i])
			}
		}
		return nil
	}
}

// groupCommand is a parent such as `thinlab clone`: run alone it shows
// help, with an unknown subcommand it is a usage error.
func groupCommand(cmd *cobra.Command) *cobra.Command {
	cmd.Args = func(c *cobra.Command, args []string) error {
		if len(args) > 0 {
			return usageErrorf("unknown command %q for %q (see `%s --help`)", args[0], c.CommandPath(), c.CommandPath())
		}
		return nil
	}
	cmd.RunE = func(c *cobra.Command, args []string) error { return c.Help() }
	return asUsage(cmd)
}

// clientFlags say which agent to talk to. They are persistent flags of
// every client command (status, snapshot, clone, connect), not of the root,
// so that `thinlab agent` and `thinlab platform` do not show them.
type clientFlags struct {
	url     string
	token   string
	caFile  string
	context string
	agent   string
}

func (f *clientFlags) register(cmd *cobra.Command) {
	pf := cmd.PersistentFlags()
	pf.StringVar(&f.url, "url", "", "agent API URL, e.g. http://localhost:2345 (env THINLAB_URL; default: the current context)")
	pf.StringVar(&f.token, "token", "", "agent verification token (env THINLAB_TOKEN; default: the current context's)")
	pf.StringVar(&f.caFile, "ca-file", "", "PEM file of the CA that signed the agent's TLS certificate (env THINLAB_CA_FILE; default: the context's, else the system's roots)")
	pf.StringVar(&f.context, "context", "", "use this context from the config file instead of the current one")
	pf.StringVar(&f.agent, "agent", "", "with a platform context: the agent to act on, by name or ID (env "+clientconfig.EnvAgent+"; default: the context's agent)")
}

// endpoint resolves the agent URL and token by precedence flag > env >
// context, and returns the config file too (clone passwords live there).
func (f *clientFlags) endpoint() (clientconfig.Endpoint, *clientconfig.File, string, error) {
	path, err := clientconfig.Path()
	if err != nil {
		return clientconfig.Endpoint{}, nil, "", err
	}
	file, err := clientconfig.Load(path)
	if err != nil {
		return clientconfig.Endpoint{}, nil, "", err
	}
	ep, err := clientconfig.Resolve(clientconfig.Inputs{
		FlagURL:    f.url,
		FlagToken:  f.token,
		FlagCAFile: f.caFile,
		EnvURL:     os.Getenv(clientconfig.EnvURL),
		EnvToken:   os.Getenv(clientconfig.EnvToken),
		EnvCAFile:  os.Getenv(clientconfig.EnvCAFile),
		FlagAgent:  f.agent,
		EnvAgent:   os.Getenv(clientconfig.EnvAgent),
		Context:    f.context,
		File:       file,
	})
	if err != nil {
		return clientconfig.Endpoint{}, nil, "", usageErrorf("%v", err)
	}
	return ep, file, path, nil
}

// stdinTerminal returns the file descriptor of stdin when it is a terminal.
func stdinTerminal(cmd *cobra.Command) (int, bool) {
	f, ok := cmd.InOrStdin().(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return 0, false
	}
	return int(f.Fd()), true
}

// promptPassword reads a password from the terminal without echo; with
// confirm it asks twice. Without a terminal it is a usage error naming the
// flag and variable to use instead, so CI jobs fail fast instead of hanging.
func promptPassword(cmd *cobra.Command, prompt string, confirm bool, instead string) (string, error) {
	fd, ok := stdinTerminal(cmd)
	if !ok {
		return "", usageErrorf("no password: stdin is not a terminal, so %s", instead)
	}
	read := func(p string) (string, error) {
		warn(cmd, "%s", p)
		b, err := term.ReadPassword(fd)
		warn(cmd, "\n") // the user's Enter was not echoed
		if err != nil {
			return "", fmt.Errorf("read password: %w", err)
		}
		return string(b), nil
	}
	pw, err := read(prompt)
	if err != nil {
		return "", err
	}
	if pw == "" {
		return "", usageErrorf("the password must not be empty")
	}
	if confirm {
		again, err := read("Repeat the password: ")
		if err != nil {
			return "", err
		}
		if again != pw {
			return "", usageErrorf("the passwords do not match")
		}
	}
	return pw, nil
}

// readLine reads one line from r without the line ending (for --token-stdin).
func readLine(r io.Reader) (string, error) {
	s, err := bufio.NewReader(r).ReadString('\n')
	if err != nil && err != io.EOF {
		return "", err
	}
	return strings.TrimRight(s, "\r\n"), nil
}

// apiConn is a resolved endpoint with its client and the config file (where
// clone passwords are saved).
type apiConn struct {
	api        *agentapi.Client
	ep         clientconfig.Endpoint
	file       *clientconfig.File
	configPath string
	// platform is set for a platform context: the agent is reached
	// through the platform's engine proxy.
	platform *platformConn
}

// passwordKey is what saved clone passwords are keyed by with the clone
// ID: the agent's URL, or through a platform the agent's engine URL (clone
// IDs are unique per agent only).
func (a *apiConn) passwordKey() string {
	if a.platform != nil {
		return a.api.BaseURL
	}
	return a.ep.URL
}

// requestTimeout bounds one API request; waiting for a clone has its own
// --wait-timeout.
const requestTimeout = 60 * time.Second

func (f *clientFlags) connect() (*apiConn, error) {
	ep, file, path, err := f.endpoint()
	if err != nil {
		return nil, err
	}
	hc, err := agentapi.NewHTTPClient(ep.CAFile, requestTimeout)
	if err != nil {
		return nil, usageErrorf("%v (from --ca-file, %s or the context's ca-file)", err, clientconfig.EnvCAFile)
	}
	a := &apiConn{
		api:        &agentapi.Client{BaseURL: ep.URL, Token: ep.Token, HTTPClient: hc},
		ep:         ep,
		file:       file,
		configPath: path,
	}
	if ep.Platform {
		if a.platform, err = resolveAgent(ep, hc); err != nil {
			return nil, err
		}
		// The engine proxy forwards the agent's API unchanged and takes
		// the personal token as a bearer token.
		a.api = &agentapi.Client{BaseURL: a.platform.engineURL(), BearerToken: ep.Token, HTTPClient: hc}
	}
	return a, nil
}

// explain turns an API or transport error into what the user should read:
// the server's message (which names the bad field), the field from the
// error detail when the message lacks it, and what to check for the
// errors that have an obvious cause.
// request connects to the agent and makes one API call, turning its
// error into advice.
func request[T any](cf *clientFlags, call func(*agentapi.Client) (T, error)) (T, error) {
	a, err := cf.connect()
	if err != nil {
		var zero T
		return zero, err
	}
	v, err := call(a.api)
	if err != nil {
		var zero T
		return zero, a.explain(err)
	}
	return v, nil
}

func (a *apiConn) explain(err error) error {
	if err == nil {
		return nil
	}
	if ae, ok := errors.AsType[*agentapi.APIError](err); ok {
		msg := ae.Message
		if msg == "" {
			msg = http.StatusText(ae.StatusCode)
		}
		// Thinlab's detail is the bad field's name; other servers may put
		// free text there.
		switch d := ae.Detail; {
		case d == "" || strings.Contains(msg, d):
		case strings.ContainsAny(d, " \t"):
			msg += " (" + d + ")"
		default:
			msg += " (field " + d + ")"
		}
		switch {
		case ae.StatusCode == http.StatusUnauthorized && a.platform != nil:
			msg += fmt.Sprintf("; the platform at %s refused the personal API token: pass --token, set %s, or fix the context's token", a.ep.URL, clientconfig.EnvToken)
		case ae.StatusCode == http.StatusUnauthorized:
			msg += fmt.Sprintf("; the agent at %s refused the token: pass --token, set %s, or fix the context's token", a.ep.URL, clientconfig.EnvToken)
		}
		return fmt.Errorf("%s", msg)
	}
	if pe, ok := errors.AsType[*platformapi.APIError](err); ok {
		return explainPlatform(pe, a.ep)
	}
	var ua x509.UnknownAuthorityError
	var hn x509.HostnameError
	switch {
	case errors.As(err, &ua):
		return fmt.Errorf("%w; the agent's TLS certificate is not signed by a CA this machine trusts: pass --ca-file, set %s or the context's ca-file to the CA's PEM file", err, clientconfig.EnvCAFile)
	case errors.As(err, &hn):
		return fmt.Errorf("%w; the agent's certificate does not name %s: use a URL with a name the certificate holds", err, a.ep.URL)
	}
	var ue *url.Error
	if errors.As(err, &ue) && !errors.Is(err, context.Canceled) {
		if a.platform != nil {
			return fmt.Errorf("%w; is the platform reachable at %s (from %s)?", err, a.ep.URL, a.ep.URLFrom)
		}
		return fmt.Errorf("%w; is the agent running at %s (from %s)?", err, a.ep.URL, a.ep.URLFrom)
	}
	return err
}
