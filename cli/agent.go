package cli

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/thinlab/thinlab/agent"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/internal/version"
)

func newAgentCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the Thinlab agent (the engine on a database host)",
	}
	cmd.AddCommand(newAgentRunCommand(), newAgentConfigCommand())
	return cmd
}

func newAgentConfigCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Work with agent configuration files",
	}
	cmd.AddCommand(newImportDLECommand())
	return cmd
}

func newImportDLECommand() *cobra.Command {
	var outPath string
	cmd := &cobra.Command{
		Use:   "import-dle SERVER_YML",
		Short: "Turn a Database Lab Engine server.yml into a Thinlab agent configuration",
		Long: `Read a Database Lab Engine 3.x/4.x configuration (server.yml) and print the
Thinlab agent configuration it corresponds to (logical retrieval, pools,
ports, cloning, refresh schedule, pre-processing). Every DLE option that
could not be carried over is named on stderr, with what to review.`,
		Example: `  thinlab agent config import-dle /root/.dblab/engine/configs/server.yml -o /etc/thinlab/agent.yaml`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			res, err := config.ImportDLE(raw)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			if outPath == "" {
				if _, err := cmd.OutOrStdout().Write(res.YAML); err != nil {
					return err
				}
			} else if err := os.WriteFile(outPath, res.YAML, 0o600); err != nil { //nolint:gosec // G703: the path the user asked for; 0600 since it may hold the token and a password
				return err
			}
			var notes []string
			for _, c := range res.Check {
				notes = append(notes, "review: "+c)
			}
			for _, n := range res.NotCarried {
				notes = append(notes, "not carried over: "+n)
			}
			if _, err := config.Parse(res.YAML, "the imported configuration"); err != nil {
				notes = append(notes, "review: "+err.Error())
			}
			_, err = fmt.Fprintln(cmd.ErrOrStderr(), strings.Join(notes, "\n"))
			return err
		},
	}
	cmd.Flags().StringVarP(&outPath, "output", "o", "", "write the configuration to this file (mode 0600) instead of stdout")
	return cmd
}

func newAgentRunCommand() *cobra.Command {
	var configPath, platformURL, enrollToken string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the agent: pools, clones, retrieval and the DLE-compatible API",
		Long: `Run the agent with the configuration file given by --config (or the
THINLAB_AGENT_CONFIG environment variable) until SIGINT or SIGTERM. Clones
keep running when the agent stops; the next start finds them again.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if configPath == "" {
				return errors.New("--config is required: give the agent's YAML configuration file (or set THINLAB_AGENT_CONFIG)")
			}
			cfg, err := config.Load(configPath)
			if err != nil {
				return err
			}
			if err := applyPlatformFlags(cfg, configPath, platformURL, enrollToken); err != nil {
				return err
			}
			a, err := agent.NewWithOptions(cmd.Context(), agent.Options{Config: cfg, Logger: slog.Default(), Version: version.Version})
			if err != nil {
				return err
			}
			return a.Run(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&configPath, "config", os.Getenv("THINLAB_AGENT_CONFIG"), "agent configuration file (env THINLAB_AGENT_CONFIG)")
	cmd.Flags().StringVar(&platformURL, "platform", "", "platform URL to connect to (overrides platform.url)")
	cmd.Flags().StringVar(&enrollToken, "enroll-token", os.Getenv("THINLAB_ENROLL_TOKEN"), "enrollment token, used once to get the agent's credential (overrides platform.enrollToken; env THINLAB_ENROLL_TOKEN)")
	return cmd
}

// applyPlatformFlags lets --platform and --enroll-token override the
// config file, and validates the result like the file itself.
func applyPlatformFlags(cfg *config.Config, configPath, platformURL, enrollToken string) error {
	if platformURL == "" && enrollToken == "" {
		return nil
	}
	if platformURL != "" {
		cfg.Platform.URL = platformURL
	}
	if enrollToken != "" {
		cfg.Platform.EnrollToken = enrollToken
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("%s with --platform/--enroll-token: %w", configPath, err)
	}
	return nil
}
