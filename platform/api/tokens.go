package api

import (
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/principal"
	"github.com/thinlab/thinlab/platform/rbac"
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

// seesAllTokens: people who manage members manage everyone's tokens;
// others see and revoke only their own.
func seesAllTokens(c *gin.Context) bool { return rbac.Can(access.Role(c), rbac.MemberManage) }

func (a *API) listTokens(c *gin.Context) {
	toks, err := a.Store.ListAPITokens(c.Request.Context(), access.OrgID(c))
	if err != nil {
		a.internal(c, "list tokens", err)
		return
	}
	me, all := principal.From(c).UserID, seesAllTokens(c)
	out := []platformapi.Token{}
	for _, t := range toks {
		if all || t.UserID == me {
			out = append(out, tokenJSON(t))
		}
	}
	c.JSON(http.StatusOK, platformapi.List[platformapi.Token]{Items: out})
}

// checkCreateToken trims and validates a decoded CreateTokenRequest.
func checkCreateToken(req *platformapi.CreateTokenRequest, now time.Time) *fieldError {
	req.Name = strings.TrimSpace(req.Name)
	switch {
	case req.Name == "":
		return &fieldError{"name", "name is required: say what the token is for, such as \"ci\""}
	case len(req.Name) > 100:
		return &fieldError{"name", "name is longer than 100 characters"}
	case req.ExpiresAt != nil && !req.ExpiresAt.After(now):
		return &fieldError{"expires_at", "expires_at is in the past: give a future time or leave it out"}
	}
	return nil
}

func (a *API) createToken(c *gin.Context) {
	var req platformapi.CreateTokenRequest
	if !decode(c, &req) {
		return
	}
	if reject(c, checkCreateToken(&req, time.Now())) {
		return
	}
	tok, secret, err := a.Store.CreateAPIToken(c.Request.Context(), access.OrgID(c), principal.From(c).UserID, req.Name, utc(req.ExpiresAt))
	if err != nil {
		a.internal(c, "create the token", err)
		return
	}
	audit.SetTarget(c, tok.ID)
	c.JSON(http.StatusCreated, platformapi.CreatedToken{Token: tokenJSON(*tok), Secret: secret})
}

func (a *API) revokeToken(c *gin.Context) {
	id := c.Param("token")
	audit.SetTarget(c, id)
	ctx := c.Request.Context()
	tok, err := a.Store.APITokenByID(ctx, access.OrgID(c), id)
	if errors.Is(err, store.ErrNotFound) || (err == nil && !seesAllTokens(c) && tok.UserID != principal.From(c).UserID) {
		notFound(c, "token")
		return
	}
	if err != nil {
		a.internal(c, "load the token", err)
		return
	}
	if err := a.Store.RevokeAPIToken(ctx, access.OrgID(c), id); err != nil {
		a.internal(c, "revoke the token", err)
		return
	}
	c.Status(http.StatusNoContent)
}
