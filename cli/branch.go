package cli

import (
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/thinlab/thinlab/sdk/agentapi"
)

// branchNameRe is DLE's branch-name rule (letters of any script, digits,
// '_' and '-'), checked before a name goes into a URL path.
var branchNameRe = regexp.MustCompile(`^[\p{L}0-9_-]{1,100}$`)

func validateBranchName(what, name string) error {
	if !branchNameRe.MatchString(name) {
		return usageErrorf("%s %q: use letters, digits, '_' and '-' (at most 100; no spaces, slashes or dots)", what, name)
	}
	return nil
}

func newBranchCommand() *cobra.Command {
	var cf clientFlags
	cmd := groupCommand(&cobra.Command{
		Use:   "branch",
		Short: "Branches of data: list, create, delete and show their log",
		Long: `A branch is a name pointing at a snapshot (its head). Clones created with
` + "`thinlab clone create --branch B`" + ` start from B's head; ` + "`thinlab commit`" + `
snapshots a clone's current state onto its branch and moves the head
there, so that the next clone on the branch sees the committed data.
The default branch "main" follows the newest data refresh.`,
		Example: `  thinlab branch list
  thinlab branch create feature            # from the head of main
  thinlab branch create hotfix --from feature
  thinlab branch log feature
  thinlab branch delete feature`,
	})
	cf.register(cmd)
	cmd.AddCommand(newBranchListCommand(&cf), newBranchCreateCommand(&cf), newBranchDeleteCommand(&cf), newBranchLogCommand(&cf), newBranchProtectCommand(&cf), newBranchLabelCommand(&cf))
	return cmd
}

func newBranchListCommand(cf *clientFlags) *cobra.Command {
	var (
		output string
		filter []string
	)
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List branches, newest head first",
		Args:    exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			if err := checkLabelFilter(filter); err != nil {
				return err
			}
			list, err := request(cf, func(c *agentapi.Client) ([]agentapi.BranchView, error) {
				return c.BranchesLabeled(cmd.Context(), filter...)
			})
			if err != nil {
				return err
			}
			return renderList(cmd, output, list, renderBranches)
		},
	}
	addLabelFilterFlag(cmd, &filter)
	addOutputFlag(cmd, &output)
	return cmd
}

func renderBranches(w io.Writer, list []agentapi.BranchView, _ time.Time) error {
	tw := newTable(w)
	withLabels := slices.ContainsFunc(list, func(b agentapi.BranchView) bool { return len(b.Labels) > 0 })
	row(tw, labelColumn(withLabels, "NAME", "HEAD", "DATA STATE AT", "SNAPSHOTS", "PARENT")...)
	for _, b := range list {
		row(tw, labelCell(withLabels, b.Labels, b.Name, b.SnapshotID, compactToRFC3339(b.DataStateAt), fmt.Sprint(b.NumSnapshots), orDash(b.Parent))...)
	}
	return tw.Flush()
}

// compactToRFC3339 shows DLE's YYYYMMDDhhmmss (UTC) readably.
func compactToRFC3339(s string) string {
	t, err := time.Parse("20060102150405", s)
	if err != nil {
		return orDash(s)
	}
	return t.UTC().Format(time.RFC3339)
}

func newBranchCreateCommand(cf *clientFlags) *cobra.Command {
	var output, from, snapshot string
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a branch at the head of another branch (main by default) or at a snapshot",
		Example: `  thinlab branch create feature
  thinlab branch create hotfix --from feature
  thinlab branch create audit --snapshot 'pool1@snapshot_20240102030405'`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			if err := validateBranchName("NAME", args[0]); err != nil {
				return err
			}
			req := agentapi.CreateBranchRequest{BranchName: args[0], BaseBranch: from}
			if snapshot != "" {
				if cmd.Flags().Changed("from") {
					return usageErrorf("use either --from or --snapshot, not both")
				}
				if err := validateSnapshotID("--snapshot", snapshot); err != nil {
					return err
				}
				req.BaseBranch, req.SnapshotID = "", snapshot
			} else if err := validateBranchName("--from", from); err != nil {
				return err
			}
			res, err := request(cf, func(c *agentapi.Client) (*agentapi.BranchName, error) { return c.CreateBranch(cmd.Context(), req) })
			if err != nil {
				return err
			}
			if output == outputJSON {
				return writeJSON(cmd.OutOrStdout(), res)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "Branch %s created\n", res.Name)
			return err
		},
	}
	cmd.Flags().StringVar(&from, "from", "main", "branch whose head the new branch starts at")
	cmd.Flags().StringVar(&snapshot, "snapshot", "", "snapshot the new branch starts at (instead of --from)")
	addOutputFlag(cmd, &output)
	return cmd
}

func newBranchDeleteCommand(cf *clientFlags) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:     "delete NAME",
		Aliases: []string{"rm"},
		Short:   "Delete a branch and the snapshots committed on it (refused for main and while clones use it)",
		Args:    exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			if err := validateBranchName("NAME", args[0]); err != nil {
				return err
			}
			if _, err := request(cf, func(c *agentapi.Client) (struct{}, error) {
				return struct{}{}, c.DeleteBranch(cmd.Context(), args[0])
			}); err != nil {
				return err
			}
			msg := "Deleted branch " + args[0]
			if output == outputJSON {
				return writeJSON(cmd.OutOrStdout(), agentapi.Response{Status: "OK", Message: msg})
			}
			_, err := fmt.Fprintln(cmd.OutOrStdout(), msg)
			return err
		},
	}
	addOutputFlag(cmd, &output)
	return cmd
}

