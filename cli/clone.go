package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/thinlab/thinlab/cli/clientconfig"
	"github.com/thinlab/thinlab/sdk/agentapi"
	"github.com/thinlab/thinlab/sdk/labels"
)

// EnvClonePassword supplies a clone password without a flag or a prompt.
const envClonePassword = "THINLAB_CLONE_PASSWORD" //nolint:gosec // G101: the name of an environment variable, not a password

// IDs go into URL paths unescaped (as DLE expects), so they are checked
// here with DLE's own patterns before any request is sent.
var (
	cloneIDRe    = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)
	snapshotIDRe = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9_.:/-]*@[a-zA-Z0-9_][a-zA-Z0-9_.:-]*$`)
	confKeyRe    = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_.]*$`)
)

func validateCloneID(what, id string) error {
	if !cloneIDRe.MatchString(id) {
		return usageErrorf("%s %q: use letters, digits, '_', '.' and '-', starting with a letter or digit", what, id)
	}
	return nil
}

func validateSnapshotID(what, id string) error {
	if !snapshotIDRe.MatchString(id) {
		return usageErrorf("%s %q is not a snapshot ID (like pool1@snapshot_20240102030405); `thinlab snapshot list` shows them", what, id)
	}
	return nil
}

// parseExtraConf turns repeated --extra-conf key=value into a map (empty,
// and so left out of the request, without any).
func parseExtraConf(pairs []string) (map[string]string, error) {
	conf := make(map[string]string, len(pairs))
	for _, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, usageErrorf("--extra-conf %q: use key=value, e.g. --extra-conf work_mem=64MB", p)
		}
		if !confKeyRe.MatchString(k) {
			return nil, usageErrorf("--extra-conf %q: %q is not a postgres setting name", p, k)
		}
		if _, dup := conf[k]; dup {
			return nil, usageErrorf("--extra-conf: %s is given twice", k)
		}
		conf[k] = v
	}
	return conf, nil
}

func newCloneCommand() *cobra.Command {
	var cf clientFlags
	cmd := groupCommand(&cobra.Command{
		Use:   "clone",
		Short: "Create, inspect, reset, protect and destroy thin clones",
		Example: `  thinlab clone create --id mytest --username alice
  thinlab clone list
  thinlab clone status mytest
  thinlab clone reset mytest --latest
  thinlab clone protect mytest --minutes 120
  thinlab clone destroy mytest`,
	})
	cf.register(cmd)
	cmd.AddCommand(
		newCloneCreateCommand(&cf),
		newCloneListCommand(&cf),
		newCloneStatusCommand(&cf),
		newCloneResetCommand(&cf),
		newCloneReplicasCommand(&cf),
		newCloneProtectCommand(&cf),
		newCloneDestroyCommand(&cf),
		newCloneDiffCommand(&cf),
		newCloneLabelCommand(&cf),
	)
	return cmd
}

// waitFlags are shared by the commands that wait for a clone.
type waitFlags struct {
	noWait  bool
	timeout time.Duration
}

func (w *waitFlags) register(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&w.noWait, "no-wait", false, "return as soon as the agent accepted the request")
	cmd.Flags().DurationVar(&w.timeout, "wait-timeout", 10*time.Minute, "give up waiting after this long (the operation continues on the agent)")
}

// pollInterval is how often the CLI asks for a clone's state while waiting.
const pollInterval = 500 * time.Millisecond

// errCloneGone is how waitClone with gone set reports that the clone
// disappeared; waitCloneGone turns it into success.
var errCloneGone = errors.New("clone is gone")

// waitCloneGone waits until the clone is destroyed.
func waitCloneGone(ctx context.Context, a *apiConn, stderr io.Writer, id, label string) error {
	if _, err := waitClone(ctx, a, stderr, id, label, true); !errors.Is(err, errCloneGone) {
		return err
	}
	return nil
}

