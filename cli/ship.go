package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/thinlab/thinlab/sdk/agentapi"
)

// The snapshot shipping commands (docs/agent-api.md, Shipping snapshots).

func newSnapshotExportCommand(cf *clientFlags) *cobra.Command {
	var base, file string
	cmd := &cobra.Command{
		Use:   "export SNAPSHOT_ID",
		Short: "Write a snapshot with its metadata as a stream (for snapshot import on another agent)",
		Example: `  thinlab snapshot export 'pool1@snapshot_20240102030405' -f s1.stream
  thinlab snapshot export 'pool1@snapshot_20240103030405' --base 'pool1@snapshot_20240102030405' > s2.stream`,
		Args: exactArgs("SNAPSHOT_ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := validateSnapshotID("SNAPSHOT_ID", args[0]); err != nil {
				return err
			}
			if base != "" {
				if err := validateSnapshotID("--base", base); err != nil {
					return err
				}
			}
			a, err := cf.connect()
			if err != nil {
				return err
			}
			if file == "" || file == "-" {
				if err := a.api.ExportSnapshot(cmd.Context(), args[0], base, cmd.OutOrStdout()); err != nil {
					return a.explain(err)
				}
				return nil
			}
			// Through a temporary name: a cut export leaves no file that
			// looks complete.
			tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".part*")
			if err != nil {
				return err
			}
			err = a.api.ExportSnapshot(cmd.Context(), args[0], base, tmp)
			if cerr := tmp.Close(); err == nil {
				err = cerr
			}
			if err == nil {
				err = os.Rename(tmp.Name(), file)
			}
			if err != nil {
				_ = os.Remove(tmp.Name()) // the error below is what matters
				return a.explain(err)
			}
			_, err = fmt.Fprintf(cmd.ErrOrStderr(), "Exported %s to %s\n", args[0], file)
			return err
		},
	}
	cmd.Flags().StringVar(&base, "base", "", "send only the changes since this snapshot (btrfs pools; the receiver must have it)")
	cmd.Flags().StringVarP(&file, "file", "f", "", "write the stream to this file (default: standard output)")
	return cmd
}

func newSnapshotImportCommand(cf *clientFlags) *cobra.Command {
	var output, pool, file string
	cmd := &cobra.Command{
		Use:   "import",
		Short: "Make a snapshot from a stream of snapshot export (nothing is left if the stream is cut)",
		Example: `  thinlab snapshot import -f s1.stream
  ssh host1 thinlab snapshot export 'pool1@snapshot_20240102030405' | thinlab snapshot import --pool pool1`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			in := cmd.InOrStdin()
			if file != "" && file != "-" {
				f, err := os.Open(file) //nolint:gosec // G304: the file the user named
				if err != nil {
					return err
				}
				defer func() { _ = f.Close() }()
				in = f
			}
			s, err := request(cf, func(c *agentapi.Client) (*agentapi.Snapshot, error) { return c.ImportSnapshot(cmd.Context(), pool, in) })
			if err != nil {
				return err
			}
			return printImported(cmd, output, s)
		},
	}
	cmd.Flags().StringVar(&pool, "pool", "", "pool to import into (default: the agent's first pool)")
	cmd.Flags().StringVarP(&file, "file", "f", "", "read the stream from this file (default: standard input)")
	addOutputFlag(cmd, &output)
	return cmd
}

func printImported(cmd *cobra.Command, output string, s *agentapi.Snapshot) error {
	if output == outputJSON {
		return writeJSON(cmd.OutOrStdout(), s)
	}
	_, err := fmt.Fprintf(cmd.OutOrStdout(), "Snapshot %s imported\n", s.ID)
	return err
}

func newSnapshotShipCommand(cf *clientFlags) *cobra.Command {
	var output, base, to, tokenEnv, toPool, s3Key string
	cmd := &cobra.Command{
		Use:   "ship SNAPSHOT_ID",
		Short: "Send a snapshot from the agent to another agent, or into the agent's shipping.s3 bucket",
		Example: `  RECEIVER_TOKEN=... thinlab snapshot ship 'pool1@snapshot_20240102030405' --to https://agent2:2345 --to-token-env RECEIVER_TOKEN
  thinlab snapshot ship 'pool1@snapshot_20240103030405' --base 'pool1@snapshot_20240102030405' --s3-key prod/s2`,
		Args: exactArgs("SNAPSHOT_ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			if err := validateSnapshotID("SNAPSHOT_ID", args[0]); err != nil {
				return err
			}
			req := agentapi.ShipRequest{ID: args[0], Base: base}
			switch {
			case (to == "") == (s3Key == ""):
				return usageErrorf("give exactly one of --to (another agent) and --s3-key (the agent's shipping.s3 bucket)")
			case to != "":
				if tokenEnv == "" || os.Getenv(tokenEnv) == "" {
					return usageErrorf("--to-token-env: name an environment variable holding the receiving agent's token (a token in the command line would show in ps)")
				}
				req.To = &agentapi.ShipTarget{URL: to, Token: os.Getenv(tokenEnv), Pool: toPool}
			default:
				req.S3 = &agentapi.S3Object{Key: s3Key}
			}
			res, err := request(cf, func(c *agentapi.Client) (*agentapi.ShipResult, error) { return c.ShipSnapshot(cmd.Context(), req) })
			if err != nil {
				return err
			}
			if output == outputJSON {
				return writeJSON(cmd.OutOrStdout(), res)
			}
			kind := "full"
			if res.Base != "" {
				kind = "incremental since " + res.Base
			}
			if res.Snapshot != nil {
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "Shipped %s (%s) to %s as %s\n", args[0], kind, to, res.Snapshot.ID)
			} else {
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "Shipped %s (%s) to S3 key %s (%d bytes)\n", args[0], kind, res.Key, res.Bytes)
			}
			return err
		},
	}
	cmd.Flags().StringVar(&base, "base", "", "send only the changes since this snapshot (btrfs pools; the receiver must have it)")
	cmd.Flags().StringVar(&to, "to", "", "the receiving agent's API URL")
	cmd.Flags().StringVar(&tokenEnv, "to-token-env", "", "environment variable holding the receiving agent's verification token")
	cmd.Flags().StringVar(&toPool, "to-pool", "", "the receiving agent's pool (default: its first)")
	cmd.Flags().StringVar(&s3Key, "s3-key", "", "store the stream at this key of the agent's shipping.s3 bucket instead")
	addOutputFlag(cmd, &output)
	return cmd
}

func newSnapshotFetchCommand(cf *clientFlags) *cobra.Command {
	var output, pool string
	cmd := &cobra.Command{
		Use:     "fetch S3_KEY",
		Short:   "Import a snapshot stream from the agent's shipping.s3 bucket",
		Example: `  thinlab snapshot fetch prod/s2 --pool pool1`,
		Args:    exactArgs("S3_KEY"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			if args[0] == "" {
				return errors.New("S3_KEY is empty")
			}
			s, err := request(cf, func(c *agentapi.Client) (*agentapi.Snapshot, error) {
				return c.FetchSnapshot(cmd.Context(), agentapi.FetchRequest{S3: agentapi.S3Object{Key: args[0]}, Pool: pool})
			})
			if err != nil {
				return err
			}
			return printImported(cmd, output, s)
		},
	}
	cmd.Flags().StringVar(&pool, "pool", "", "pool to import into (default: the agent's first pool)")
	addOutputFlag(cmd, &output)
	return cmd
}