func newBranchProtectCommand(cf *clientFlags) *cobra.Command {
	var (
		output  string
		off     bool
		minutes int
	)
	cmd := &cobra.Command{
		Use:   "protect NAME",
		Short: "Protect a branch from deletion (or --off)",
		Example: `  thinlab branch protect feature
  thinlab branch protect feature --minutes 1440
  thinlab branch protect feature --off`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			if err := validateBranchName("NAME", args[0]); err != nil {
				return err
			}
			if off && cmd.Flags().Changed("minutes") {
				return usageErrorf("--minutes needs protection on; drop --off")
			}
			m, given, err := protectionMinutes(cmd, "minutes", minutes)
			if err != nil {
				return err
			}
			var dur *uint
			if given {
				dur = &m
			}
			v, err := request(cf, func(c *agentapi.Client) (*agentapi.BranchView, error) {
				return c.ProtectBranch(cmd.Context(), args[0], !off, dur)
			})
			if err != nil {
				return err
			}
			if output == outputJSON {
				return writeJSON(cmd.OutOrStdout(), v)
			}
			msg := "Branch " + v.Name + " is not protected"
			if v.Protected {
				msg = "Branch " + v.Name + " is protected"
				if t := agentapi.TimeOf(v.ProtectedTill); !t.IsZero() {
					msg += " until " + t.Format(time.RFC3339)
				}
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), msg)
			return err
		},
	}
	cmd.Flags().BoolVar(&off, "off", false, "remove protection")
	cmd.Flags().IntVar(&minutes, "minutes", 0, "protection length; 0 = no expiry (capped by the agent's maximum)")
	addOutputFlag(cmd, &output)
	return cmd
}

func newBranchLogCommand(cf *clientFlags) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "log [NAME]",
		Short: "Show a branch's snapshots, head first (main by default)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			name := "main"
			if len(args) == 1 {
				name = args[0]
			}
			if err := validateBranchName("NAME", name); err != nil {
				return err
			}
			log, err := request(cf, func(c *agentapi.Client) ([]agentapi.SnapshotDetails, error) { return c.BranchLog(cmd.Context(), name) })
			if err != nil {
				return err
			}
			return renderList(cmd, output, log, renderLog)
		},
	}
	addOutputFlag(cmd, &output)
	return cmd
}

// renderLog prints a branch's log like git log: one block per snapshot.
func renderLog(w io.Writer, log []agentapi.SnapshotDetails, _ time.Time) error {
	for i, d := range log {
		if i > 0 {
			if _, err := fmt.Fprintln(w); err != nil {
				return err
			}
		}
		lines := []string{"snapshot " + d.ID}
		if len(d.Branch) > 0 {
			lines[0] += fmt.Sprintf(" (%s)", joinComma(d.Branch))
		}
		if d.Author != "" {
			lines = append(lines, "Author:   "+d.Author)
		}
		lines = append(lines, "Date:     "+compactToRFC3339(d.DataStateAt))
		if len(d.Clones) > 0 {
			lines = append(lines, "Clones:   "+joinComma(d.Clones))
		}
		lines = append(lines, "", "    "+orDash(d.Message))
		for _, l := range lines {
			if _, err := fmt.Fprintln(w, l); err != nil {
				return err
			}
		}
	}
	return nil
}

func joinComma(s []string) string { return strings.Join(s, ", ") }

func newCommitCommand() *cobra.Command {
	var (
		cf      clientFlags
		output  string
		message string
	)
	cmd := &cobra.Command{
		Use:   "commit CLONE -m MESSAGE",
		Short: "Snapshot a clone's current state onto its branch",
		Long: `Commit takes a snapshot of the clone as it is now (the clone keeps running)
and moves the clone's branch there: clones created on the branch from now
on start from this state. The clone's postgres is checkpointed first; the
snapshot is crash-consistent, like a server after a power cut, and
postgres recovers it when a clone of it starts.`,
		Example: `  thinlab commit mytest -m "add the orders index"
  thinlab commit mytest -m "migrated" -o json | jq -r .snapshotID`,
		Args: exactArgs("CLONE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			if err := validateCloneID("CLONE", args[0]); err != nil {
				return err
			}
			if message == "" {
				return usageErrorf("-m/--message is required: say what the commit holds")
			}
			id, err := request(&cf, func(c *agentapi.Client) (string, error) { return c.Commit(cmd.Context(), args[0], message) })
			if err != nil {
				return err
			}
			if output == outputJSON {
				return writeJSON(cmd.OutOrStdout(), agentapi.CommitResponse{SnapshotID: id})
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "Committed clone %s as snapshot %s\n", args[0], id)
			return err
		},
	}
	cf.register(cmd)
	cmd.Flags().StringVarP(&message, "message", "m", "", "what the commit holds (required)")
	addOutputFlag(cmd, &output)
	return cmd
}