// waitClone polls until the clone leaves its transitional state, showing
// progress on stderr. It returns the clone when OK and an error naming the
// reason when it ends FATAL. With gone, success is the clone disappearing,
// reported as errCloneGone (use waitCloneGone).
func waitClone(ctx context.Context, a *apiConn, stderr io.Writer, id, label string, gone bool) (*agentapi.Clone, error) {
	p := startProgress(stderr, label)
	ctxErr := func(last string) error {
		p.Stop("gave up")
		return fmt.Errorf("stopped waiting for clone %s (status %s): %w; the agent carries on, follow it with `thinlab clone status %s`", id, last, context.Cause(ctx), id)
	}
	last := ""
	for {
		cl, err := a.api.Clone(ctx, id)
		switch {
		case gone && agentapi.IsNotFound(err):
			p.Stop("done")
			return nil, errCloneGone
		case err != nil && ctx.Err() != nil:
			return nil, ctxErr(last)
		case err != nil:
			p.Stop("failed")
			return nil, a.explain(err)
		}
		last = cl.Status.Code
		p.Update(last)
		switch {
		case cl.Status.Code == agentapi.StatusFatal:
			p.Stop("failed")
			return cl, fmt.Errorf("clone %s failed: %s", id, cl.Status.Message)
		case cl.Status.Code == agentapi.StatusOK && !gone:
			p.Stop("ready")
			return cl, nil
		}
		t := time.NewTimer(pollInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctxErr(last)
		case <-t.C:
		}
	}
}

func withWaitTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeoutCause(ctx, d, fmt.Errorf("--wait-timeout %s passed", d))
}

// cloneDetailsWriter prints one clone as "key: value" lines.
func renderClone(w io.Writer, c *agentapi.Clone, now time.Time) error {
	tw := newTable(w)
	row(tw, "ID:", c.ID)
	status := c.Status.Code + "  " + c.Status.Message
	if c.Hibernated {
		status += "  (hibernated: its postgres starts on the next connection)"
	}
	row(tw, "Status:", status)
	snap := "-"
	if c.Snapshot != nil && c.Snapshot.ID != "" {
		snap = c.Snapshot.ID
		if t := agentapi.TimeOf(c.Snapshot.DataStateAt); !t.IsZero() {
			snap += " (data state at " + t.Format(time.RFC3339) + ")"
		}
	}
	row(tw, "Snapshot:", snap)
	if c.Pool != "" {
		row(tw, "Pool:", c.Pool)
	}
	row(tw, "Host:", orDash(c.DB.Host))
	row(tw, "Port:", orDash(c.DB.Port))
	row(tw, "User:", orDash(c.DB.Username))
	row(tw, "Database:", orDash(c.DB.DBName))
	row(tw, "Connection:", orDash(c.DB.ConnStr))
	prot := yesNo(c.Protected)
	if t := agentapi.TimeOf(c.ProtectedTill); c.Protected && !t.IsZero() {
		prot += " (until " + t.Format(time.RFC3339) + ")"
	}
	row(tw, "Protected:", prot)
	if len(c.Labels) > 0 {
		row(tw, "Labels:", labels.String(c.Labels))
	}
	row(tw, "Created:", formatAge(agentapi.TimeOf(c.CreatedAt), now)+" ago")
	if t := agentapi.TimeOf(c.DeleteAt); !t.IsZero() {
		row(tw, "Idle deletion at:", t.Format(time.RFC3339))
	}
	row(tw, "Diff size:", formatBytes(c.Metadata.CloneDiffSize))
	row(tw, "Logical size:", formatBytes(c.Metadata.LogicalSize))
	row(tw, "Cloning time:", fmt.Sprintf("%.2fs", c.Metadata.CloningTime))
	return tw.Flush()
}

