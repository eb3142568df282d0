package cli

import (
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/thinlab/thinlab/sdk/agentapi"
)

func newSnapshotCommand() *cobra.Command {
	var cf clientFlags
	cmd := groupCommand(&cobra.Command{
		Use:   "snapshot",
		Short: "List, create and delete the snapshots clones are made from",
		Example: `  thinlab snapshot list
  thinlab snapshot create
  thinlab snapshot delete 'pool1@snapshot_20240102030405'`,
	})
	cf.register(cmd)
	cmd.AddCommand(newSnapshotListCommand(&cf), newSnapshotCreateCommand(&cf), newSnapshotDeleteCommand(&cf), newSnapshotDiffCommand(&cf), newSnapshotLabelCommand(&cf),
		newSnapshotExportCommand(&cf), newSnapshotImportCommand(&cf), newSnapshotShipCommand(&cf), newSnapshotFetchCommand(&cf))
	return cmd
}

func newSnapshotListCommand(cf *clientFlags) *cobra.Command {
	var (
		output string
		filter []string
	)
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List snapshots, newest first",
		Example: "  thinlab snapshot list\n  thinlab snapshot list -o json | jq -r '.[0].id'",
		Args:    exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			if err := checkLabelFilter(filter); err != nil {
				return err
			}
			snaps, err := request(cf, func(c *agentapi.Client) ([]agentapi.Snapshot, error) {
				return c.SnapshotsLabeled(cmd.Context(), filter...)
			})
			if err != nil {
				return err
			}
			return renderList(cmd, output, snaps, renderSnapshots)
		},
	}
	addLabelFilterFlag(cmd, &filter)
	addOutputFlag(cmd, &output)
	return cmd
}

func renderSnapshots(w io.Writer, snaps []agentapi.Snapshot, now time.Time) error {
	tw := newTable(w)
	withLabels := slices.ContainsFunc(snaps, func(s agentapi.Snapshot) bool { return len(s.Labels) > 0 })
	row(tw, labelColumn(withLabels, "ID", "POOL", "DATA STATE AT", "CREATED", "CLONES", "SIZE", "LOGICAL SIZE", "PROTECTED")...)
	for _, s := range snaps {
		dsa := "-"
		if t := agentapi.TimeOf(s.DataStateAt); !t.IsZero() {
			dsa = t.Format(time.RFC3339)
		}
		row(tw, labelCell(withLabels, s.Labels, s.ID, orDash(s.Pool), dsa, formatAge(agentapi.TimeOf(s.CreatedAt), now), fmt.Sprint(s.NumClones),
			formatBytes(s.PhysicalSize), formatBytes(s.LogicalSize), yesNo(s.Protected))...)
	}
	return tw.Flush()
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func newSnapshotCreateCommand(cf *clientFlags) *cobra.Command {
	var output, pool string
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Snapshot a pool's current data (the first pool by default)",
		Example: `  thinlab snapshot create
  thinlab snapshot create --pool pool2 -o json`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			s, err := request(cf, func(c *agentapi.Client) (*agentapi.PoolSnapshot, error) { return c.CreateSnapshot(cmd.Context(), pool) })
			if err != nil {
				return err
			}
			if output == outputJSON {
				return writeJSON(cmd.OutOrStdout(), s)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "Snapshot %s created (pool %s, data state at %s)\n", s.ID, s.Pool, s.DataStateAt.Format(time.RFC3339))
			return err
		},
	}
	cmd.Flags().StringVar(&pool, "pool", "", "pool to snapshot (default: the first pool)")
	addOutputFlag(cmd, &output)
	return cmd
}

func newSnapshotDeleteCommand(cf *clientFlags) *cobra.Command {
	var (
		output string
		force  bool
	)
	cmd := &cobra.Command{
		Use:     "delete SNAPSHOT_ID",
		Aliases: []string{"rm"},
		Short:   "Delete a snapshot (refused while clones use it, unless --force)",
		Example: `  thinlab snapshot delete 'pool1@snapshot_20240102030405'
  thinlab snapshot delete 'pool1@snapshot_20240102030405' --force   # destroys its clones too`,
		Args: exactArgs("SNAPSHOT_ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			if err := validateSnapshotID("SNAPSHOT_ID", args[0]); err != nil {
				return err
			}
			a, err := cf.connect()
			if err != nil {
				return err
			}
			if err := a.api.DeleteSnapshot(cmd.Context(), args[0], force); err != nil {
				return a.explain(err)
			}
			msg := "Deleted snapshot " + args[0]
			if output == outputJSON {
				return writeJSON(cmd.OutOrStdout(), agentapi.Response{Status: "OK", Message: msg})
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), msg)
			return err
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "also destroy the clones made from the snapshot")
	addOutputFlag(cmd, &output)
	return cmd
}
