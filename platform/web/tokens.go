package web

import (
	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/orgrules"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/ui"
)

// visibleTokens lists the tokens the caller may see.
func (w *Web) visibleTokens(c *gin.Context) ([]store.APIToken, error) {
	toks, err := w.store.ListAPITokens(c.Request.Context(), access.OrgID(c))
	if err != nil {
		return nil, err
	}
	return orgrules.VisibleTokens(toks, access.Role(c), access.Caller(c).UserID), nil
}

// tokens lists API tokens and the create form.
func (w *Web) tokens(c *gin.Context) {
	w.renderTokens(c, w.page(c, "API tokens"), ui.Tokens{})
}

func (w *Web) renderTokens(c *gin.Context, p ui.Page, v ui.Tokens) {
	p.Title = "API tokens"
	toks, err := w.visibleTokens(c)
	if err != nil {
		w.internal(c, "list tokens", err)
		return
	}
	owners := map[string]string{}
	if members, err := w.store.ListMembers(c.Request.Context(), access.OrgID(c)); err == nil {
		for _, m := range members {
			owners[m.UserID] = m.Email
		}
	}
	v.CanManage = true // the route requires token:manage
	v.APIBase = w.auth.BaseURL() + "/api/v1"
	for _, t := range toks {
		owner := owners[t.UserID]
		if owner == "" {
			owner = t.UserID
		}
		v.Tokens = append(v.Tokens, ui.Token{
			ID: t.ID, Name: t.Name, Prefix: t.Prefix, Owner: owner, Created: t.CreatedAt,
			Expires: t.ExpiresAt, LastUsed: t.LastUsedAt, Revoked: t.RevokedAt, CanEdit: true,
		})
	}
	w.render(c, p.Status, ui.TokensPage(p, v))
}

func (w *Web) renderTokensAgain(c *gin.Context, p ui.Page) { w.renderTokens(c, p, ui.Tokens{}) }
