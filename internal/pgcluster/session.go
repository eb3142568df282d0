package pgcluster

import (
	"context"
	"fmt"
	"maps"
	"strings"

	"github.com/jackc/pgx/v5"
)

// SafeSearchPath is the search_path of every session the agent opens on a
// server whose databases untrusted users own (clones, the pool's postgres,
// the retrieval source). A startup-packet setting outranks ALTER DATABASE
// and ALTER ROLE ... SET, so a database owner cannot plant a function or
// view the agent's superuser session would resolve before pg_catalog's;
// pg_temp comes last so that temporary objects never shadow either.
const SafeSearchPath = "pg_catalog,pg_temp"

// SafeOptions is SafeSearchPath as a libpq "options" value (PGOPTIONS),
// for the libpq command-line tools.
const SafeOptions = "-c search_path=" + SafeSearchPath

// pinnedSettings are the other settings a database owner could impose on
// the agent's sessions through ALTER DATABASE ... SET.
var pinnedSettings = map[string]string{
	"statement_timeout":                   "0",
	"lock_timeout":                        "0",
	"idle_in_transaction_session_timeout": "0",
	"default_transaction_read_only":       "off",
	"default_transaction_isolation":       "read committed",
	"role":                                "none",
}

// SessionConfig parses a libpq connection string for an agent session and
// pins its search_path to SafeSearchPath. Every agent connection goes
// through it (or Connect) so that none is missed.
func SessionConfig(connString string) (*pgx.ConnConfig, error) {
	cc, err := pgx.ParseConfig(connString)
	if err != nil {
		return nil, err
	}
	if cc.RuntimeParams == nil {
		cc.RuntimeParams = map[string]string{}
	}
	// A second search_path in "options" is refused, so that which of the
	// two the server applies last never matters.
	if strings.Contains(cc.RuntimeParams["options"], "search_path") {
		return nil, fmt.Errorf("connection options must not set search_path: the agent pins it to %s", SafeSearchPath)
	}
	cc.RuntimeParams["search_path"] = SafeSearchPath
	// A database owner can also set these for everyone who connects;
	// they would stall or break the agent's own work (idle checks that
	// always fail keep a clone from ever being idle-deleted).
	maps.Copy(cc.RuntimeParams, pinnedSettings)
	return cc, nil
}

// Connect opens an agent session (see SessionConfig).
func Connect(ctx context.Context, connString string) (*pgx.Conn, error) {
	cc, err := SessionConfig(connString)
	if err != nil {
		return nil, err
	}
	return pgx.ConnectConfig(ctx, cc)
}