func renderClones(w io.Writer, clones []agentapi.Clone, now time.Time) error {
	tw := newTable(w)
	withLabels := slices.ContainsFunc(clones, func(c agentapi.Clone) bool { return len(c.Labels) > 0 })
	row(tw, labelColumn(withLabels, "ID", "STATUS", "SNAPSHOT", "PORT", "USER", "PROTECTED", "AGE", "DIFF SIZE")...)
	for _, c := range clones {
		snap := "-"
		if c.Snapshot != nil && c.Snapshot.ID != "" {
			snap = c.Snapshot.ID
		}
		status := c.Status.Code
		if c.Hibernated {
			// OK to DLE clients; shown apart here.
			status = "HIBERNATED"
		}
		row(tw, labelCell(withLabels, c.Labels, c.ID, status, snap, orDash(c.DB.Port), orDash(c.DB.Username), yesNo(c.Protected),
			formatAge(agentapi.TimeOf(c.CreatedAt), now), formatBytes(c.Metadata.CloneDiffSize))...)
	}
	return tw.Flush()
}

// printClone prints a clone in the chosen format.
func printClone(cmd *cobra.Command, output string, c *agentapi.Clone) error {
	return render(cmd, output, c, renderClone)
}

// cloneIDArg checks the -o value and the CLONE_ID argument, the first
// steps of every command on one clone, and returns the ID.
func cloneIDArg(output string, args []string) (string, error) {
	if err := checkOutput(output); err != nil {
		return "", err
	}
	if err := validateCloneID("CLONE_ID", args[0]); err != nil {
		return "", err
	}
	return args[0], nil
}

// protectionMinutes is the value of a protection-length flag; given is
// false when the flag was not set (the agent's lease applies).
func protectionMinutes(cmd *cobra.Command, flag string, minutes int) (m uint, given bool, err error) {
	if !cmd.Flags().Changed(flag) {
		return 0, false, nil
	}
	if minutes < 0 {
		return 0, false, usageErrorf("--%s must be 0 (no expiry) or more", flag)
	}
	return uint(minutes), true, nil
}

