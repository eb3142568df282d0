package cli

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
)

// envPsql overrides the psql program `thinlab connect` runs.
const envPsql = "THINLAB_PSQL"

func newConnectCommand() *cobra.Command {
	var (
		cf       clientFlags
		password string
		dbName   string
		psql     string
	)
	cmd := &cobra.Command{
		Use:   "connect CLONE_ID [-- PSQL_ARGS...]",
		Short: "Open psql on a clone (host, port and user from the agent)",
		Long: `Run psql against a clone. Host, port, user and database come from the
agent. With a platform context (--agent), psql connects to a local port on
127.0.0.1 forwarded through the platform and the agent's tunnel, so it
works where the agent's host cannot be reached. The password is passed in the PGPASSWORD environment variable, never
on the command line. It is taken from --password, else
THINLAB_CLONE_PASSWORD, else the password saved by ` + "`thinlab clone create`" + `,
else a prompt. Arguments after -- go to psql unchanged.`,
		Example: `  thinlab connect mytest
  thinlab connect mytest -- -c 'select count(*) from orders'
  THINLAB_PSQL=/usr/lib/postgresql/15/bin/psql thinlab connect mytest`,
		Args: func(cmd *cobra.Command, args []string) error {
			own := args
			if dash := cmd.ArgsLenAtDash(); dash >= 0 {
				own = args[:dash]
			}
			return exactArgs("CLONE_ID")(cmd, own)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			var psqlArgs []string
			if dash := cmd.ArgsLenAtDash(); dash >= 0 {
				psqlArgs = args[dash:]
			}
			if err := validateCloneID("CLONE_ID", id); err != nil {
				return err
			}
			if psql == "" {
				psql = envOr(envPsql, "psql")
			}
			a, err := cf.connect()
			if err != nil {
				return err
			}
			cl, dial, err := cloneDialer(cmd.Context(), a, id)
			if err != nil {
				return err
			}
			host, port := connectHost(cl.DB.Host, a.ep.URL), cl.DB.Port
			if a.platform != nil {
				// The laptop cannot reach the agent's host: psql talks to
				// a local forward over the platform instead.
				// psql's connection uses the stream opened here, which
				// also shows a refusal before psql starts.
				first, err := openFirst(cmd.Context(), dial)
				if err != nil {
					return err
				}
				f, err := startForward(0, dial, func(err error) { warn(cmd, "forward a connection to clone %s: %v\n", id, err) }, first)
				if err != nil {
					_ = first.Close()
					return err
				}
				defer f.Close()
				host, port = "127.0.0.1", strconv.Itoa(f.Port())
			}
			if dbName == "" {
				dbName = cl.DB.DBName
			}
			if dbName == "" {
				dbName = "postgres"
			}
			if password == "" {
				password = os.Getenv(envClonePassword)
			}
			if password == "" {
				password, _ = a.file.ClonePassword(a.passwordKey(), id)
			}
			if password == "" {
				password, err = promptPassword(cmd, "Password for "+cl.DB.Username+": ", false,
					"pass --password or set "+envClonePassword)
				if err != nil {
					return err
				}
			}
			// One conninfo string with every value quoted: psql takes a -d
			// containing '=' as a conninfo, so a database name (from the
			// agent or --dbname) such as "host=evil port=1" would
			// otherwise choose the server the password is sent to.
			info := conninfo([][2]string{{"host", host}, {"port", port}, {"user", cl.DB.Username}, {"dbname", dbName}})
			argv := append([]string{"-d", info}, psqlArgs...)
			// Not CommandContext: Ctrl-C belongs to psql (it cancels the
			// running query); the CLI itself ignores it while psql runs.
			c := exec.Command(psql, argv...) //nolint:gosec // G204: the user's own psql with the user's own arguments, no shell; the CLI runs with their rights
			c.Stdin, c.Stdout, c.Stderr = cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr()
			c.Env = append(os.Environ(), "PGPASSWORD="+password)
			if err := c.Run(); err != nil {
				var ee *exec.ExitError
				if errors.As(err, &ee) && ee.ExitCode() > 0 {
					return exitCodeError{code: ee.ExitCode(), err: fmt.Errorf("psql exited with code %d", ee.ExitCode())}
				}
				if errors.Is(err, exec.ErrNotFound) {
					return fmt.Errorf("%w; install the PostgreSQL client or point --psql / %s at it", err, envPsql)
				}
				return fmt.Errorf("run %s: %w", psql, err)
			}
			return nil
		},
	}
	cf.register(cmd)
	f := cmd.Flags()
	f.StringVar(&password, "password", "", "the clone user's password (env "+envClonePassword+"; default: saved by clone create, else prompted)")
	f.StringVar(&dbName, "dbname", "", "database to connect to (default: the clone's)")
	f.StringVar(&psql, "psql", "", "psql program to run (env "+envPsql+"; default psql)")
	return asUsage(cmd)
}

// connectHost is where to reach a clone: the host the agent reports,
// unless that is empty or a wildcard address, in which case the agent's
// own host name is the best guess.
func connectHost(reported, agentURL string) string {
	switch reported {
	case "", "0.0.0.0", "::", "*":
		u, err := url.Parse(agentURL)
		if err != nil {
			return ""
		}
		return u.Hostname()
	}
	return reported
}

// conninfo builds a libpq key/value connection string, each value in
// single quotes with backslashes and quotes escaped, so that no value can
// add or override a keyword.
func conninfo(kv [][2]string) string {
	parts := make([]string, 0, len(kv))
	for _, p := range kv {
		v := strings.ReplaceAll(p[1], `\`, `\\`)
		v = strings.ReplaceAll(v, `'`, `\'`)
		parts = append(parts, p[0]+"='"+v+"'")
	}
	return strings.Join(parts, " ")
}
