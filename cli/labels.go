package cli

import (
	"context"
	"io"
	"maps"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/thinlab/thinlab/sdk/agentapi"
	"github.com/thinlab/thinlab/sdk/labels"
)

// Labels on clones, snapshots and branches: `... list --label k=v`
// filters, `... label ID k=v k2-` sets and removes, tables show a LABELS
// column when any row has labels.

func addLabelFilterFlag(cmd *cobra.Command, filter *[]string) {
	cmd.Flags().StringArrayVar(filter, "label", nil, "only those with this label: key=value, or key for any value (repeatable; all must match)")
}

// checkLabelFilter refuses a bad --label filter before any request.
func checkLabelFilter(filter []string) error {
	if _, err := labels.ParseSelector(filter); err != nil {
		return usageErrorf("--label: %v", err)
	}
	return nil
}

// labelColumn adds the LABELS header when the table shows labels.
func labelColumn(show bool, cols ...string) []string {
	if show {
		return append(cols, "LABELS")
	}
	return cols
}

// labelCell adds a row's labels when the table shows them.
func labelCell(show bool, set map[string]string, cols ...string) []string {
	if show {
		return append(cols, orDash(labels.String(set)))
	}
	return cols
}

const labelArgsHelp = `Arguments after the ID are changes: key=value sets a label, key- removes
one; other labels stay. With no changes the labels are shown.`

// labelChanges reads the change arguments (usage error on bad ones).
func labelChanges(args []string) (set map[string]string, remove []string, err error) {
	set, remove, err = labels.ParseChanges(args)
	if err != nil {
		return nil, nil, usageErrorf("%v", err)
	}
	return set, remove, nil
}

func renderLabels(w io.Writer, set map[string]string, _ time.Time) error {
	tw := newTable(w)
	row(tw, "KEY", "VALUE")
	for _, kv := range labelPairs(set) {
		row(tw, kv[0], kv[1])
	}
	return tw.Flush()
}

func labelPairs(set map[string]string) [][2]string {
	var out [][2]string
	for _, k := range slices.Sorted(maps.Keys(set)) {
		out = append(out, [2]string{k, set[k]})
	}
	return out
}

// labelCommand is `KIND label ID [k=v|k-]...`: read the labels, apply the
// changes, write them back (a concurrent change in between is lost: the
// agent keeps no version of labels).
func labelCommand(cf *clientFlags, use, short, example string, checkID func(string) error,
	get func(ctx context.Context, c *agentapi.Client, id string) (map[string]string, error),
	put func(ctx context.Context, c *agentapi.Client, id string, set map[string]string) (map[string]string, error),
) *cobra.Command {
	var output string
	return withOutput(&cobra.Command{
		Use:     use,
		Short:   short,
		Long:    short + ".\n\n" + labelArgsHelp,
		Example: example,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 || args[0] == "" {
				return usageErrorf("missing the ID (usage: %s)", cmd.UseLine())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			id := args[0]
			if err := checkID(id); err != nil {
				return err
			}
			set, remove, err := labelChanges(args[1:])
			if err != nil {
				return err
			}
			got, err := request(cf, func(c *agentapi.Client) (map[string]string, error) {
				old, err := get(cmd.Context(), c, id)
				if err != nil || len(args) == 1 {
					return old, err
				}
				return put(cmd.Context(), c, id, labels.Apply(old, set, remove))
			})
			if err != nil {
				return err
			}
			if got == nil {
				got = map[string]string{}
			}
			return render(cmd, output, got, renderLabels)
		},
	}, &output)
}

// withOutput adds -o to cmd.
func withOutput(cmd *cobra.Command, output *string) *cobra.Command {
	addOutputFlag(cmd, output)
	return cmd
}

func newCloneLabelCommand(cf *clientFlags) *cobra.Command {
	return labelCommand(cf, "label CLONE_ID [KEY=VALUE|KEY-]...", "Show or change a clone's labels",
		"  thinlab clone label mytest team=data ticket=DB-42\n  thinlab clone label mytest ticket-\n  thinlab clone list --label team=data",
		func(id string) error { return validateCloneID("CLONE_ID", id) },
		func(ctx context.Context, c *agentapi.Client, id string) (map[string]string, error) {
			cl, err := c.Clone(ctx, id)
			if err != nil {
				return nil, err
			}
			return cl.Labels, nil
		},
		func(ctx context.Context, c *agentapi.Client, id string, set map[string]string) (map[string]string, error) {
			cl, err := c.SetCloneLabels(ctx, id, set)
			if err != nil {
				return nil, err
			}
			return cl.Labels, nil
		})
}

func newSnapshotLabelCommand(cf *clientFlags) *cobra.Command {
	return labelCommand(cf, "label SNAPSHOT_ID [KEY=VALUE|KEY-]...", "Show or change a snapshot's labels",
		"  thinlab snapshot label 'pool1@snapshot_20240102030405' source=prod\n  thinlab snapshot list --label source=prod",
		func(id string) error { return validateSnapshotID("SNAPSHOT_ID", id) },
		func(ctx context.Context, c *agentapi.Client, id string) (map[string]string, error) {
			s, err := c.Snapshot(ctx, id)
			if err != nil {
				return nil, err
			}
			return s.Labels, nil
		},
		func(ctx context.Context, c *agentapi.Client, id string, set map[string]string) (map[string]string, error) {
			s, err := c.SetSnapshotLabels(ctx, id, set)
			if err != nil {
				return nil, err
			}
			return s.Labels, nil
		})
}

func newBranchLabelCommand(cf *clientFlags) *cobra.Command {
	return labelCommand(cf, "label BRANCH [KEY=VALUE|KEY-]...", "Show or change a branch's labels",
		"  thinlab branch label feature owner=ada\n  thinlab branch list --label owner=ada",
		func(name string) error { return validateBranchName("BRANCH", name) },
		func(ctx context.Context, c *agentapi.Client, name string) (map[string]string, error) {
			list, err := c.Branches(ctx)
			if err != nil {
				return nil, err
			}
			for _, b := range list {
				if b.Name == name {
					return b.Labels, nil
				}
			}
			return nil, usageErrorf("branch %q not found: see thinlab branch list", name)
		},
		func(ctx context.Context, c *agentapi.Client, name string, set map[string]string) (map[string]string, error) {
			v, err := c.SetBranchLabels(ctx, name, set)
			if err != nil {
				return nil, err
			}
			return v.Labels, nil
		})
}