func newCloneCreateCommand(cf *clientFlags) *cobra.Command {
	var (
		output              string
		wf                  waitFlags
		id, snapshot, pool  string
		branchName          string
		username, password  string
		dbName              string
		restricted, protect bool
		protectMinutes      int
		extraConf           []string
		labelArgs           []string
		savePassword        bool
		pointInTime, lsn    string
		readOnly            bool
	)
	cmd := &cobra.Command{
		Use:   "create --username USER [flags]",
		Short: "Create a clone of a snapshot (the latest by default) and wait until it is ready",
		Long: `Create a thin clone: a writable copy of a snapshot with its own postgres,
port and database user. The command waits until the clone accepts
connections (a spinner on a terminal, progress lines otherwise); --no-wait
returns at once.

The password comes from --password, else THINLAB_CLONE_PASSWORD, else a
prompt. It is saved (mode 0600) in the CLI config file so that
` + "`thinlab connect`" + ` needs no prompt; --save-password=false turns that off.`,
		Example: `  thinlab clone create --id mytest --username alice
  THINLAB_CLONE_PASSWORD=... thinlab clone create --username ci --restricted -o json
  thinlab clone create --username alice --snapshot 'pool1@snapshot_20240102030405' --extra-conf work_mem=64MB
  thinlab clone create --username alice --branch feature
  thinlab clone create --username alice --protected --protection-minutes 240 --no-wait
  thinlab clone create --username alice --point-in-time 2026-12-03T16:50:00Z
  thinlab clone create --username alice --snapshot 'pool1@snapshot_20240102030405' --read-only`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			if username == "" {
				return usageErrorf("--username is required: the database user the clone is created with")
			}
			if id != "" {
				if err := validateCloneID("--id", id); err != nil {
					return err
				}
			}
			if snapshot != "" {
				if err := validateSnapshotID("--snapshot", snapshot); err != nil {
					return err
				}
				if pool != "" {
					return usageErrorf("use either --snapshot or --pool, not both: a snapshot ID already names its pool")
				}
			}
			if pointInTime != "" || lsn != "" {
				if snapshot != "" || pool != "" || branchName != "" {
					return usageErrorf("use --point-in-time or --lsn without --snapshot, --pool or --branch: the agent picks the snapshot the recovery starts from")
				}
				if err := checkPointInTime(pointInTime, lsn); err != nil {
					return err
				}
			}
			if branchName != "" {
				if snapshot != "" || pool != "" {
					return usageErrorf("use either --branch or --snapshot/--pool, not both: a clone on a branch starts from the branch's head")
				}
				if err := validateBranchName("--branch", branchName); err != nil {
					return err
				}
			}
			conf, err := parseExtraConf(extraConf)
			if err != nil {
				return err
			}
			req := agentapi.CreateCloneRequest{
				ID:        id,
				Protected: protect,
				DB:        &agentapi.DatabaseRequest{Username: username, Restricted: restricted, DBName: dbName},
				ExtraConf: conf,
				Branch:    branchName,
				ReadOnly:  readOnly,
			}
			if m, given, err := protectionMinutes(cmd, "protection-minutes", protectMinutes); err != nil {
				return err
			} else if given {
				req.ProtectionDurationMinutes = &m
			}
			if req.ProtectionDurationMinutes != nil && !protect {
				return usageErrorf("--protection-minutes needs --protected")
			}
			a, err := cf.connect()
			if err != nil {
				return err
			}
			if pool != "" {
				if snapshot, err = latestSnapshotOfPool(cmd.Context(), a, pool); err != nil {
					return err
				}
			}
			if snapshot != "" || pointInTime != "" || lsn != "" {
				req.Snapshot = &agentapi.SnapshotCloneField{ID: snapshot, PointInTime: pointInTime, LSN: lsn}
			}
			if len(labelArgs) > 0 {
				set, remove, err := labels.ParseChanges(labelArgs)
				if err != nil || len(remove) > 0 {
					return usageErrorf("--label: %v", cmp.Or(err, errors.New("write key=value")))
				}
				req.Labels = set
			}
			if password == "" {
				password = os.Getenv(envClonePassword)
			}
			if password == "" {
				password, err = promptPassword(cmd, "Password for "+username+": ", true,
					"pass --password or set "+envClonePassword)
				if err != nil {
					return err
				}
			}
			req.DB.Password = password

			cl, err := a.api.CreateClone(cmd.Context(), req)
			if err != nil {
				return a.explain(err)
			}
			if savePassword {
				if err := a.savePassword(cl.ID, password); err != nil {
					warn(cmd, "warning: clone password not saved: %v\n", err)
				}
			}
			if !wf.noWait && cl.Status.Code != agentapi.StatusOK {
				ctx, cancel := withWaitTimeout(cmd.Context(), wf.timeout)
				defer cancel()
				done, err := waitClone(ctx, a, cmd.ErrOrStderr(), cl.ID, "Creating clone "+cl.ID, false)
				if err != nil {
					return err
				}
				cl = done
			}
			if err := printClone(cmd, output, cl); err != nil {
				return err
			}
			switch {
			case output != outputTable || cl.Status.Code != agentapi.StatusOK:
			case a.platform != nil:
				// The host and port above are the agent's: through the
				// platform the clone is reached over its tunnel.
				warn(cmd, "\nConnect through the platform with: thinlab connect %s --agent %s\n(or thinlab port-forward %s --agent %s --port N for other tools)\n", cl.ID, a.platform.agent.Name, cl.ID, a.platform.agent.Name)
			default:
				warn(cmd, "\nConnect with: thinlab connect %s\n", cl.ID)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&id, "id", "", "clone ID (default: generated by the agent)")
	f.StringVar(&snapshot, "snapshot", "", "snapshot ID to clone (default: the latest)")
	f.StringVar(&pool, "pool", "", "clone the latest snapshot of this pool")
	f.StringVar(&branchName, "branch", "", "start from the head of this branch of data (default: main); thinlab commit saves onto it")
	f.StringVar(&username, "username", "", "database user to create in the clone (required)")
	f.StringVar(&password, "password", "", "that user's password (env "+envClonePassword+"; prompted when neither is set; flags are visible to other local users)")
	f.StringVar(&dbName, "db-name", "", "database name reported in the connection string (default: postgres)")
	f.BoolVar(&restricted, "restricted", false, "create the user without superuser rights")
	f.BoolVar(&protect, "protected", false, "protect the clone from deletion (manual and idle)")
	f.IntVar(&protectMinutes, "protection-minutes", 0, "protection length with --protected; 0 = no expiry (default: the agent's lease)")
	f.StringArrayVar(&extraConf, "extra-conf", nil, "postgres setting for this clone as key=value (repeatable)")
	f.StringArrayVar(&labelArgs, "label", nil, "label for this clone as key=value (repeatable)")
	f.BoolVar(&savePassword, "save-password", true, "save the password in the CLI config file (0600) for thinlab connect")
	f.StringVar(&pointInTime, "point-in-time", "", "a clone of the data as of this time (RFC 3339), replayed from the pool's WAL archive (see retrieving.pointInTime in thinlab status -o json)")
	f.StringVar(&lsn, "lsn", "", "as --point-in-time, at a WAL position (X/Y)")
	f.BoolVar(&readOnly, "read-only", false, "run the clone as a hot standby: in recovery, refusing writes")
	wf.register(cmd)
	addOutputFlag(cmd, &output)
	return cmd
}

// latestSnapshotOfPool picks the newest snapshot of pool (snapshots come
// newest first).
func latestSnapshotOfPool(ctx context.Context, a *apiConn, pool string) (string, error) {
	snaps, err := a.api.Snapshots(ctx)
	if err != nil {
		return "", a.explain(err)
	}
	var newest *agentapi.Snapshot
	for i := range snaps {
		s := &snaps[i]
		// Commits of other branches are not the pool's latest data.
		if s.Pool != pool || (s.Branch != "" && s.Branch != "main") {
			continue
		}
		if newest == nil || agentapi.TimeOf(s.DataStateAt).After(agentapi.TimeOf(newest.DataStateAt)) {
			newest = s
		}
	}
	if newest == nil {
		return "", fmt.Errorf("--pool %q: the agent has no snapshot in that pool; `thinlab status` lists the pools", pool)
	}
	return newest.ID, nil
}

func (a *apiConn) savePassword(cloneID, password string) error {
	a.file.SetClonePassword(a.passwordKey(), cloneID, password)
	return clientconfig.Save(a.configPath, a.file)
}

func (a *apiConn) forgetPassword(cloneID string) error {
	if !a.file.ForgetClonePassword(a.passwordKey(), cloneID) {
		return nil
	}
	return clientconfig.Save(a.configPath, a.file)
}

func newCloneListCommand(cf *clientFlags) *cobra.Command {
	var (
		output string
		filter []string
	)
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List clones, newest first",
		Example: "  thinlab clone list\n  thinlab clone list --label team=data\n  thinlab clone list -o json | jq -r '.[].id'",
		Args:    exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			if err := checkLabelFilter(filter); err != nil {
				return err
			}
			clones, err := request(cf, func(c *agentapi.Client) ([]agentapi.Clone, error) { return c.ClonesLabeled(cmd.Context(), filter...) })
			if err != nil {
				return err
			}
			return renderList(cmd, output, clones, renderClones)
		},
	}
	addLabelFilterFlag(cmd, &filter)
	addOutputFlag(cmd, &output)
	return cmd
}

