package cli

import (
	"errors"
	"fmt"
	"log/slog"
	"os"

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
	cmd.AddCommand(newAgentRunCommand())
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
