package cli

import (
	"errors"
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
	var configPath string
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
			a, err := agent.NewWithOptions(cmd.Context(), agent.Options{Config: cfg, Logger: slog.Default(), Version: version.Version})
			if err != nil {
				return err
			}
			return a.Run(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&configPath, "config", os.Getenv("THINLAB_AGENT_CONFIG"), "agent configuration file (env THINLAB_AGENT_CONFIG)")
	return cmd
}
