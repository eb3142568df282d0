package access

import (
	"errors"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/principal"
	"github.com/thinlab/thinlab/platform/store"
)

// BearerToken authenticates "Authorization: Bearer <api token>". A request
// without that header is left to the next authenticator.
func BearerToken(s *store.Store) principal.Authenticator {
	return func(c *gin.Context) (*principal.Principal, error) {
		h := c.GetHeader("Authorization")
		if h == "" {
			return nil, nil
		}
		scheme, secret, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			return nil, principal.Reject("Authorization header must be \"Bearer <api token>\"")
		}
		tok, err := s.AuthenticateAPIToken(c.Request.Context(), strings.TrimSpace(secret))
		switch {
		case errors.Is(err, store.ErrTokenInvalid), errors.Is(err, store.ErrTokenExpired), errors.Is(err, store.ErrTokenRevoked):
			return nil, principal.Reject(err.Error())
		case err != nil:
			return nil, err
		}
		u, err := s.UserByID(c.Request.Context(), tok.UserID)
		if errors.Is(err, store.ErrNotFound) {
			return nil, principal.Reject(store.ErrTokenInvalid.Error())
		}
		if err != nil {
			return nil, err
		}
		return &principal.Principal{
			UserID: u.ID, Email: u.Email, Name: u.Name, Method: principal.MethodToken,
			TokenID: tok.ID, TokenOrgID: tok.OrgID,
		}, nil
	}
}
