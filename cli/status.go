package cli

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/thinlab/thinlab/sdk/agentapi"
)

// clientExamples is the root command's example block: the client commands
// people run most.
const clientExamples = `  thinlab context add dev --url http://localhost:2345 --token-stdin < token.txt
  thinlab status
  thinlab snapshot list
  thinlab clone create --id mytest --username alice
  thinlab connect mytest
  thinlab clone reset mytest --latest
  thinlab clone destroy mytest
  thinlab clone list -o json`

func newStatusCommand() *cobra.Command {
	var (
		cf     clientFlags
		output string
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the agent: instance health, pools, retrieval and clones",
		Example: `  thinlab status
  thinlab status -o json | jq .pools`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			st, err := request(&cf, func(c *agentapi.Client) (*agentapi.InstanceStatus, error) { return c.Status(cmd.Context()) })
			if err != nil {
				return err
			}
			return render(cmd, output, st, renderStatus)
		},
	}
	cf.register(cmd)
	addOutputFlag(cmd, &output)
	return asUsage(cmd)
}

func renderStatus(w io.Writer, st *agentapi.InstanceStatus, now time.Time) error {
	tw := newTable(w)
	if st.Status != nil {
		row(tw, "Instance:", st.Status.Code+"  "+st.Status.Message)
	}
	engine := orDash(st.Engine.Version)
	if st.Engine.Edition != "" {
		engine += " (" + st.Engine.Edition + ")"
	}
	if started := agentapi.TimeOf(st.Engine.StartedAt); !started.IsZero() {
		engine += ", up " + formatAge(started, now)
	}
	row(tw, "Engine:", engine)
	r := st.Retrieving
	retr := orDash(r.Mode) + ", " + orDash(r.Status)
	if t := agentapi.TimeOf(r.LastRefresh); !t.IsZero() {
		retr += ", last refresh " + formatAge(t, now) + " ago"
	}
	if t := agentapi.TimeOf(r.NextRefresh); !t.IsZero() {
		retr += ", next " + t.Format(time.RFC3339)
	}
	row(tw, "Retrieval:", retr)
	if r.Job != nil {
		row(tw, "Progress:", formatProgress(r.Job))
	}
	if r.Lag != nil {
		row(tw, "Lag:", formatLag(r.Lag, now))
	}
	for _, k := range slices.Sorted(maps.Keys(r.Alerts)) {
		al := r.Alerts[k]
		row(tw, "Alert:", fmt.Sprintf("%s %s: %s (%d times)", al.Level, k, al.Message, al.Count))
	}
	row(tw, "Clones:", fmt.Sprintf("%d (expected cloning time %.1fs)", st.Cloning.NumClones, st.Cloning.ExpectedCloningTime))
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(st.Pools) == 0 {
		return nil
	}
	if _, err := fmt.Fprintln(w); err != nil {
		return err
	}
	tw = newTable(w)
	row(tw, "POOL", "MODE", "STATUS", "DATA STATE AT", "SIZE", "FREE", "USED BY CLONES", "CLONES")
	for _, p := range st.Pools {
		dsa := "-"
		if t := agentapi.TimeOf(p.DataStateAt); !t.IsZero() {
			dsa = t.Format(time.RFC3339)
		}
		fs := p.FileSystem
		row(tw, p.Name, orDash(p.Mode), orDash(p.Status), dsa, formatBytes(fs.Size), formatBytes(fs.Free), formatBytes(fs.UsedByClones), fmt.Sprint(len(p.CloneList)))
	}
	return tw.Flush()
}

// formatLag is the standby's or subscription's lag line.
func formatLag(l *agentapi.RetrievalLag, now time.Time) string {
	out := orDash(l.Kind) + " "
	if l.Seconds == 0 && l.Bytes == 0 {
		out += "caught up"
	} else {
		out += fmt.Sprintf("%.0f s, %s behind", l.Seconds, formatBytes(uint64(max(l.Bytes, 0))))
	}
	if !l.SourceReachable {
		out += " (source unreachable)"
	}
	if t := agentapi.TimeOf(l.CheckedAt); !t.IsZero() {
		out += ", checked " + formatAge(t, now) + " ago"
	}
	return out
}
