package api

import (
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/orgrules"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/platformapi"
)

func tokenJSON(t store.APIToken) platformapi.Token {
	return platformapi.Token{
		ID: t.ID, Name: t.Name, Prefix: t.Prefix, UserID: t.UserID, CreatedAt: t.CreatedAt.UTC(),
		ExpiresAt: utc(t.ExpiresAt), RevokedAt: utc(t.RevokedAt), LastUsedAt: utc(t.LastUsedAt),
	}
}

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

func (a *API) listTokens(c *gin.Context) {
	toks, err := a.Store.ListAPITokens(c.Request.Context(), access.OrgID(c))
	if err != nil {
		a.internal(c, "list tokens", err)
		return
	}
	out := []platformapi.Token{}
	for _, t := range orgrules.VisibleTokens(toks, access.Role(c), access.Caller(c).UserID) {
		out = append(out, tokenJSON(t))
	}
	c.JSON(http.StatusOK, platformapi.List[platformapi.Token]{Items: out})
}

// checkCreateToken trims and validates a decoded CreateTokenRequest.
func checkCreateToken(req *platformapi.CreateTokenRequest, now time.Time) error {
	name, err := orgrules.TokenName(req.Name)
	if err != nil {
		return err
	}
	req.Name = name
	return orgrules.TokenExpiry(req.ExpiresAt, now)
}

func (a *API) createToken(c *gin.Context) {
	var req platformapi.CreateTokenRequest
	if !decode(c, &req) {
		return
	}
	if reject(c, checkCreateToken(&req, time.Now())) {
		return
	}
	tok, secret, err := a.Store.CreateAPIToken(c.Request.Context(), access.OrgID(c), access.Caller(c).UserID, req.Name, utc(req.ExpiresAt))
	if err != nil {
		a.internal(c, "create the token", err)
		return
	}
	audit.SetTarget(c, tok.ID)
	c.JSON(http.StatusCreated, platformapi.CreatedToken{Token: tokenJSON(*tok), Secret: secret})
}

func (a *API) revokeToken(c *gin.Context) {
	tok := access.Token(c)
	if reject(c, orgrules.MayRevokeToken(tok, access.Role(c), access.Caller(c).UserID)) {
		return
	}
	if err := a.Store.RevokeAPIToken(c.Request.Context(), access.OrgID(c), tok.ID); err != nil {
		a.internal(c, "revoke the token", err)
		return
	}
	c.Status(http.StatusNoContent)
}
