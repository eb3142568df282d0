package dextest

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

func TestStartServesDiscovery(t *testing.T) {
	d := Start(t, Options{RedirectURIs: []string{"http://127.0.0.1:1/callback"}})
	resp, err := http.Get(d.Issuer + "/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }() // read fully by the decoder; nothing to lose
	var doc struct {
		Issuer string `json:"issuer"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatal(err)
	}
	if doc.Issuer != d.Issuer {
		t.Fatalf("issuer = %q, want %q", doc.Issuer, d.Issuer)
	}
	d.Stop()
	if resp, err := http.Get(d.Issuer + "/.well-known/openid-configuration"); err == nil {
		_ = resp.Body.Close()
		t.Fatalf("dex still answers after Stop: %s", resp.Status)
	}
}

// TestSignInSubmitsLoginForm signs in through Dex's real login form into a
// bare relying party (a callback that answers 200): the right password
// ends at the callback with a code and the state, a wrong one is an error.
func TestSignInSubmitsLoginForm(t *testing.T) {
	rp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "callback reached") // the test reads the hop, not this
	}))
	t.Cleanup(rp.Close)
	d := Start(t, Options{RedirectURIs: []string{rp.URL + "/callback"}})
	authURL := d.Issuer + "/auth?" + url.Values{
		"client_id": {d.ClientID}, "redirect_uri": {rp.URL + "/callback"},
		"response_type": {"code"}, "scope": {"openid email"}, "state": {"st-123"},
	}.Encode()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Jar: jar}

	t.Run("right password", func(t *testing.T) {
		res, err := d.SignIn(t.Context(), client, authURL, d.Users[0])
		if err != nil {
			t.Fatalf("sign-in: %v\n%s", err, d.LogContent())
		}
		cb, ok := res.Hop("/callback")
		if !ok || cb.URL.Query().Get("code") == "" || cb.URL.Query().Get("state") != "st-123" {
			t.Fatalf("want a hop to /callback with a code and state st-123; hops: %+v", res.Hops)
		}
		if res.Final().Status != http.StatusOK || res.Body != "callback reached" {
			t.Fatalf("final page: HTTP %d %q, want 200 from the callback", res.Final().Status, res.Body)
		}
		if posts := countPosts(res.Hops); posts != 1 {
			t.Fatalf("%d POSTs to Dex, want the login form posted once", posts)
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		u := d.Users[0]
		u.Password = "not-" + u.Password
		res, err := d.SignIn(t.Context(), client, authURL, u)
		if err == nil || !strings.Contains(err.Error(), "refused the password") {
			t.Fatalf("wrong password: err %v, want the refused password named", err)
		}
		if _, ok := res.Hop("/callback"); ok {
			t.Fatal("a wrong password reached the callback")
		}
	})
}

func countPosts(hops []Hop) int {
	n := 0
	for _, h := range hops {
		if h.Method == http.MethodPost {
			n++
		}
	}
	return n
}
