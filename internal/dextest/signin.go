package dextest

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
)

// Hop is one answer on the way through a sign-in.
type Hop struct {
	Method string
	URL    *url.URL
	Status int
	Header http.Header
}

// SignInResult is where a sign-in ended and how it got there.
type SignInResult struct {
	// Hops are every answer in order, redirects included; the last one is
	// the final page.
	Hops []Hop
	// Body is the final page.
	Body string
}

// Final is the last answer (the page the browser lands on).
func (r *SignInResult) Final() Hop { return r.Hops[len(r.Hops)-1] }

// Hop returns the first answer whose path starts with prefix (such as
// "/auth/callback/"), to read what the relying party's callback set.
func (r *SignInResult) Hop(prefix string) (Hop, bool) {
	for _, h := range r.Hops {
		if strings.HasPrefix(h.URL.Path, prefix) {
			return h, true
		}
	}
	return Hop{}, false
}

// formRE finds Dex's password form; its action carries the auth request's
// state, so it is read from the page rather than built.
var (
	formRE     = regexp.MustCompile(`(?s)<form[^>]*\baction="([^"]*)"[^>]*>(.*?)</form>`)
	passwordRE = regexp.MustCompile(`\bname="password"`)
)

// maxHops bounds the redirects of one sign-in (the relying party's login,
// Dex's auth and connector pages, the form post, approval, the callback
// and the landing page are about eight).
const maxHops = 20

// SignIn signs u in the way a browser without JavaScript does: a GET of
// startURL (the relying party's login URL), then every redirect by hand,
// and Dex's login form submitted as a plain POST with u's email and
// password. client's cookie jar keeps the relying party's cookies (the
// session among them); its CheckRedirect is not used. It fails when Dex
// shows its login form again (a refused password) or the hops do not
// end.
func (d *Dex) SignIn(ctx context.Context, client *http.Client, startURL string, u User) (*SignInResult, error) {
	res, _, err := d.signIn(ctx, client, startURL, u, "")
	return res, err
}

// SignInUntil is SignIn that stops before requesting the first redirect
// whose path starts with stopPath (such as "/auth/callback/") and returns
// that URL, so that a test can tamper with the callback before sending
// it. It fails when no redirect reaches stopPath.
func (d *Dex) SignInUntil(ctx context.Context, client *http.Client, startURL string, u User, stopPath string) (*url.URL, *SignInResult, error) {
	res, stop, err := d.signIn(ctx, client, startURL, u, stopPath)
	if err == nil && stop == nil {
		err = fmt.Errorf("sign-in of %s ended at %s without a redirect to %s", u.Email, res.Final().URL, stopPath)
	}
	return stop, res, err
}

func (d *Dex) signIn(ctx context.Context, client *http.Client, startURL string, u User, stopPath string) (*SignInResult, *url.URL, error) {
	manual := *client
	manual.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	res := &SignInResult{}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, startURL, nil)
	if err != nil {
		return nil, nil, err
	}
	posted := false
	for range maxHops {
		resp, err := manual.Do(req)
		if err != nil {
			return res, nil, err
		}
		body, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close() // fully read; a close error loses nothing
		if err != nil {
			return res, nil, err
		}
		res.Hops = append(res.Hops, Hop{Method: req.Method, URL: req.URL, Status: resp.StatusCode, Header: resp.Header})
		if loc := resp.Header.Get("Location"); loc != "" && resp.StatusCode >= 300 && resp.StatusCode < 400 {
			next, err := req.URL.Parse(loc)
			if err != nil {
				return res, nil, fmt.Errorf("redirect from %s to %q: %w", req.URL, loc, err)
			}
			if stopPath != "" && strings.HasPrefix(next.Path, stopPath) {
				return res, next, nil
			}
			if req, err = http.NewRequestWithContext(ctx, http.MethodGet, next.String(), nil); err != nil {
				return res, nil, err
			}
			continue
		}
		action, isLogin := d.loginForm(req.URL, string(body))
		if !isLogin {
			res.Body = string(body)
			return res, nil, nil
		}
		if posted {
			return res, nil, fmt.Errorf("dex refused the password of %s (its login form came back)", u.Email)
		}
		posted = true
		form := url.Values{"login": {u.Email}, "password": {u.Password}}
		if req, err = http.NewRequestWithContext(ctx, http.MethodPost, action.String(), strings.NewReader(form.Encode())); err != nil {
			return res, nil, err
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	return res, nil, fmt.Errorf("sign-in of %s did not end within %d hops (last %s)", u.Email, maxHops, req.URL)
}

// loginForm reports whether page (at pageURL) is Dex's password form and
// where it posts to.
func (d *Dex) loginForm(pageURL *url.URL, page string) (*url.URL, bool) {
	if !strings.HasPrefix(pageURL.String(), d.Issuer+"/") {
		return nil, false
	}
	for _, m := range formRE.FindAllStringSubmatch(page, -1) {
		if !passwordRE.MatchString(m[2]) {
			continue
		}
		action, err := pageURL.Parse(html.UnescapeString(m[1]))
		if err != nil {
			return nil, false
		}
		return action, true
	}
	return nil, false
}

// Subject is the ID token subject Dex gives u: its user ID and the
// connector ID ("local" for the password database), encoded the way Dex
// encodes them (a protobuf message, base64url without padding).
func (u User) Subject() (string, error) {
	if u.UserID == "" {
		return "", errors.New("dextest: the user has no UserID yet (Start assigns one)")
	}
	// A protobuf length below 128 is one varint byte; longer ones are not
	// encoded here.
	field := func(n byte, name, s string) ([]byte, error) {
		l := len(s)
		if l > 127 {
			return nil, fmt.Errorf("dextest: %s is %d bytes, longer than 127 (Subject encodes one-byte lengths only)", name, l)
		}
		return append([]byte{n<<3 | 2, byte(l)}, s...), nil
	}
	id, err := field(1, "UserID", u.UserID)
	if err != nil {
		return "", err
	}
	conn, err := field(2, "connector ID", "local")
	if err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(append(id, conn...)), nil
}
