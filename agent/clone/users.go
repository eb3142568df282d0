package clone

import (
	"context"
	"fmt"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"
)

// userNameRE is an unquoted PostgreSQL identifier; names are quoted in SQL
// anyway, this keeps them typeable in psql and connection strings.
var userNameRE = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)

// reservedUsers cannot be a clone's user: PostgreSQL refuses them as role
// names, or the agent itself manages the clone as that role.
var reservedUsers = map[string]string{
	"postgres":     "the agent manages the clone as this role",
	"public":       "reserved by PostgreSQL",
	"none":         "reserved by PostgreSQL",
	"all":          "reserved by PostgreSQL",
	"user":         "reserved by PostgreSQL",
	"current_user": "reserved by PostgreSQL",
	"current_role": "reserved by PostgreSQL",
	"session_user": "reserved by PostgreSQL",
}

func validateUsername(name string) error {
	if name == "" {
		return &ValidationError{Field: "db.username", Message: "is required: give the name of the database user to create in the clone"}
	}
	if len(name) > 63 {
		return &ValidationError{Field: "db.username", Message: fmt.Sprintf("%q is longer than 63 bytes", name)}
	}
	if !userNameRE.MatchString(name) {
		return &ValidationError{Field: "db.username", Message: fmt.Sprintf("%q is not a valid user name: use letters, digits and '_', starting with a letter or '_'", name)}
	}
	lower := strings.ToLower(name)
	if why, ok := reservedUsers[lower]; ok {
		return &ValidationError{Field: "db.username", Message: fmt.Sprintf("%q is reserved (%s): choose another name", name, why)}
	}
	if strings.HasPrefix(lower, "pg_") {
		return &ValidationError{Field: "db.username", Message: fmt.Sprintf("%q is reserved: names starting with pg_ belong to PostgreSQL", name)}
	}
	return nil
}

// bootstrapSuperuser is the role the agent connects as over the clone's
// socket (trust auth; only root and the postgres OS user reach the socket).
const bootstrapSuperuser = "postgres"

// setupUser creates (or updates, if the snapshot already has it) the
// clone's user with the password's SCRAM verifier, gives every other login
// role a random password, and for a restricted user hands it ownership of
// every database and the objects in them.
func setupUser(ctx context.Context, connect func(ctx context.Context, db string) (*pgx.Conn, error), username, verifier string, restricted bool) error {
	return setupUserLocked(ctx, connect, username, verifier, restricted, false)
}

// setupUserLocked is setupUser; with othersLocked the other login roles
// already have random passwords (a warm clone's, set by lockLogins, which
// nobody could change since) and keep them: a take skips deriving a
// verifier and rewriting every role.
func setupUserLocked(ctx context.Context, connect func(ctx context.Context, db string) (*pgx.Conn, error), username, verifier string, restricted, othersLocked bool) error {
	if _, err := parseVerifier(verifier); err != nil {
		return fmt.Errorf("user %s: %w", username, err)
	}
	other := ""
	if !othersLocked {
		var err error
		if other, err = randomVerifier(); err != nil {
			return err
		}
	}
	conn, err := connect(ctx, "postgres")
	if err != nil {
		// A snapshot without a "postgres" database: template1 always exists.
		var err2 error
		if conn, err2 = connect(ctx, "template1"); err2 != nil {
			return fmt.Errorf("connect to the clone as %s: %w", bootstrapSuperuser, err)
		}
	}
	defer func() { _ = conn.Close(context.Background()) }() // a failed goodbye loses nothing

	su := "SUPERUSER"
	if restricted {
		su = "NOSUPERUSER CREATEDB"
	}
	// DO blocks take no parameters: pass the values as session settings
	// and let the server quote them with format(%I/%L), so nothing is
	// spliced together here.
	// Clones run with synchronous_commit off; the user must survive a
	// postgres crash right after creation, so this session commits
	// synchronously (the WAL reaches the OS before the clone is OK).
	if _, err := conn.Exec(ctx, `SELECT pg_catalog.set_config('synchronous_commit', 'on', false),
	  pg_catalog.set_config('thinlab.user', $1, false),
	  pg_catalog.set_config('thinlab.verifier', $2, false),
	  pg_catalog.set_config('thinlab.other', $3, false),
	  pg_catalog.set_config('thinlab.attrs', $4, false)`, username, verifier, other, su); err != nil {
		return fmt.Errorf("create user %s: %w", username, err)
	}
	if _, err := conn.Exec(ctx, `
DO $do$
DECLARE
  u text := pg_catalog.current_setting('thinlab.user');
  v text := pg_catalog.current_setting('thinlab.verifier');
  other text := pg_catalog.current_setting('thinlab.other');
  attrs text := pg_catalog.current_setting('thinlab.attrs');
  r record;
BEGIN
  IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = u) THEN
    EXECUTE pg_catalog.format('ALTER ROLE %I WITH LOGIN '||attrs||' PASSWORD %L', u, v);
  ELSE
    EXECUTE pg_catalog.format('CREATE ROLE %I WITH LOGIN '||attrs||' PASSWORD %L', u, v);
  END IF;
  FOR r IN SELECT rolname FROM pg_catalog.pg_roles WHERE rolcanlogin AND rolname <> u AND other <> '' LOOP
    EXECUTE pg_catalog.format('ALTER ROLE %I PASSWORD %L', r.rolname, other);
  END LOOP;
END
$do$`); err != nil {
		return fmt.Errorf("create user %s: %w", username, err)
	}
	if !restricted {
		return nil
	}
	rows, err := conn.Query(ctx, `SELECT datname FROM pg_catalog.pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname`)
	if err != nil {
		return err
	}
	dbs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, db := range dbs {
		var q string
		if err := conn.QueryRow(ctx, `SELECT pg_catalog.format('ALTER DATABASE %I OWNER TO %I', $1::text, $2::text)`, db, username).Scan(&q); err != nil {
			return err
		}
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("make %s owner of database %s: %w", username, db, err)
		}
		dbc := conn
		if db != conn.Config().Database {
			if dbc, err = connect(ctx, db); err != nil {
				return fmt.Errorf("connect to database %s: %w", db, err)
			}
		}
		if dbc != conn {
			if _, err := dbc.Exec(ctx, `SET synchronous_commit = on`); err != nil {
				_ = dbc.Close(context.Background()) // a failed goodbye loses nothing
				return err
			}
		}
		err := reassignObjects(ctx, dbc, username)
		if dbc != conn {
			_ = dbc.Close(context.Background()) // a failed goodbye loses nothing
		}
		if err != nil {
			return fmt.Errorf("give %s the objects of database %s: %w", username, db, err)
		}
	}
	return nil
}