func newCloneStatusCommand(cf *clientFlags) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:     "status CLONE_ID",
		Short:   "Show one clone: state, connection, protection, sizes",
		Example: "  thinlab clone status mytest\n  thinlab clone status mytest -o json | jq -r .db.connStr",
		Args:    exactArgs("CLONE_ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := cloneIDArg(output, args)
			if err != nil {
				return err
			}
			cl, err := request(cf, func(c *agentapi.Client) (*agentapi.Clone, error) { return c.Clone(cmd.Context(), id) })
			if err != nil {
				return err
			}
			return printClone(cmd, output, cl)
		},
	}
	addOutputFlag(cmd, &output)
	return cmd
}

func newCloneResetCommand(cf *clientFlags) *cobra.Command {
	var (
		output, snapshot string
		pointInTime, lsn string
		latest           bool
		wf               waitFlags
	)
	cmd := &cobra.Command{
		Use:   "reset CLONE_ID",
		Short: "Throw away a clone's changes: back to its snapshot, another one, or the latest",
		Example: `  thinlab clone reset mytest
  thinlab clone reset mytest --latest
  thinlab clone reset mytest --snapshot 'pool1@snapshot_20240102030405' --no-wait
  thinlab clone reset mytest --point-in-time 2026-12-03T16:50:00Z`,
		Args: exactArgs("CLONE_ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := cloneIDArg(output, args)
			if err != nil {
				return err
			}
			if latest && snapshot != "" {
				return usageErrorf("use either --latest or --snapshot, not both")
			}
			if pointInTime != "" || lsn != "" {
				if latest || snapshot != "" {
					return usageErrorf("use --point-in-time or --lsn alone, without --latest or --snapshot")
				}
				if err := checkPointInTime(pointInTime, lsn); err != nil {
					return err
				}
			}
			if snapshot != "" {
				if err := validateSnapshotID("--snapshot", snapshot); err != nil {
					return err
				}
			}
			a, err := cf.connect()
			if err != nil {
				return err
			}
			if err := a.api.ResetClone(cmd.Context(), id, agentapi.ResetCloneRequest{SnapshotID: snapshot, Latest: latest, PointInTime: pointInTime, LSN: lsn}); err != nil {
				return a.explain(err)
			}
			var cl *agentapi.Clone
			if wf.noWait {
				cl, err = a.api.Clone(cmd.Context(), id)
				if err != nil {
					return a.explain(err)
				}
			} else {
				ctx, cancel := withWaitTimeout(cmd.Context(), wf.timeout)
				defer cancel()
				if cl, err = waitClone(ctx, a, cmd.ErrOrStderr(), id, "Resetting clone "+id, false); err != nil {
					return err
				}
			}
			return printClone(cmd, output, cl)
		},
	}
	cmd.Flags().StringVar(&snapshot, "snapshot", "", "reset to this snapshot (default: the clone's own)")
	cmd.Flags().BoolVar(&latest, "latest", false, "reset to the latest snapshot")
	cmd.Flags().StringVar(&pointInTime, "point-in-time", "", "reset to the data as of this time (RFC 3339), from the pool's WAL archive")
	cmd.Flags().StringVar(&lsn, "lsn", "", "as --point-in-time, at a WAL position (X/Y)")
	wf.register(cmd)
	addOutputFlag(cmd, &output)
	return cmd
}

