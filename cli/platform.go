package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/thinlab/thinlab/platform/server"
)

func newPlatformCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "platform",
		Short: "Run the Thinlab platform (control plane)",
	}
	cmd.AddCommand(newPlatformServeCommand(), newPlatformMigrateCommand(), newPlatformHealthCommand())
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

// newPlatformHealthCommand is the container health check of the platform
// image (HEALTHCHECK, Kubernetes exec probes): the image has no curl, and
// the binary is there anyway.
func newPlatformHealthCommand() *cobra.Command {
	var baseURL string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "health",
		Short: "Ask a platform's /healthz; exit 0 when it and its database are up",
		Long: `GET URL/healthz and print its answer. The exit status is 0 only for 200
(the server answers and reaches its database), 1 otherwise: the health
check of the platform container image.`,
		Example: `  thinlab platform health --url http://127.0.0.1:8080`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(baseURL, "/")+"/healthz", nil)
			if err != nil {
				return fmt.Errorf("--url %q: %w", baseURL, err)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return err
			}
			defer func() { _ = resp.Body.Close() }()
			body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
			if err != nil {
				return err
			}
			var h struct {
				Status  string `json:"status"`
				Version string `json:"version"`
			}
			_ = json.Unmarshal(body, &h) // shown as far as it parses
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("%s: %s %s", req.URL, resp.Status, strings.TrimSpace(string(body)))
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s: %s (version %s)\n", req.URL, h.Status, h.Version)
			return err
		},
	}
	cmd.Flags().StringVar(&baseURL, "url", envOr("THINLAB_PLATFORM_HEALTH_URL", "http://127.0.0.1:8080"), "the platform's base URL (env THINLAB_PLATFORM_HEALTH_URL)")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "give up after this long")
	return cmd
}
