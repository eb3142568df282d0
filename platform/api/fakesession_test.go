package api_test

import (
	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/principal"
	"github.com/thinlab/thinlab/platform/store"
)

// testUserHeader is read by a FAKE session authenticator used only by the
// API tests of handler rules (members, tokens, audit, rate limits): it
// turns a user ID into a session principal without a cookie or a CSRF
// token. The tenant-isolation walk (tenancy_test.go) does not use it: it
// signs in through the real Dex and sends the real session cookie and CSRF
// token.
const testUserHeader = "X-Platformtest-User"

func fakeSession(st *store.Store) principal.Authenticator {
	return func(c *gin.Context) (*principal.Principal, error) {
		id := c.GetHeader(testUserHeader)
		if id == "" {
			return nil, nil // no header: not this authenticator's request
		}
		u, err := st.UserByID(c.Request.Context(), id)
		if err != nil {
			return nil, principal.Reject("unknown test user")
		}
		return &principal.Principal{UserID: u.ID, Email: u.Email, Method: principal.MethodSession}, nil
	}
}