// reassignObjects makes owner the owner of every object in the connected
// database that is not part of the system or of an extension. REASSIGN
// OWNED handles ordinary roles' objects of every kind; objects of the
// bootstrap superuser (what pg_restore --no-owner creates) cannot be
// reassigned that way, so schemas, relations, routines and types are
// altered one by one.
const reassignSQL = `
DO $do$
DECLARE
  owner text := pg_catalog.current_setting('thinlab.owner');
  r record;
BEGIN
  FOR r IN SELECT rolname FROM pg_catalog.pg_roles
           WHERE oid <> 10 AND rolname <> owner AND rolname NOT LIKE 'pg\_%'
             AND (EXISTS (SELECT 1 FROM pg_catalog.pg_shdepend d WHERE d.refobjid = pg_catalog.pg_roles.oid AND d.deptype = 'o'
                          AND d.dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()))) LOOP
    EXECUTE pg_catalog.format('REASSIGN OWNED BY %I TO %I', r.rolname, owner);
  END LOOP;

  FOR r IN SELECT n.nspname FROM pg_catalog.pg_namespace n
           WHERE n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema'
             AND n.nspowner = 10
             AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_namespace'::pg_catalog.regclass AND d.objid = n.oid AND d.deptype = 'e') LOOP
    EXECUTE pg_catalog.format('ALTER SCHEMA %I OWNER TO %I', r.nspname, owner);
  END LOOP;

  FOR r IN SELECT c.oid::pg_catalog.regclass AS rel, c.relkind FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relowner = 10 AND c.relkind IN ('r','p','v','m','f','S')
             AND n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema'
             AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = c.oid AND d.deptype IN ('e','a','i')) LOOP
    IF r.relkind = 'S' THEN
      EXECUTE pg_catalog.format('ALTER SEQUENCE %s OWNER TO %I', r.rel, owner);
    ELSIF r.relkind IN ('v') THEN
      EXECUTE pg_catalog.format('ALTER VIEW %s OWNER TO %I', r.rel, owner);
    ELSIF r.relkind = 'm' THEN
      EXECUTE pg_catalog.format('ALTER MATERIALIZED VIEW %s OWNER TO %I', r.rel, owner);
    ELSIF r.relkind = 'f' THEN
      EXECUTE pg_catalog.format('ALTER FOREIGN TABLE %s OWNER TO %I', r.rel, owner);
    ELSE
      EXECUTE pg_catalog.format('ALTER TABLE %s OWNER TO %I', r.rel, owner);
    END IF;
  END LOOP;

  FOR r IN SELECT p.oid::pg_catalog.regprocedure AS fn, p.prokind, n.nspname, p.proname,
                  pg_catalog.pg_get_function_identity_arguments(p.oid) AS args FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
           WHERE p.proowner = 10 AND n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema'
             AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid AND d.deptype = 'e') LOOP
    IF r.prokind = 'p' THEN
      EXECUTE pg_catalog.format('ALTER PROCEDURE %s OWNER TO %I', r.fn, owner);
    ELSIF r.prokind = 'a' THEN
      -- regprocedure shows count(*) as count(), which ALTER AGGREGATE refuses.
      EXECUTE pg_catalog.format('ALTER AGGREGATE %I.%I(%s) OWNER TO %I', r.nspname, r.proname,
                                CASE WHEN r.args OPERATOR(pg_catalog.=) '' THEN '*' ELSE r.args END, owner);
    ELSE
      EXECUTE pg_catalog.format('ALTER FUNCTION %s OWNER TO %I', r.fn, owner);
    END IF;
  END LOOP;

  FOR r IN SELECT t.oid::pg_catalog.regtype AS typ FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
           WHERE t.typowner = 10 AND t.typtype IN ('d','e','r','c','m') AND t.typelem = 0
             AND (t.typrelid = 0 OR (SELECT relkind FROM pg_catalog.pg_class WHERE oid = t.typrelid) = 'c')
             AND n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema'
             AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_type'::pg_catalog.regclass AND d.objid = t.oid AND d.deptype IN ('e','i')) LOOP
    EXECUTE pg_catalog.format('ALTER TYPE %s OWNER TO %I', r.typ, owner);
  END LOOP;
END
$do$`

func reassignObjects(ctx context.Context, conn *pgx.Conn, owner string) error {
	if _, err := conn.Exec(ctx, `SELECT pg_catalog.set_config('thinlab.owner', $1, false)`, owner); err != nil {
		return err
	}
	_, err := conn.Exec(ctx, reassignSQL)
	return err
}
