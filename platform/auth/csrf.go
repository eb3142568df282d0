package auth

import (
	"crypto/subtle"
	"net/http"

	"github.com/gin-gonic/gin"
)

// CSRFField is the hidden form field every POST form of a session carries;
// CSRFHeader is the same token for scripts.
const (
	CSRFField  = "csrf_token"
	CSRFHeader = "X-CSRF-Token"
)

// CSRFRefusal is the answer to a missing or wrong token.
const CSRFRefusal = "CSRF token missing or invalid"

// CSRFToken returns the session's token for forms ("" without a session).
func CSRFToken(c *gin.Context) string {
	if s, ok := SessionFrom(c); ok {
		return s.CSRFToken
	}
	return ""
}

// csrfOK checks the synchronizer token on state-changing requests.
func csrfOK(c *gin.Context, s *Session) bool {
	switch c.Request.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return true
	}
	got := c.GetHeader(CSRFHeader)
	if got == "" {
		got = c.PostForm(CSRFField)
	}
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(s.CSRFToken)) == 1
}