func newCloneProtectCommand(cf *clientFlags) *cobra.Command {
	var (
		output  string
		off     bool
		minutes int
	)
	cmd := &cobra.Command{
		Use:   "protect CLONE_ID",
		Short: "Protect a clone from deletion (manual and idle), or lift protection with --off",
		Example: `  thinlab clone protect mytest
  thinlab clone protect mytest --minutes 0      # no expiry (capped by the agent's maximum)
  thinlab clone protect mytest --off`,
		Args: exactArgs("CLONE_ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := cloneIDArg(output, args)
			if err != nil {
				return err
			}
			req := agentapi.PatchCloneRequest{Protected: !off}
			if off && cmd.Flags().Changed("minutes") {
				return usageErrorf("--minutes does not go with --off")
			}
			if m, given, err := protectionMinutes(cmd, "minutes", minutes); err != nil {
				return err
			} else if given {
				req.ProtectionDurationMinutes = &m
			}
			cl, err := request(cf, func(c *agentapi.Client) (*agentapi.Clone, error) { return c.UpdateClone(cmd.Context(), id, req) })
			if err != nil {
				return err
			}
			return printClone(cmd, output, cl)
		},
	}
	cmd.Flags().BoolVar(&off, "off", false, "remove protection")
	cmd.Flags().IntVar(&minutes, "minutes", 0, "protection length; 0 = no expiry (default: the agent's lease)")
	addOutputFlag(cmd, &output)
	return cmd
}

