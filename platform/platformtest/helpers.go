package platformtest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/platformapi"
)

// TestIssuer is the OIDC issuer of users made by User.
const TestIssuer = "https://idp.platformtest.invalid"

// User creates (or returns) the user with email at TestIssuer, with the
// email verified by the IdP.
func (e *Env) User(email string) *store.User {
	e.T.Helper()
	u, err := e.Store.UpsertOIDCUser(context.Background(), TestIssuer, "sub-"+email, email, strings.Split(email, "@")[0], true)
	if err != nil {
		e.T.Fatal(err)
	}
	return u
}

// Org creates an organization owned by owner.
func (e *Env) Org(slug string, owner *store.User) *store.Organization {
	e.T.Helper()
	o, err := e.Store.CreateOrganization(context.Background(), slug, strings.ToUpper(slug[:1])+slug[1:], owner.ID)
	if err != nil {
		e.T.Fatal(err)
	}
	return o
}

// Member creates the user with email and adds it to org with role.
func (e *Env) Member(org *store.Organization, email string, role rbac.Role) *store.User {
	e.T.Helper()
	u := e.User(email)
	if err := e.Store.AddMember(context.Background(), org.ID, u.ID, role); err != nil {
		e.T.Fatal(err)
	}
	return u
}

// Token creates an API token for u in org and returns the secret.
func (e *Env) Token(org *store.Organization, u *store.User) string {
	e.T.Helper()
	_, secret, err := e.Store.CreateAPIToken(context.Background(), org.ID, u.ID, "test", nil)
	if err != nil {
		e.T.Fatal(err)
	}
	return secret
}

// Client returns an API client authenticated with token.
func (e *Env) Client(token string) *platformapi.Client {
	return platformapi.NewClient(e.URL, token)
}

// Response is a raw answer.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// Error decodes the API error body.
func (r Response) Error() platformapi.ErrorBody {
	var er platformapi.ErrorResponse
	_ = json.Unmarshal(r.Body, &er) // a body that is not an API error gives the zero ErrorBody, which the caller's check reports
	return er.Error
}

// Do sends a request with an optional bearer token and JSON body (a
// string is sent as is) and returns the raw answer.
func (e *Env) Do(method, path, token string, body any) Response {
	e.T.Helper()
	return e.do(method, path, token, body, "", "")
}

func (e *Env) do(method, path, token string, body any, header, value string) Response {
	e.T.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			e.T.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, e.URL+path, rd)
	if err != nil {
		e.T.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if header != "" {
		req.Header.Set(header, value)
	}
	req.Header.Set("User-Agent", "platformtest")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.T.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		e.T.Fatal(err)
	}
	return Response{Status: resp.StatusCode, Header: resp.Header, Body: raw}
}

// Exec runs SQL as the database superuser in the test database and returns
// the error (tests of database rules want it).
func (e *Env) Exec(sql string, args ...any) error { return Exec(e.DSN, sql, args...) }

// QueryStrings runs a query returning one text column.
func (e *Env) QueryStrings(sql string, args ...any) []string {
	e.T.Helper()
	return QueryStrings(e.T, e.DSN, sql, args...)
}

// AuditEvents returns the whole audit log of the test database, every
// organization's, oldest first.
func (e *Env) AuditEvents() []store.AuditEvent {
	e.T.Helper()
	return query(e.T, e.DSN, pgx.RowToStructByPos[store.AuditEvent],
		"SELECT id, org_id, actor_id, actor, action, target, ip, user_agent, result, error, created_at FROM audit_events ORDER BY id")
}

// Exec runs SQL as the superuser in the database at dsn. Tests look at
// and change the database this way, beside the store, whose queries are
// all the application's.
func Exec(dsn, sql string, args ...any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close(context.Background()) }()
	_, err = conn.Exec(ctx, sql, args...)
	return err
}

// QueryStrings runs a query returning one text column in the database at dsn.
func QueryStrings(t testing.TB, dsn, sql string, args ...any) []string {
	t.Helper()
	return query(t, dsn, pgx.RowTo[string], sql, args...)
}

// Count runs a query returning one number (SELECT count(*) ...).
func Count(t testing.TB, dsn, sql string, args ...any) int64 {
	t.Helper()
	n := query(t, dsn, pgx.RowTo[int64], sql, args...)
	if len(n) != 1 {
		t.Fatalf("%s: %d rows, want one count", sql, len(n))
	}
	return n[0]
}

func query[T any](t testing.TB, dsn string, row pgx.RowToFunc[T], sql string, args ...any) []T {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(context.Background()) }()
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	out, err := pgx.CollectRows(rows, row)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return out
}

// DoWithHeader is Do with one extra request header instead of a token.
func (e *Env) DoWithHeader(method, path, header, value string, body any) Response {
	e.T.Helper()
	return e.do(method, path, "", body, header, value)
}
