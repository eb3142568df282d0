package api

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
)

// recordingAgent stands for an agent's tunnel: it records the request the
// proxy sends.
type recordingAgent struct{ got *http.Request }

func (r *recordingAgent) RoundTripper(string) http.RoundTripper { return r }

func (r *recordingAgent) Connected(string) (time.Time, time.Time, bool) {
	return time.Now(), time.Now(), true
}

func (r *recordingAgent) RoundTrip(req *http.Request) (*http.Response, error) {
	r.got = req
	return &http.Response{StatusCode: http.StatusCreated, Header: http.Header{"Content-Type": {"application/json"}, "Set-Cookie": {"agent=1"}},
		Body: io.NopCloser(strings.NewReader(`{"id":"c1"}`)), Request: req}, nil
}

// Only Content-Type, Accept and User-Agent of the caller reach the agent:
// no credentials of the platform (bearer token, session cookie, CSRF
// token), no forged agent token, no hop-by-hop or forwarding headers.
func TestCallAgentForwardsOnlyAllowlistedHeaders(t *testing.T) {
	c, _ := gin.CreateTestContext(httptest.NewRecorder())
	c.Request = httptest.NewRequestWithContext(t.Context(), http.MethodPost, "/x", nil)
	from := http.Header{}
	for k, v := range map[string]string{
		"Authorization": "Bearer thl_user", "Cookie": "thinlab_session=s", "X-Csrf-Token": "t", "Verification-Token": "forged",
		"Connection": "keep-alive, X-Secret", "X-Secret": "1", "X-Forwarded-For": "10.0.0.1", "X-Forwarded-User-Email": "boss@example.com",
		"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "thinlab-cli",
	} {
		from.Set(k, v)
	}
	rec := &recordingAgent{}
	ans, err := CallAgent(c, rec, "agt_1", http.MethodPost, "/clone", "a=b", from, []byte(`{}`), "")
	if err != nil {
		t.Fatal(err)
	}
	if rec.got.URL.Path != "/clone" || rec.got.URL.RawQuery != "a=b" || ans.Status != http.StatusCreated || string(ans.Body) != `{"id":"c1"}` {
		t.Fatalf("forwarded %s?%s, answer %d %s", rec.got.URL.Path, rec.got.URL.RawQuery, ans.Status, ans.Body)
	}
	for k := range rec.got.Header {
		switch k {
		case "Content-Type", "Accept", "User-Agent":
		default:
			t.Errorf("header %s reached the agent", k)
		}
	}
	if rec.got.Header.Get("User-Agent") != "thinlab-cli" || rec.got.Header.Get("Content-Type") != "application/json" {
		t.Errorf("allowlisted headers lost: %v", rec.got.Header)
	}
	// A commit names the authenticated caller, whatever the request said.
	if _, err := CallAgent(c, rec, "agt_1", http.MethodPost, "/branch/snapshot", "", from, []byte(`{}`), "ada@example.com"); err != nil {
		t.Fatal(err)
	}
	if got := rec.got.Header.Values(AuthorHeader); len(got) != 1 || got[0] != "ada@example.com" {
		t.Errorf("author header %q, want only the caller's e-mail", got)
	}
}

func TestEnginePath(t *testing.T) {
	for in, want := range map[string]string{
		"/api/v1/orgs/acme/agents/agt_1/engine/clones":                                "/clones",
		"/api/v1/orgs/acme/agents/agt_1/engine/snapshot/pool@snapshot_20260101000000": "/snapshot/pool@snapshot_20260101000000",
		"/api/v1/orgs/acme/agents/agt_1/engine/snapshot/pool/branch/x@r1":             "/snapshot/pool/branch/x@r1",
		"/api/v1/orgs/acme/agents/agt_1/engine/clone/c%2F1/reset":                     "/clone/c%2F1/reset",
	} {
		r := httptest.NewRequest(http.MethodGet, in, nil)
		if got := enginePath(r); got != want {
			t.Errorf("enginePath(%s) = %s, want %s", in, got, want)
		}
	}
}
