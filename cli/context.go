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
		Short: "Manage named agent endpoints (URL + token) in the CLI config file",
		Long: `Contexts are named agent endpoints (URL and token) kept in
$XDG_CONFIG_HOME/thinlab/config.yaml (or ~/.config/thinlab/config.yaml;
THINLAB_CONFIG overrides the path), written with mode 0600.

Client commands pick the agent by precedence: --url/--token flags, then
THINLAB_URL/THINLAB_TOKEN, then the current context (or --context NAME).`,
		Example: `  thinlab context add dev --url http://localhost:2345 --token-stdin < token.txt
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
		url, token, caFile    string
		tokenStdin, use, over bool
	)
	cmd := &cobra.Command{
		Use:   "add NAME --url URL",
		Short: "Add a context (the first one added becomes current)",
		Example: `  thinlab context add dev --url http://localhost:2345
  echo "$TOKEN" | thinlab context add prod --url https://db.example.com:2345 --token-stdin --use`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := clientconfig.ValidateName(name); err != nil {
				return usageErrorf("%v", err)
			}
			if url == "" {
				return usageErrorf("--url is required, e.g. --url http://localhost:2345")
			}
			if err := clientconfig.ValidateURL(url); err != nil {
				return usageErrorf("--url: %v", err)
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
			f.Set(clientconfig.Context{Name: name, URL: url, Token: token, CAFile: caFile})
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
	cmd.Flags().StringVar(&url, "url", "", "agent API URL, e.g. http://localhost:2345 (required)")
	cmd.Flags().StringVar(&token, "token", "", "agent verification token (prefer --token-stdin: flags end up in shell history)")
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
				views = append(views, contextView{Name: c.Name, URL: c.URL, HasToken: c.Token != "", Current: c.Name == f.CurrentContext})
			}
			slices.SortFunc(views, func(a, b contextView) int { return strings.Compare(a.Name, b.Name) })
			if output == outputJSON {
				return writeJSON(cmd.OutOrStdout(), views)
			}
			tw := newTable(cmd.OutOrStdout())
			row(tw, "CURRENT", "NAME", "URL", "TOKEN")
			for _, v := range views {
				cur, tok := "", "-"
				if v.Current {
					cur = "*"
				}
				if v.HasToken {
					tok = "set"
				}
				row(tw, cur, v.Name, v.URL, tok)
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
