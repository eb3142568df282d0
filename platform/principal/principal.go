// Package principal is who is calling: the user behind a request,
// established by one of the server's authenticators (API token, session),
// and how other packages read it from the gin context.
package principal

import (
	"errors"

	"github.com/gin-gonic/gin"
)

// Principal is an authenticated caller.
type Principal struct {
	UserID string
	Email  string
	Name   string
	// Method is how the caller authenticated: "token" or "session".
	Method string
	// TokenID and TokenOrgID are set for API tokens: the token acts only
	// inside TokenOrgID.
	TokenID    string
	TokenOrgID string
	// SessionID is set by the session authenticator.
	SessionID string
}

// Authentication methods.
const (
	MethodToken   = "token"
	MethodSession = "session"
)

// Authenticator looks at a request for its kind of credential. It returns
// (nil, nil) when the request carries none (the next authenticator is
// tried), a principal when the credential is good, and an *Error (answered
// as 401 with its message) when the credential is present but bad.
type Authenticator func(*gin.Context) (*Principal, error)

// Error is a rejected credential; Message is shown to the caller.
type Error struct{ Message string }

func (e *Error) Error() string { return e.Message }

// Reject builds the error an Authenticator returns for a bad credential.
func Reject(message string) error { return &Error{Message: message} }

// IsRejection reports whether err is a rejected credential (as opposed to
// an internal failure, answered with 500).
func IsRejection(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}

const contextKey = "thinlab.principal"

// Set stores p in the request context.
func Set(c *gin.Context, p *Principal) { c.Set(contextKey, p) }

// From returns the request's principal, or nil when unauthenticated.
func From(c *gin.Context) *Principal {
	v, ok := c.Get(contextKey)
	if !ok {
		return nil
	}
	p, _ := v.(*Principal)
	return p
}
