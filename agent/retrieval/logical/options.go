package logical

import (
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/retrieval/pgsource"
)

// directory says whether databases go through a dump directory on the
// pool (pg_dump -Fd --jobs) instead of a pipe.
func (j *Job) directory() bool { return j.cfg.Logical.Format == config.FormatDirectory }

// parallelDatabases is how many databases are copied at once.
func (j *Job) parallelDatabases() int {
	if n := j.cfg.Logical.ParallelDatabases; n > 0 {
		return n
	}
	if j.directory() {
		return 1
	}
	return max(j.cfg.Jobs, 1)
}

// dumpArgs are pg_dump's arguments for database db in format (-Fc, -Fd),
// with the configured filters and extra options (validated by the config:
// none can choose the connection, output or format). The extras come
// before the agent's own, so that a repeated option is the agent's.
func (j *Job) dumpArgs(db, format string, more ...string) []string {
	l := j.cfg.Logical
	args := append([]string(nil), l.DumpOptions...)
	for _, p := range l.IncludeSchemas {
		args = append(args, "--schema="+p)
	}
	for _, p := range l.ExcludeSchemas {
		args = append(args, "--exclude-schema="+p)
	}
	for _, p := range l.IncludeTables {
		args = append(args, "--table="+p)
	}
	for _, p := range l.ExcludeTables {
		args = append(args, "--exclude-table="+p)
	}
	args = append(args, format, "--no-sync")
	args = append(args, more...)
	// The database only as a quoted dbname: a bare name containing "="
	// would be read as a connection string.
	return append(args, "-d", pgsource.Conninfo(map[string]string{"dbname": db}))
}

// restoreArgs are pg_restore's arguments restoring into local (a
// connection string to the pool's postgres); more precede the archive.
func (j *Job) restoreArgs(local string, more ...string) []string {
	args := append([]string(nil), j.cfg.Logical.RestoreOptions...)
	args = append(args, "--no-owner", "--no-acl", "--exit-on-error")
	args = append(args, more...)
	return append(args, "-d", local)
}
