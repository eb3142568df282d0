package pgcluster_test

import (
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/internal/pgcluster"
	"github.com/thinlab/thinlab/internal/pgtest"
)

// TestSessionPinsSettings: the owner of a database sets, for everyone who
// connects, a search_path into its own schema, its own role, read-only
// transactions and a 1 ms statement timeout; an agent session opened with
// pgcluster.Connect still gets pg_catalog first, the superuser it logged
// in as, and working statements.
func TestSessionPinsSettings(t *testing.T) {
	src := pgtest.Start(t)
	src.Exec(t, "postgres",
		"CREATE ROLE owner LOGIN",
		"CREATE DATABASE owned OWNER owner")
	ctx := t.Context()
	cc, err := pgx.ParseConfig(src.Cluster.SocketConnString(src.Port, "owner", "owned"))
	if err != nil {
		t.Fatal(err)
	}
	own, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		"CREATE SCHEMA evil",
		"ALTER DATABASE owned SET search_path = evil, pg_catalog",
		"ALTER DATABASE owned SET role = owner",
		"ALTER DATABASE owned SET default_transaction_read_only = on",
		"ALTER DATABASE owned SET statement_timeout = 1",
	} {
		if _, err := own.Exec(ctx, q); err != nil {
			t.Fatalf("as the database owner: %s: %v", q, err)
		}
	}
	_ = own.Close(ctx) // a failed goodbye loses nothing

	// Without pinning, a plain connection gets the owner's settings (the
	// trap is real).
	plain, err := pgx.Connect(ctx, src.Cluster.SocketConnString(src.Port, "postgres", "owned"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := plain.Exec(ctx, "SET statement_timeout = 0"); err != nil {
		t.Fatal(err)
	}
	var role, path string
	if err := plain.QueryRow(ctx, "SELECT current_user::text, current_setting('search_path')").Scan(&role, &path); err != nil {
		t.Fatal(err)
	}
	if role != "owner" || path != "evil, pg_catalog" {
		t.Fatalf("a plain superuser session runs as %q with search_path %q; the trap did not take", role, path)
	}
	_ = plain.Close(ctx) // a failed goodbye loses nothing

	conn, err := pgcluster.Connect(ctx, src.Cluster.SocketConnString(src.Port, "postgres", "owned"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(ctx) }() // a failed goodbye loses nothing
	for q, want := range map[string]string{
		"SHOW search_path":                   "pg_catalog,pg_temp",
		"SELECT current_user::text":          "postgres",
		"SHOW default_transaction_read_only": "off",
		"SHOW statement_timeout":             "0",
	} {
		var got string
		if err := conn.QueryRow(ctx, q).Scan(&got); err != nil {
			t.Fatalf("%s in an agent session: %v", q, err)
		}
		if got != want {
			t.Errorf("%s in an agent session = %q, want %q (pinned by pgcluster.SessionConfig)", q, got, want)
		}
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE public.agent_can_write (x int)"); err != nil {
		t.Fatalf("an agent session cannot write: %v", err)
	}
	if _, err := pgcluster.Connect(ctx, src.Cluster.SocketConnString(src.Port, "postgres", "owned")+" options='-c search_path=evil'"); err == nil {
		t.Fatal("a connection string with its own search_path in options was accepted")
	}
}
