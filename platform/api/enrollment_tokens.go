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

// EnrollmentTokenJSON is how the API shows an enrollment token.
func EnrollmentTokenJSON(t *store.EnrollmentToken, now time.Time) platformapi.EnrollmentToken {
	out := platformapi.EnrollmentToken{
		ID: t.ID, Name: t.Name, Prefix: t.Prefix, MaxUses: t.MaxUses, Uses: t.Uses,
		CreatedAt: t.CreatedAt.UTC(), ExpiresAt: t.ExpiresAt.UTC(), RevokedAt: utc(t.RevokedAt), Usable: t.Usable(now),
	}
	if t.CreatedBy != nil {
		out.CreatedBy = *t.CreatedBy
	}
	return out
}

func (a *API) listEnrollmentTokens(c *gin.Context) {
	toks, err := a.Store.ListEnrollmentTokens(c.Request.Context(), access.OrgID(c))
	if err != nil {
		a.internal(c, "list enrollment tokens", err)
		return
	}
	now := time.Now()
	out := make([]platformapi.EnrollmentToken, 0, len(toks))
	for i := range toks {
		out = append(out, EnrollmentTokenJSON(&toks[i], now))
	}
	c.JSON(http.StatusOK, platformapi.List[platformapi.EnrollmentToken]{Items: out})
}

// createEnrollmentToken is open to API tokens: Terraform and scripts
// provision agents. An enrollment token only enrolls agents into the
// organization the API token acts in already.
func (a *API) createEnrollmentToken(c *gin.Context) {
	var req platformapi.CreateEnrollmentTokenRequest
	if !decode(c, &req) {
		return
	}
	name, err := orgrules.EnrollmentTokenName(req.Name)
	if reject(c, err) {
		return
	}
	expiresAt, err := orgrules.EnrollmentExpiry(req.ExpiresAt, time.Now())
	if reject(c, err) {
		return
	}
	var maxUses *int
	if req.SingleUse {
		one := 1
		maxUses = &one
	}
	tok, secret, err := a.Store.CreateEnrollmentToken(c.Request.Context(), access.OrgID(c), access.Caller(c).UserID, name, expiresAt, maxUses)
	if err != nil {
		a.internal(c, "create the enrollment token", err)
		return
	}
	audit.SetTarget(c, tok.ID)
	c.JSON(http.StatusCreated, platformapi.CreatedEnrollmentToken{
		EnrollmentToken: EnrollmentTokenJSON(tok, time.Now()), Secret: secret, Command: EnrollCommand(a.BaseURL, secret),
	})
}

func (a *API) revokeEnrollmentToken(c *gin.Context) {
	if err := a.Store.RevokeEnrollmentToken(c.Request.Context(), access.OrgID(c), access.EnrollmentToken(c).ID); err != nil {
		a.internal(c, "revoke the enrollment token", err)
		return
	}
	c.Status(http.StatusNoContent)
}
