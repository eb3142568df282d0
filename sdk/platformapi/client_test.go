package platformapi

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
)

// The client against a stand-in server (the real one is exercised by
// platform/api's tests, which use this client): error decoding and the
// request it sends.
func TestClientErrorsAndRequests(t *testing.T) {
	var gotAuth, gotPath, gotQuery string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth, gotPath, gotQuery = r.Header.Get("Authorization"), r.URL.EscapedPath(), r.URL.RawQuery
		switch r.URL.Path {
		case "/api/v1/orgs/acme/tokens":
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"error":{"code":"invalid","message":"name is required","field":"name"}}`))
		case "/api/v1/orgs/acme/audit":
			_, _ = w.Write([]byte(`{"items":[{"id":7,"action":"token.create","result":"success"}]}`))
		default:
			w.WriteHeader(http.StatusBadGateway)
			_, _ = w.Write([]byte("upstream down"))
		}
	}))
	defer srv.Close()
	c := NewClient(srv.URL+"/", "thl_secret")
	ctx := t.Context()

	_, err := c.CreateToken(ctx, "acme", CreateTokenRequest{})
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.Status != http.StatusBadRequest || apiErr.Field != "name" || apiErr.Code != CodeInvalid {
		t.Fatalf("error: %#v", err)
	}
	if gotAuth != "Bearer thl_secret" {
		t.Fatalf("Authorization %q", gotAuth)
	}
	evs, err := c.Audit(ctx, "acme", AuditQuery{Action: "token.", Actor: "a@b.c"})
	if err != nil || len(evs) != 1 || evs[0].ID != 7 {
		t.Fatalf("audit: %+v %v", evs, err)
	}
	if gotQuery != "action=token.&actor=a%40b.c&format=json" {
		t.Fatalf("query %q", gotQuery)
	}
	err = c.RemoveMember(ctx, "a/b", "usr_1")
	if !errors.As(err, &apiErr) || apiErr.Status != http.StatusBadGateway || apiErr.Message != "upstream down" {
		t.Fatalf("non-JSON error: %#v", err)
	}
	if gotPath != "/api/v1/orgs/a%2Fb/members/usr_1" {
		t.Fatalf("path not escaped: %q", gotPath)
	}
}
