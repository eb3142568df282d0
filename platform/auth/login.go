package auth

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/gin-gonic/gin"
	"golang.org/x/oauth2"
)

// loginCookie carries the state of one sign-in attempt across the round
// trip to the IdP; it is HMAC-signed and lives loginTTL.
const loginCookie = "thinlab_login"

const loginTTL = 10 * time.Minute

type loginState struct {
	Provider string `json:"p"`
	State    string `json:"s"`
	Nonce    string `json:"n"`
	Verifier string `json:"v"`
	ReturnTo string `json:"r"`
}

// Identity is who the IdP says signed in, after the ID token was verified.
type Identity struct {
	Provider string
	Issuer   string
	Subject  string
	Email    string
	// EmailVerified: the ID token's email_verified claim was true, or
	// the provider is configured with requireEmailVerified: false.
	EmailVerified bool
	Name          string
	Groups        []string
	// OrgRoles are the roles the provider's groupRoles grant for Groups.
	OrgRoles []OrgRole
}

// handleLogin starts the authorization code flow: it stores state, nonce
// and PKCE verifier in the signed login cookie and redirects to the IdP.
func (a *Auth) handleLogin(c *gin.Context) {
	p, ok := a.providers[c.Param("provider")]
	if !ok {
		a.fail(c, http.StatusNotFound, fmt.Sprintf("Unknown identity provider %q. Choose one on the sign-in page.", c.Param("provider")))
		return
	}
	oc, _, err := p.discover(c.Request.Context())
	if err != nil {
		a.log.Error("oidc discovery failed", "provider", p.cfg.Name, "err", err)
		a.fail(c, http.StatusBadGateway, fmt.Sprintf("Sign-in with %s is unavailable: the identity provider did not answer. Try again later.", p.cfg.DisplayName))
		return
	}
	st := loginState{
		Provider: p.cfg.Name,
		State:    randomToken(24),
		Nonce:    randomToken(24),
		Verifier: oauth2.GenerateVerifier(),
		ReturnTo: safeReturnTo(c.Query("return_to")),
	}
	val, err := a.loginSigner.seal(st, loginTTL, a.now())
	if err != nil {
		a.fail(c, http.StatusInternalServerError, "Could not start sign-in.")
		return
	}
	a.SetCookie(c, loginCookie, val, "/auth/", int(loginTTL.Seconds()))
	c.Redirect(http.StatusFound, oc.AuthCodeURL(st.State, oidc.Nonce(st.Nonce), oauth2.S256ChallengeOption(st.Verifier)))
}

// handleCallback finishes the flow: state check, code exchange with the
// PKCE verifier, ID token verification (signature, issuer, audience,
// expiry, nonce), user provisioning and a new session.
func (a *Auth) handleCallback(c *gin.Context) {
	ident, returnTo, err := a.finishLogin(c)
	// The login cookie is single-use whatever happened.
	a.SetCookie(c, loginCookie, "", "/auth/", -1)
	if err != nil {
		if le, ok := errors.AsType[*loginError](err); ok {
			a.log.Warn("sign-in refused", "provider", c.Param("provider"), "reason", le.msg, "err", le.err)
			a.fail(c, le.status, "Sign-in failed: "+le.msg)
			return
		}
		a.log.Error("sign-in failed", "provider", c.Param("provider"), "err", err)
		a.fail(c, http.StatusInternalServerError, "Sign-in failed because of a server error. Try again.")
		return
	}
	userID, err := a.users.SignIn(c, ident)
	if err != nil {
		a.log.Error("sign-in: provisioning the user failed", "provider", ident.Provider, "subject", ident.Subject, "err", err)
		a.fail(c, http.StatusInternalServerError, "Sign-in failed: your account could not be set up. Try again or contact an administrator.")
		return
	}
	if err := a.startSession(c, userID, ident.Provider); err != nil {
		a.log.Error("sign-in: creating the session failed", "err", err)
		a.fail(c, http.StatusInternalServerError, "Sign-in failed: the session could not be created. Try again.")
		return
	}
	a.log.Info("signed in", "provider", ident.Provider, "user", userID)
	// Sign-ins are rare next to requests: a good moment to drop sessions
	// that ended (indexed by expires_at).
	if _, err := a.sessions.DeleteExpiredSessions(c.Request.Context(), a.now().UTC()); err != nil {
		a.log.Warn("delete expired sessions", "err", err)
	}
	c.Redirect(http.StatusSeeOther, returnTo)
}

type loginError struct {
	status int
	msg    string
	err    error
}

func (e *loginError) Error() string { return e.msg + ": " + fmt.Sprint(e.err) }

func refuse(msg string, err error) error {
	return &loginError{status: http.StatusBadRequest, msg: msg, err: err}
}

