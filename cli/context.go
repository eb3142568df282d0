package cli

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/thinlab/thinlab/cli/clientconfig"
	"github.com/thinlab/thinlab/sdk/agentapi"
)

func newContextCommand() *cobra.Command {
	cmd := groupCommand(&cobra.Command{
		Use:   "context",
		Short: "Manage named agent and platform endpoints (URL + token) in the CLI config file",
		Long: `Contexts are named endpoints (URL and token) kept in
$XDG_CONFIG_HOME/thinlab/config.yaml (or ~/.config/thinlab/config.yaml;
THINLAB_CONFIG overrides the path), written with mode 0600.

An agent context (--url) talks to one agent with its verification token.
A platform context (--platform) talks to the agents of one organization
through the platform with a personal API token; client commands pick the
agent with --agent NAME, THINLAB_AGENT, or the context's --agent.

Client commands pick the endpoint by precedence: --url/--token flags, then
THINLAB_URL/THINLAB_TOKEN, then the current context (or --context NAME).`,
		Example: `  thinlab context add dev --url http://localhost:2345 --token-stdin < token.txt
  thinlab context add cloud --platform https://thinlab.example.com --token-stdin --agent db1 < personal-token.txt
  thinlab context use dev
  thinlab context list`,
	})
	cmd.AddCommand(newContextAddCommand(), newContextUseCommand(), newContextListCommand(), newContextRemoveCommand())
	return cmd
}

// loadConfig returns the config file path and its contents.
func loadConfig() (string, *clientconfig.File, error) {
	path, err := clientconfig.Path()
	if err != nil {
		return "", nil, err
	}
	f, err := clientconfig.Load(path)
	return path, f, err
}

func newContextAddCommand() *cobra.Command {
	var (
		url, token, caFile      string
		platformURL, org, agent string
		tokenStdin, use, over   bool
	)
	cmd := &cobra.Command{
		Use:   "add NAME (--url URL | --platform URL)",
		Short: "Add a context (the first one added becomes current)",
		Example: `  thinlab context add dev --url http://localhost:2345
  echo "$TOKEN" | thinlab context add prod --url https://db.example.com:2345 --token-stdin --use
  echo "$PERSONAL_TOKEN" | thinlab context add cloud --platform https://thinlab.example.com --token-stdin --agent db1`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := clientconfig.ValidateName(name); err != nil {
				return usageErrorf("%v", err)
			}
			urlFlag := "--url"
			switch {
			case url != "" && platformURL != "":
				return usageErrorf("use either --url (an agent) or --platform (agents through the platform), not both")
			case platformURL != "":
				url, urlFlag = platformURL, "--platform"
			case url == "":
				return usageErrorf("--url or --platform is required, e.g. --url http://localhost:2345 (an agent) or --platform https://thinlab.example.com (agents through the platform)")
			case org != "" || agent != "":
				return usageErrorf("--org and --agent go with --platform: --url names one agent directly")
			}
			if err := clientconfig.ValidateURL(url); err != nil {
				return usageErrorf("%s: %v", urlFlag, err)
			}
			if tokenStdin {
				if token != "" {
					return usageErrorf("use either --token or --token-stdin, not both")
				}
				t, err := readLine(cmd.InOrStdin())
				if err != nil {
					return fmt.Errorf("--token-stdin: %w", err)
				}
				token = t
			}
			path, f, err := loadConfig()
			if err != nil {
				return err
			}
			if _, exists := f.Context(name); exists && !over {
				return usageErrorf("context %q already exists; pass --overwrite to replace it", name)
			}
			if caFile != "" {
				if _, err := agentapi.NewHTTPClient(caFile, 0); err != nil {
					return usageErrorf("--ca-file: %v", err)
				}
				// Stored absolute: the CLI runs from any directory.
				if abs, err := filepath.Abs(caFile); err == nil {
					caFile = abs
				}
			}
			c := clientconfig.Context{Name: name, URL: url, Token: token, CAFile: caFile}
			if platformURL != "" {
				if token == "" {
					return usageErrorf("--platform needs a personal API token: pass --token-stdin (or --token); create one on the platform's Tokens page")
				}
				if org == "" {
					if org, err = defaultOrg(cmd.Context(), url, token, caFile); err != nil {
						return err
					}
				}
				c.Platform, c.Org, c.Agent = true, org, agent
			}
			f.Set(c)
			if use {
				f.CurrentContext = name
			}
			if err := clientconfig.Save(path, f); err != nil {
				return err
			}
			current := ""
			if f.CurrentContext == name {
				current = " (current)"
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "Context %q saved in %s%s\n", name, path, current)
			return err
		},
	}
	cmd.Flags().StringVar(&url, "url", "", "agent API URL, e.g. http://localhost:2345 (this or --platform is required)")
	cmd.Flags().StringVar(&platformURL, "platform", "", "platform URL, e.g. https://thinlab.example.com: reach agents through the platform (with --token: a personal API token)")
	cmd.Flags().StringVar(&org, "org", "", "with --platform: the organization's slug (default: the token's organization)")
	cmd.Flags().StringVar(&agent, "agent", "", "with --platform: the agent the client commands act on by default (name or ID)")
	cmd.Flags().StringVar(&token, "token", "", "agent verification token, or with --platform a personal API token (prefer --token-stdin: flags end up in shell history)")
	cmd.Flags().StringVar(&caFile, "ca-file", "", "PEM file of the CA that signed the agent's TLS certificate (for an https:// URL with a private CA)")
	cmd.Flags().BoolVar(&tokenStdin, "token-stdin", false, "read the token from the first line of stdin")
	cmd.Flags().BoolVar(&use, "use", false, "make it the current context")
	cmd.Flags().BoolVar(&over, "overwrite", false, "replace an existing context with the same name")
	return cmd
}

func newContextUseCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "use NAME",
		Short:   "Make NAME the current context",
		Example: "  thinlab context use prod",
		Args:    exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			path, f, err := loadConfig()
			if err != nil {
				return err
			}
			if err := f.Use(args[0]); err != nil {
				return err
			}
			if err := clientconfig.Save(path, f); err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "Current context is %q\n", args[0])
			return err
		},
	}
}

// contextView is what `context list -o json` prints: never the token.
type contextView struct {
	Name     string `json:"name"`
	URL      string `json:"url"`
	HasToken bool   `json:"hasToken"`
	Current  bool   `json:"current"`
	Platform bool   `json:"platform,omitempty"`
	Org      string `json:"org,omitempty"`
	Agent    string `json:"agent,omitempty"`
}

func newContextListCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List contexts; * marks the current one (tokens are never shown)",
		Example: "  thinlab context list\n  thinlab context list -o json",
		Args:    exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			_, f, err := loadConfig()
			if err != nil {
				return err
			}
			views := make([]contextView, 0, len(f.Contexts))
			for _, c := range f.Contexts {
				views = append(views, contextView{Name: c.Name, URL: c.URL, HasToken: c.Token != "", Current: c.Name == f.CurrentContext, Platform: c.Platform, Org: c.Org, Agent: c.Agent})
			}
			slices.SortFunc(views, func(a, b contextView) int { return strings.Compare(a.Name, b.Name) })
			if output == outputJSON {
				return writeJSON(cmd.OutOrStdout(), views)
			}
			tw := newTable(cmd.OutOrStdout())
			row(tw, "CURRENT", "NAME", "URL", "TOKEN", "VIA")
			for _, v := range views {
				cur, tok, via := "", "-", "agent"
				if v.Current {
					cur = "*"
				}
				if v.HasToken {
					tok = "set"
				}
				if v.Platform {
					via = "platform, org " + v.Org
					if v.Agent != "" {
						via += ", agent " + v.Agent
					}
				}
				row(tw, cur, v.Name, v.URL, tok, via)
			}
			return tw.Flush()
		},
	}
	addOutputFlag(cmd, &output)
	return cmd
}

func newContextRemoveCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "remove NAME",
		Aliases: []string{"rm"},
		Short:   "Remove a context",
		Example: "  thinlab context remove old-staging",
		Args:    exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			path, f, err := loadConfig()
			if err != nil {
				return err
			}
			if err := f.Remove(args[0]); err != nil {
				return err
			}
			if err := clientconfig.Save(path, f); err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "Context %q removed\n", args[0])
			return err
		},
	}
}