func newCloneDestroyCommand(cf *clientFlags) *cobra.Command {
	var (
		output string
		wf     waitFlags
	)
	cmd := &cobra.Command{
		Use:     "destroy CLONE_ID",
		Aliases: []string{"delete", "rm"},
		Short:   "Destroy a clone and its data (protected clones are refused)",
		Example: "  thinlab clone destroy mytest",
		Args:    exactArgs("CLONE_ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := cloneIDArg(output, args)
			if err != nil {
				return err
			}
			a, err := cf.connect()
			if err != nil {
				return err
			}
			if err := a.api.DestroyClone(cmd.Context(), id); err != nil {
				return a.explain(err)
			}
			msg := "Clone " + id + " is being destroyed"
			if !wf.noWait {
				ctx, cancel := withWaitTimeout(cmd.Context(), wf.timeout)
				defer cancel()
				if err := waitCloneGone(ctx, a, cmd.ErrOrStderr(), id, "Destroying clone "+id); err != nil {
					return err
				}
				msg = "Clone " + id + " destroyed"
			}
			if err := a.forgetPassword(id); err != nil && !errors.Is(err, os.ErrNotExist) {
				warn(cmd, "warning: saved password of %s not removed: %v\n", id, err)
			}
			if output == outputJSON {
				return writeJSON(cmd.OutOrStdout(), agentapi.Response{Status: "OK", Message: msg})
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), msg)
			return err
		},
	}
	wf.register(cmd)
	wf.timeout = 10 * time.Minute
	addOutputFlag(cmd, &output)
	return cmd
}

// checkPointInTime checks --point-in-time / --lsn before asking the agent.
func checkPointInTime(at, lsn string) error {
	if at != "" && lsn != "" {
		return usageErrorf("use either --point-in-time or --lsn, not both")
	}
	if at != "" {
		if _, err := time.Parse(time.RFC3339Nano, at); err != nil {
			return usageErrorf("--point-in-time %q is not an RFC 3339 time (e.g. 2026-12-03T16:50:00Z)", at)
		}
	}
	if lsn != "" && !lsnRE.MatchString(lsn) {
		return usageErrorf("--lsn %q is not a WAL position: use X/Y in hexadecimal, e.g. 0/3000060", lsn)
	}
	return nil
}

var lsnRE = regexp.MustCompile(`^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$`)

func newCloneReplicasCommand(cf *clientFlags) *cobra.Command {
	var (
		output string
		count  int
		wf     waitFlags
	)
	cmd := &cobra.Command{
		Use:   "replicas CLONE_ID --count N",
		Short: "Add hot-standby replicas streaming from a clone (destroyed with it)",
		Long: `Make N replicas of a clone: each a read-only postgres with its own port,
streaming from the clone, logging in with the clone's user and password.
They go when the clone is destroyed; a clone with replicas cannot be reset.`,
		Example: "  thinlab clone replicas mytest --count 2",
		Args:    exactArgs("CLONE_ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := cloneIDArg(output, args)
			if err != nil {
				return err
			}
			if count < 1 {
				return usageErrorf("--count must be 1 or more")
			}
			a, err := cf.connect()
			if err != nil {
				return err
			}
			reps, err := a.api.CreateReplicas(cmd.Context(), id, count)
			if err != nil {
				return a.explain(err)
			}
			out := make([]agentapi.Clone, 0, len(reps))
			for _, r := range reps {
				cl := &r
				if !wf.noWait && r.Status.Code != agentapi.StatusOK {
					ctx, cancel := withWaitTimeout(cmd.Context(), wf.timeout)
					cl, err = waitClone(ctx, a, cmd.ErrOrStderr(), r.ID, "Creating replica "+r.ID, false)
					cancel()
					if err != nil {
						return err
					}
				}
				out = append(out, *cl)
			}
			return renderList(cmd, output, out, renderClones)
		},
	}
	cmd.Flags().IntVar(&count, "count", 1, "number of replicas (the agent allows up to 5 per clone)")
	wf.register(cmd)
	addOutputFlag(cmd, &output)
	return cmd
}