func (a *Auth) finishLogin(c *gin.Context) (Identity, string, error) {
	p, ok := a.providers[c.Param("provider")]
	if !ok {
		return Identity{}, "", &loginError{status: http.StatusNotFound, msg: fmt.Sprintf("unknown identity provider %q.", c.Param("provider"))}
	}
	if e := c.Query("error"); e != "" {
		return Identity{}, "", refuse(fmt.Sprintf("the identity provider refused: %s %s", e, c.Query("error_description")), nil)
	}
	raw, err := c.Cookie(loginCookie)
	if err != nil || raw == "" {
		return Identity{}, "", refuse("the sign-in state cookie is missing (cookies disabled, or the sign-in took too long). Start again from the sign-in page.", err)
	}
	var st loginState
	if err := a.loginSigner.open(raw, &st, a.now()); err != nil {
		if errors.Is(err, errExpired) {
			return Identity{}, "", refuse("the sign-in attempt expired. Start again from the sign-in page.", err)
		}
		return Identity{}, "", refuse("the sign-in state cookie is invalid. Start again from the sign-in page.", err)
	}
	if st.Provider != p.cfg.Name {
		return Identity{}, "", refuse("the sign-in was started with another identity provider. Start again from the sign-in page.", nil)
	}
	if subtle.ConstantTimeCompare([]byte(c.Query("state")), []byte(st.State)) != 1 {
		return Identity{}, "", refuse("the state parameter does not match this browser's sign-in attempt (possible forged request). Start again from the sign-in page.", nil)
	}
	code := c.Query("code")
	if code == "" {
		return Identity{}, "", refuse("the identity provider returned no authorization code.", nil)
	}
	oc, verifier, err := p.discover(c.Request.Context())
	if err != nil {
		return Identity{}, "", &loginError{status: http.StatusBadGateway, msg: "the identity provider is unreachable. Try again later.", err: err}
	}
	ctx := p.context(c.Request.Context())
	tok, err := oc.Exchange(ctx, code, oauth2.VerifierOption(st.Verifier))
	if err != nil {
		return Identity{}, "", refuse("the identity provider did not accept the authorization code.", err)
	}
	rawID, _ := tok.Extra("id_token").(string)
	if rawID == "" {
		return Identity{}, "", refuse("the identity provider returned no ID token.", nil)
	}
	idt, err := verifier.Verify(ctx, rawID)
	if err != nil {
		return Identity{}, "", refuse(describeVerifyError(err), err)
	}
	if subtle.ConstantTimeCompare([]byte(idt.Nonce), []byte(st.Nonce)) != 1 {
		return Identity{}, "", refuse("the ID token's nonce does not match this sign-in attempt (possible replay).", nil)
	}
	ident, err := identityFrom(p.cfg, idt)
	if err != nil {
		return Identity{}, "", refuse(err.Error(), err)
	}
	return ident, st.ReturnTo, nil
}

func describeVerifyError(err error) string {
	var exp *oidc.TokenExpiredError
	switch {
	case errors.As(err, &exp):
		return "the ID token has expired. Check the clocks of the platform and the identity provider, then sign in again."
	case strings.Contains(err.Error(), "expected audience"):
		return "the ID token was issued for another client (wrong audience). Check clientID in the provider configuration."
	case strings.Contains(err.Error(), "issuer"):
		return "the ID token comes from an unexpected issuer. Check issuer in the provider configuration."
	default:
		return "the ID token could not be verified."
	}
}

func identityFrom(p ProviderConfig, idt *oidc.IDToken) (Identity, error) {
	var claims map[string]any
	if err := idt.Claims(&claims); err != nil {
		return Identity{}, fmt.Errorf("the ID token's claims are unreadable")
	}
	ident := Identity{Provider: p.Name, Issuer: idt.Issuer, Subject: idt.Subject}
	ident.Email, _ = claims["email"].(string)
	// Invitations are bound to email addresses: an address the IdP did
	// not verify (some let users type any) must not accept them.
	switch v := claims["email_verified"].(type) {
	case bool:
		ident.EmailVerified = v
	case string: // some IdPs send "true"
		ident.EmailVerified = v == "true"
	}
	if !p.EmailVerificationRequired() {
		ident.EmailVerified = true
	}
	ident.Name, _ = claims["name"].(string)
	if ident.Name == "" {
		ident.Name, _ = claims["preferred_username"].(string)
	}
	if ident.Email == "" {
		return Identity{}, fmt.Errorf("the ID token has no email claim: request the email scope from %s", p.DisplayName)
	}
	if p.GroupsClaim != "" {
		switch g := claims[p.GroupsClaim].(type) {
		case []any:
			for _, v := range g {
				if s, ok := v.(string); ok {
					ident.Groups = append(ident.Groups, s)
				}
			}
		case string:
			ident.Groups = []string{g}
		}
	}
	ident.OrgRoles = p.MapIdentity(ident.Groups, ident.Email, ident.EmailVerified)
	return ident, nil
}

// safeReturnTo keeps only local paths, so the sign-in flow cannot be used
// as an open redirect.
func safeReturnTo(s string) string {
	if s == "" || !strings.HasPrefix(s, "/") || strings.HasPrefix(s, "//") || strings.HasPrefix(s, "/\\") {
		return "/"
	}
	u, err := url.Parse(s)
	if err != nil || u.Host != "" || u.Scheme != "" {
		return "/"
	}
	return s
}

func randomToken(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return base64.RawURLEncoding.EncodeToString(b)
}
