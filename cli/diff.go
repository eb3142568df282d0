package cli

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/thinlab/thinlab/sdk/agentapi"
)

func newSnapshotDiffCommand(cf *clientFlags) *cobra.Command {
	var output, db string
	cmd := &cobra.Command{
		Use:   "diff FROM_SNAPSHOT TO_SNAPSHOT",
		Short: "Show which tables differ between two snapshots and the schema change as SQL",
		Long: `Compares one database of two snapshots: the tables added, dropped or changed
(total size; exact row counts for tables under 16 MiB) and the DDL that
turns the first schema into the second. The agent reads each snapshot
through a short-lived clone of it.`,
		Example: `  thinlab snapshot diff 'pool1@snapshot_20240101000000' 'pool1@snapshot_20240102000000'
  thinlab snapshot diff A B --db app -o json | jq -r '.ddl[]'`,
		Args: exactArgs("FROM_SNAPSHOT", "TO_SNAPSHOT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			for i, what := range []string{"FROM_SNAPSHOT", "TO_SNAPSHOT"} {
				if err := validateSnapshotID(what, args[i]); err != nil {
					return err
				}
			}
			d, err := request(cf, func(c *agentapi.Client) (*agentapi.Diff, error) {
				return c.DiffSnapshots(cmd.Context(), args[0], args[1], db)
			})
			if err != nil {
				return err
			}
			return render(cmd, output, d, renderDiff)
		},
	}
	cmd.Flags().StringVar(&db, "db", "", "database to compare (default: the agent's default database)")
	addOutputFlag(cmd, &output)
	return cmd
}

func newCloneDiffCommand(cf *clientFlags) *cobra.Command {
	var output, db string
	cmd := &cobra.Command{
		Use:   "diff CLONE",
		Short: "Show what a clone changed since its snapshot: tables and the schema change as SQL",
		Example: `  thinlab clone diff mytest
  thinlab clone diff mytest --db app -o json`,
		Args: exactArgs("CLONE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			if err := validateCloneID("CLONE", args[0]); err != nil {
				return err
			}
			d, err := request(cf, func(c *agentapi.Client) (*agentapi.Diff, error) {
				return c.DiffClone(cmd.Context(), args[0], db)
			})
			if err != nil {
				return err
			}
			return render(cmd, output, d, renderDiff)
		},
	}
	cmd.Flags().StringVar(&db, "db", "", "database to compare (default: the clone's)")
	addOutputFlag(cmd, &output)
	return cmd
}

func renderDiff(w io.Writer, d *agentapi.Diff, _ time.Time) error {
	if _, err := fmt.Fprintf(w, "Database %s: %s -> %s\n\n", d.Database, d.From, d.To); err != nil {
		return err
	}
	if len(d.Tables) == 0 {
		if _, err := fmt.Fprintln(w, "No table differs."); err != nil {
			return err
		}
	} else {
		tw := newTable(w)
		row(tw, "TABLE", "CHANGE", "SIZE", "ROWS", "SCHEMA")
		for _, t := range d.Tables {
			row(tw, t.Schema+"."+t.Table, t.Change,
				formatBytes(nonNegative(t.SizeFrom))+" -> "+formatBytes(nonNegative(t.SizeTo)),
				rowsText(t.RowsFrom)+" -> "+rowsText(t.RowsTo), yesNo(t.SchemaChanged || t.Change != agentapi.TableChanged))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(d.DDL) > 0 {
		if _, err := fmt.Fprintln(w, "\n-- schema change"); err != nil {
			return err
		}
		for _, s := range d.DDL {
			if _, err := fmt.Fprintln(w, s); err != nil {
				return err
			}
		}
	}
	return nil
}

func nonNegative(n int64) uint64 {
	if n < 0 {
		return 0
	}
	return uint64(n)
}

func rowsText(n *int64) string {
	if n == nil {
		return "?"
	}
	return fmt.Sprint(*n)
}
