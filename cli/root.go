// Package cli holds the thinlab command tree (cobra). Commands are grouped
// by subject, one file per group (agent.go, clone.go, snapshot.go, ...);
// this file wires them together and holds the global flags.
package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/thinlab/thinlab/internal/version"
)

// globalFlags are shared by every command.
type globalFlags struct {
	logLevel string
}

// NewRootCommand builds the whole command tree.
func NewRootCommand() *cobra.Command {
	var g globalFlags
	root := &cobra.Command{
		Use:           "thinlab",
		Short:         "Thin clones of PostgreSQL for every engineer, test and CI job",
		Example:       clientExamples,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			return setupLogging(g.logLevel)
		},
	}
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", envOr("THINLAB_LOG_LEVEL", "info"), "log level: debug, info, warn or error (env THINLAB_LOG_LEVEL)")
	root.AddCommand(
		newVersionCommand(),
		newAgentCommand(),
		newPlatformCommand(),
		newStatusCommand(),
		newSnapshotCommand(),
		newCloneCommand(),
		newBranchCommand(),
		newCommitCommand(),
		newConnectCommand(),
		newPortForwardCommand(),
		newContextCommand(),
	)
	return root
}

// Execute runs the command tree with args and returns the exit code.
func Execute(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := NewRootCommand()
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		if exit, ok := errors.AsType[exitCodeError](err); ok {
			return exit.code
		}
		return 1
	}
	return 0
}

// exitCodeError lets a command choose its exit code.
type exitCodeError struct {
	code int
	err  error
}

func (e exitCodeError) Error() string { return e.err.Error() }
func (e exitCodeError) Unwrap() error { return e.err }

func setupLogging(level string) error {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return fmt.Errorf("--log-level %q: use debug, info, warn or error", level)
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})))
	return nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the thinlab version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), "thinlab", version.Version)
			return err
		},
	}
}
