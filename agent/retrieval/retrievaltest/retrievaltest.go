// Package retrievaltest helps tests of retrieval and its modes: a
// throwaway source server and queries against a pool's snapshots.
package retrievaltest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/agent/runtime"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/pgcluster"
	"github.com/thinlab/thinlab/internal/pgtest"
)

// Source starts a throwaway "production" server with two databases: app
// (users: 1000 rows, an index, a view) and shop (orders: 500 rows).
func Source(t *testing.T) *pgtest.Server {
	src := pgtest.Start(t)
	src.Exec(t, "postgres", "CREATE DATABASE app", "CREATE DATABASE shop")
	src.Exec(t, "app",
		"CREATE TABLE users (id serial PRIMARY KEY, email text UNIQUE NOT NULL)",
		"INSERT INTO users (email) SELECT 'u' || g || '@example.com' FROM generate_series(1, 1000) g",
		"CREATE INDEX users_email_lower ON users (lower(email))",
		"CREATE VIEW user_count AS SELECT count(*) AS n FROM users")
	src.Exec(t, "shop",
		"CREATE TABLE orders (id bigserial PRIMARY KEY, user_id int, total numeric(10,2))",
		"INSERT INTO orders (user_id, total) SELECT g % 100, g * 1.5 FROM generate_series(1, 500) g")
	return src
}

// ReplicationSource is Source with wal_level logical and publication
// "thinlab_pub" of every table in app.
func ReplicationSource(t *testing.T) *pgtest.Server {
	t.Helper()
	src := Source(t)
	src.Exec(t, "postgres", "ALTER SYSTEM SET wal_level = logical")
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := src.Cluster.Stop(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
	if err := src.Cluster.Start(ctx, src.Port, "127.0.0.1", pgcluster.FastSettings); err != nil {
		t.Fatal(err)
	}
	src.Exec(t, "app", "CREATE PUBLICATION thinlab_pub FOR ALL TABLES")
	return src
}

// ConnectDB connects to database db, whatever its name (it may look like
// a connection string).
func ConnectDB(ctx context.Context, connString, db string) (*pgx.Conn, error) {
	cc, err := pgx.ParseConfig(connString)
	if err != nil {
		return nil, err
	}
	cc.Database = db
	return pgx.ConnectConfig(ctx, cc)
}

// Query starts postgres on a throwaway clone of snap and runs sql (one
// text value) in db.
func Query(t *testing.T, p storage.Pool, snap, db, sql string) string {
	t.Helper()
	out, err := TryQuery(t, p, snap, db, sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return out
}

// TryQuery is Query returning the query's error instead of failing.
func TryQuery(t *testing.T, p storage.Pool, snap, db, sql string) (string, error) {
	t.Helper()
	ctx := t.Context()
	name := fmt.Sprintf("q%d", time.Now().UnixNano())
	c, err := p.Clone(ctx, snap, name)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := p.DestroyClone(ctx, name); err != nil {
			t.Errorf("destroy the query clone %s: %v", name, err)
		}
	}()
	runDir := runtime.RunDirFor(t.TempDir())
	defer func() {
		if err := os.RemoveAll(runDir); err != nil {
			t.Errorf("remove the run directory %s: %v", runDir, err)
		}
	}()
	rt, err := runtime.New(runtime.Options{User: pgtest.OSUser(t), RunDir: runDir})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(c.Mountpoint, storage.DataSubdir)
	port := pgtest.FreePort(t)
	inst := runtime.Instance{Name: name, DataDir: dir, Port: port, Settings: runtime.DefaultSettings}
	if err := rt.Start(ctx, inst); err != nil {
		t.Fatal(err)
	}
	defer rt.Kill(inst)
	conn, err := ConnectDB(ctx, rt.SocketConnString(dir, port, "postgres", "postgres"), db)
	if err != nil {
		return "", err
	}
	// The query's answer is the result; a failed goodbye changes nothing.
	defer func() { _ = conn.Close(ctx) }()
	var out string
	err = conn.QueryRow(ctx, sql).Scan(&out)
	return out, err
}

// StartClone makes a clone of snap, starts postgres on it and returns a
// session to db in it; everything is stopped and destroyed at cleanup.
func StartClone(t *testing.T, p storage.Pool, snap, db string) *pgx.Conn {
	t.Helper()
	ctx := context.Background()
	name := fmt.Sprintf("c%d", time.Now().UnixNano())
	c, err := p.Clone(ctx, snap, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.DestroyClone(ctx, name); err != nil {
			t.Errorf("destroy the clone %s: %v", name, err)
		}
	})
	runDir := runtime.RunDirFor(t.TempDir())
	t.Cleanup(func() {
		if err := os.RemoveAll(runDir); err != nil {
			t.Errorf("remove the run directory %s: %v", runDir, err)
		}
	})
	rt, err := runtime.New(runtime.Options{User: pgtest.OSUser(t), RunDir: runDir})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(c.Mountpoint, storage.DataSubdir)
	port := pgtest.FreePort(t)
	inst := runtime.Instance{Name: name, DataDir: dir, Port: port, Settings: runtime.DefaultSettings}
	if err := rt.Start(ctx, inst); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Kill(inst) })
	conn, err := ConnectDB(ctx, rt.SocketConnString(dir, port, "postgres", "postgres"), db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(ctx) }) // the clone is killed next
	return conn
}
