package cli

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/thinlab/thinlab/platform/server"
)

func newPlatformCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "platform",
		Short: "Run the Thinlab platform (control plane)",
	}
	cmd.AddCommand(newPlatformServeCommand(), newPlatformMigrateCommand())
	return cmd
}

func newPlatformServeCommand() *cobra.Command {
	var configPath string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the web UI and /api/v1 (starts an embedded PostgreSQL when no database URL is set)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) (err error) {
			cfg, err := server.LoadConfig(configPath)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			srv, err := server.New(ctx, cfg, server.Options{Logger: slog.Default()})
			if err != nil {
				return err
			}
			// A database that did not stop cleanly is worth an exit status.
			defer func() { err = errors.Join(err, srv.Close()) }()
			return srv.ListenAndServe(ctx)
		},
	}
	cmd.Flags().StringVar(&configPath, "config", envOr("THINLAB_PLATFORM_CONFIG", ""), "YAML config file (env THINLAB_PLATFORM_CONFIG); see docs/platform-config.md")
	return cmd
}

func newPlatformMigrateCommand() *cobra.Command {
	var configPath string
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Apply the platform database migrations and exit",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := server.LoadConfig(configPath)
			if err != nil {
				return err
			}
			version, err := server.Migrate(cmd.Context(), cfg, slog.Default())
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "platform database at schema version %d\n", version)
			return err
		},
	}
	cmd.Flags().StringVar(&configPath, "config", envOr("THINLAB_PLATFORM_CONFIG", ""), "YAML config file (env THINLAB_PLATFORM_CONFIG)")
	return cmd
}
