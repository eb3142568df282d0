package agentapi

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/thinlab/thinlab/internal/tlstest"
)

// recorder is a server that records the credentials each request carried
// and answers a valid /status body.
type recorder struct {
	mu   sync.Mutex
	seen []string
}

func (rc *recorder) handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc.mu.Lock()
		rc.seen = append(rc.seen, r.Header.Get(VerificationTokenHeader)+"|"+r.Header.Get("Authorization"))
		rc.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		// The recorded headers are what the test checks; a client that
		// hung up early fails it there.
		_, _ = io.WriteString(w, `{"status":{"code":"OK","message":"ok"}}`)
	})
}

func (rc *recorder) got() []string {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]string(nil), rc.seen...)
}

// TestRedirectDropsToken: an agent (or a proxy in front of it) that
// redirects to another origin, or from https to http, does not get the
// token sent there; a redirect within the origin keeps it.
func TestRedirectDropsToken(t *testing.T) {
	const tok = "redirect-test-token-0123456789abcdef"
	other := &recorder{}
	otherSrv := httptest.NewServer(other.handler())
	t.Cleanup(otherSrv.Close)

	self := &recorder{}
	mux := http.NewServeMux()
	mux.HandleFunc("/away/status", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, otherSrv.URL+"/status", http.StatusFound)
	})
	mux.HandleFunc("/same/status", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/status", http.StatusTemporaryRedirect)
	})
	mux.Handle("/status", self.handler())
	plain := httptest.NewServer(mux)
	t.Cleanup(plain.Close)
	secure := httptest.NewTLSServer(mux)
	t.Cleanup(secure.Close)

	for _, tc := range []struct {
		name    string
		base    string
		client  *http.Client
		wantTo  *recorder
		keepTok bool
	}{
		{"to another origin", plain.URL + "/away", nil, other, false},
		{"from https to http", secure.URL + "/away", secure.Client(), other, false},
		{"within the origin", plain.URL + "/same", nil, self, true},
		{"within the https origin", secure.URL + "/same", secure.Client(), self, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(tc.wantTo.got())
			c := &Client{BaseURL: tc.base, Token: tok, HTTPClient: tc.client}
			if _, err := c.Status(t.Context()); err != nil {
				t.Fatal(err)
			}
			seen := tc.wantTo.got()
			if len(seen) != before+1 {
				t.Fatalf("the redirect target got %d requests, want 1", len(seen)-before)
			}
			last := seen[len(seen)-1]
			if tc.keepTok && last != tok+"|" {
				t.Fatalf("same-origin redirect: want the token kept, got %q", last)
			}
			if !tc.keepTok && last != "|" {
				t.Fatalf("redirect away: want no Verification-Token and no Authorization, got %q", last)
			}
		})
	}

	// A CheckRedirect the caller set still runs, after the token is
	// dropped.
	called := false
	hc := &http.Client{CheckRedirect: func(req *http.Request, via []*http.Request) error { called = true; return nil }}
	c := &Client{BaseURL: plain.URL + "/away", Token: tok, HTTPClient: hc}
	if _, err := c.Status(t.Context()); err != nil {
		t.Fatal(err)
	}
	if !called {
		t.Fatal("the caller's CheckRedirect was not called")
	}
	if last := other.got()[len(other.got())-1]; last != "|" {
		t.Fatalf("with the caller's CheckRedirect: token sent away: %q", last)
	}
}

// TestLeftOriginChain: once a chain leaves the origin, coming back does
// not restore the token (the redirect target chose where to send it).
func TestLeftOriginChain(t *testing.T) {
	mk := func(u string) *http.Request {
		r, err := http.NewRequest(http.MethodGet, u, nil)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	for _, tc := range []struct {
		chain []string
		want  bool
	}{
		{[]string{"https://a:2345/x", "https://a:2345/y"}, false},
		{[]string{"https://A:443/x", "https://a/y"}, false},
		{[]string{"https://a:2345/x", "http://a:2345/y"}, true},
		{[]string{"https://a/x", "https://b/y"}, true},
		{[]string{"https://a/x", "https://a:8443/y"}, true},
		{[]string{"https://a/x", "https://evil/y", "https://a/z"}, true},
	} {
		var via []*http.Request
		for _, u := range tc.chain[:len(tc.chain)-1] {
			via = append(via, mk(u))
		}
		if got := leftOrigin(mk(tc.chain[len(tc.chain)-1]), via); got != tc.want {
			t.Errorf("%s: leftOrigin = %v, want %v", strings.Join(tc.chain, " -> "), got, tc.want)
		}
	}
}

// TestNewHTTPClientCA: the client trusts an agent certificate signed by
// the given CA and refuses it without; a file that holds no certificate
// is an error naming the file.
func TestNewHTTPClientCA(t *testing.T) {
	files := tlstest.New(t)
	if _, err := NewHTTPClient(files.Key, 0); err == nil || !strings.Contains(err.Error(), files.Key) {
		t.Fatalf("a key as CA file: want an error naming it, got %v", err)
	}
	if _, err := NewHTTPClient("/nonexistent/ca.pem", 0); err == nil || !strings.Contains(err.Error(), "CA file") {
		t.Fatalf("missing CA file: want an error, got %v", err)
	}
}
