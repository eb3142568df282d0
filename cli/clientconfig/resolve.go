package clientconfig

import (
	"fmt"
	"net/url"
	"strings"
)

// Environment variables read by Resolve.
const (
	EnvURL   = "THINLAB_URL"
	EnvToken = "THINLAB_TOKEN" //nolint:gosec // G101: the name of an environment variable, not a token
	// EnvCAFile names a PEM file with the CA that signed the agent's
	// certificate (for an https:// URL).
	EnvCAFile = "THINLAB_CA_FILE"
	// EnvAgent names the agent to act on through a platform context.
	EnvAgent = "THINLAB_AGENT"
)

// Inputs are everything that can name the agent, gathered by the caller so
// that Resolve stays a pure function (and easy to test).
type Inputs struct {
	FlagURL, FlagToken, FlagCAFile string
	EnvURL, EnvToken, EnvCAFile    string
	// FlagAgent and EnvAgent name the agent behind a platform context.
	FlagAgent, EnvAgent string
	// Context is the --context flag; empty means the file's current context.
	Context string
	File    *File
}

// Endpoint is the agent to talk to.
type Endpoint struct {
	URL   string
	Token string
	// URLFrom says where URL came from ("--url", "THINLAB_URL" or
	// `context "name"`), for error messages.
	URLFrom string
	// Context is the context used, if any.
	Context string
	// CAFile is the PEM file of the CA to verify the agent's certificate
	// with ("" means the system's roots).
	CAFile string
	// Platform is set when URL is a platform (from a platform context):
	// the commands reach Agent (a name or ID, "" when none was given) in
	// organization Org through it, with Token as a personal API token.
	Platform bool
	Org      string
	Agent    string
	// AgentFrom says where Agent came from, for error messages.
	AgentFrom string
}

// Resolve picks the URL and token, each by precedence flag > environment >
// context. A context's token is only used together with that context's URL:
// pointing --url at another server must not send it this context's secret.
func Resolve(in Inputs) (Endpoint, error) {
	f := in.File
	if f == nil {
		f = &File{}
	}
	var ctx *Context
	if in.Context != "" {
		c, ok := f.Context(in.Context)
		if !ok {
			return Endpoint{}, fmt.Errorf("--context: %w", f.notFound(in.Context))
		}
		ctx = &c
	} else if f.CurrentContext != "" {
		if c, ok := f.Context(f.CurrentContext); ok {
			ctx = &c
		}
	}

	var ep Endpoint
	switch {
	case in.FlagURL != "":
		ep.URL, ep.URLFrom = in.FlagURL, "--url"
	case in.EnvURL != "":
		ep.URL, ep.URLFrom = in.EnvURL, EnvURL
	case ctx != nil:
		ep.URL, ep.URLFrom = ctx.URL, fmt.Sprintf("context %q", ctx.Name)
	default:
		return Endpoint{}, fmt.Errorf("no agent URL: pass --url, set %s, or add a context with `thinlab context add NAME --url URL --token TOKEN`", EnvURL)
	}
	if err := ValidateURL(ep.URL); err != nil {
		return Endpoint{}, fmt.Errorf("%s: %w", ep.URLFrom, err)
	}
	switch {
	case in.FlagToken != "":
		ep.Token = in.FlagToken
	case in.EnvToken != "":
		ep.Token = in.EnvToken
	case ctx != nil && sameURL(ctx.URL, ep.URL):
		ep.Token = ctx.Token
	}
	if ctx != nil && sameURL(ctx.URL, ep.URL) {
		ep.Context = ctx.Name
		ep.Platform, ep.Org = ctx.Platform, ctx.Org
	}
	switch {
	case !ep.Platform && in.FlagAgent != "":
		// THINLAB_AGENT is ignored here: it may be exported for another
		// context; the flag was meant for this command.
		return Endpoint{}, fmt.Errorf("--agent works through a platform: %s is an agent's own address; add a platform context with `thinlab context add NAME --platform URL --token TOKEN`, or drop --agent", ep.URLFrom)
	case !ep.Platform:
	case in.FlagAgent != "":
		ep.Agent, ep.AgentFrom = in.FlagAgent, "--agent"
	case in.EnvAgent != "":
		ep.Agent, ep.AgentFrom = in.EnvAgent, EnvAgent
	case ctx.Agent != "":
		ep.Agent, ep.AgentFrom = ctx.Agent, fmt.Sprintf("context %q", ctx.Name)
	}
	switch {
	case in.FlagCAFile != "":
		ep.CAFile = in.FlagCAFile
	case in.EnvCAFile != "":
		ep.CAFile = in.EnvCAFile
	case ctx != nil && sameURL(ctx.URL, ep.URL):
		ep.CAFile = ctx.CAFile
	}
	return ep, nil
}

// ValidateURL checks that u is an absolute http(s) URL.
func ValidateURL(u string) error {
	p, err := url.Parse(u)
	if err != nil {
		return fmt.Errorf("agent URL %q: %v", u, err)
	}
	if (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
		return fmt.Errorf("agent URL %q: use an absolute http:// or https:// URL, for example http://localhost:2345", u)
	}
	return nil
}

func sameURL(a, b string) bool {
	return strings.TrimRight(a, "/") == strings.TrimRight(b, "/")
}
