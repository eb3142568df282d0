package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/thinlab/thinlab/cli/clientconfig"
	"github.com/thinlab/thinlab/sdk/agentapi"
	"github.com/thinlab/thinlab/sdk/platformapi"
)

// platformConn is an agent reached through the platform: the platform's
// client (personal API token), the organization and the agent.
type platformConn struct {
	client *platformapi.Client
	org    string
	agent  platformapi.Agent
}

// engineURL is where the platform forwards the agent's own API.
func (p *platformConn) engineURL() string {
	return p.client.BaseURL + "/api/v1" + platformapi.EnginePath(p.org, p.agent.ID)
}

// dialClone opens a TCP stream to the clone's postgres through the
// platform and the agent's tunnel.
func (p *platformConn) dialClone(ctx context.Context, clone string) (net.Conn, error) {
	return p.client.DialClone(ctx, p.org, p.agent.ID, clone)
}

// newPlatformClient is the platform's API client for ep (a platform
// context), sharing hc's TLS settings (the context's CA file).
func newPlatformClient(baseURL, token string, hc *http.Client) *platformapi.Client {
	c := platformapi.NewClient(baseURL, token)
	if hc != nil {
		c.HTTP = hc
	}
	return c
}

// resolveAgent finds the agent ep names in its organization, by name or
// ID, and checks that the platform can reach it now.
func resolveAgent(ep clientconfig.Endpoint, hc *http.Client) (*platformConn, error) {
	if ep.Org == "" {
		return nil, usageErrorf("context %q names no organization: add it again with `thinlab context add %s --platform %s --org SLUG --overwrite`", ep.Context, ep.Context, ep.URL)
	}
	p := &platformConn{client: newPlatformClient(ep.URL, ep.Token, hc), org: ep.Org}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	agents, err := p.client.Agents(ctx, ep.Org)
	if err != nil {
		if pe, ok := errors.AsType[*platformapi.APIError](err); ok {
			return nil, explainPlatform(pe, ep)
		}
		return nil, fmt.Errorf("list the agents of organization %s: %w; is the platform reachable at %s (from %s)?", ep.Org, err, ep.URL, ep.URLFrom)
	}
	if ep.Agent == "" {
		return nil, usageErrorf("no agent: pass --agent NAME, set %s, or give the context a default agent (`thinlab context add %s --platform %s --agent NAME --overwrite`); %s",
			clientconfig.EnvAgent, ep.Context, ep.URL, agentChoices(ep.Org, agents))
	}
	for _, ag := range agents {
		if ag.Name != ep.Agent && ag.ID != ep.Agent {
			continue
		}
		p.agent = ag
		switch ag.Connection.State {
		case platformapi.AgentConnected, platformapi.AgentStale:
			return p, nil
		case platformapi.AgentRevoked:
			return nil, fmt.Errorf("agent %s (from %s) is revoked: it cannot connect any more; enroll the host again or pick another agent", ep.Agent, ep.AgentFrom)
		case platformapi.AgentNeverSeen:
			return nil, fmt.Errorf("agent %s (from %s) has never connected to the platform: start `thinlab agent run` on its host with platform.url set to %s", ep.Agent, ep.AgentFrom, ep.URL)
		default:
			since := ""
			if t := ag.Connection.DisconnectedSince; t != nil {
				since = " since " + t.Local().Format(time.RFC3339)
			}
			return nil, fmt.Errorf("agent %s (from %s) is disconnected%s: the platform cannot reach it; check that `thinlab agent run` runs on its host and reaches %s", ep.Agent, ep.AgentFrom, since, ep.URL)
		}
	}
	return nil, usageErrorf("%s: no agent %q in organization %s; %s", ep.AgentFrom, ep.Agent, ep.Org, agentChoices(ep.Org, agents))
}

// agentChoices lists an organization's agents for an error message.
func agentChoices(org string, agents []platformapi.Agent) string {
	var names []string
	for _, ag := range agents {
		if ag.Connection.State == platformapi.AgentRevoked {
			continue
		}
		names = append(names, ag.Name+" ("+strings.ReplaceAll(ag.Connection.State, "_", " ")+")")
	}
	if len(names) == 0 {
		return "organization " + org + " has no agents yet: enroll one with an enrollment token from the platform's Agents page"
	}
	return "the agents of organization " + org + ": " + strings.Join(names, ", ")
}

// explainPlatform turns a platform API refusal into advice.
func explainPlatform(pe *platformapi.APIError, ep clientconfig.Endpoint) error {
	msg := pe.Message
	if msg == "" {
		msg = http.StatusText(pe.Status)
	}
	if pe.Field != "" && !strings.Contains(msg, pe.Field) {
		msg += " (field " + pe.Field + ")"
	}
	switch pe.Status {
	case http.StatusUnauthorized:
		msg += fmt.Sprintf("; the platform at %s refused the personal API token: pass --token, set %s, or fix the context's token", ep.URL, clientconfig.EnvToken)
	case http.StatusNotFound:
		if strings.Contains(msg, "organization") {
			msg += fmt.Sprintf("; the token does not act in organization %s (the context's org): fix it with `thinlab context add %s --platform %s --org SLUG --overwrite`", ep.Org, ep.Context, ep.URL)
		}
	}
	return errors.New(msg)
}

// defaultOrg is the organization of a platform context added without
// --org: the one the token acts in (API tokens belong to one), else the
// user's only one.
func defaultOrg(ctx context.Context, platformURL, token, caFile string) (string, error) {
	hc, err := agentapi.NewHTTPClient(caFile, requestTimeout)
	if err != nil {
		return "", usageErrorf("--ca-file: %v", err)
	}
	me, err := newPlatformClient(platformURL, token, hc).Me(ctx)
	if err != nil {
		if pe, ok := errors.AsType[*platformapi.APIError](err); ok {
			return "", explainPlatform(pe, clientconfig.Endpoint{URL: platformURL})
		}
		if _, ok := errors.AsType[*url.Error](err); ok {
			return "", fmt.Errorf("%w; is the platform reachable at %s (--platform)? Or pass --org SLUG to add the context without asking it", err, platformURL)
		}
		return "", err
	}
	if me.TokenOrgID != "" {
		for _, o := range me.Orgs {
			if o.ID == me.TokenOrgID {
				return o.Slug, nil
			}
		}
	}
	if len(me.Orgs) == 1 {
		return me.Orgs[0].Slug, nil
	}
	var slugs []string
	for _, o := range me.Orgs {
		slugs = append(slugs, o.Slug)
	}
	if len(slugs) == 0 {
		return "", usageErrorf("--org: the token's user belongs to no organization")
	}
	return "", usageErrorf("--org is required: the token's user belongs to several organizations: %s", strings.Join(slugs, ", "))
}
