package web

import (
	"errors"
	"net/http"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/principal"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/ui"
)

// home sends the person to their first organization, or offers to create
// one.
func (w *Web) home(c *gin.Context) {
	p := w.page(c, "Welcome")
	if len(p.Orgs) > 0 {
		c.Redirect(http.StatusSeeOther, "/o/"+p.Orgs[0].Slug)
		return
	}
	w.render(c, http.StatusOK, ui.NoOrgPage(p))
}

// switchOrg is the org switcher's target (a GET form, so it works without
// JavaScript). Membership is checked by the organization's own routes.
func (w *Web) switchOrg(c *gin.Context) {
	slug := c.Query("org")
	if store.ValidSlug(slug) != nil {
		c.Redirect(http.StatusSeeOther, "/")
		return
	}
	c.Redirect(http.StatusSeeOther, "/o/"+slug)
}

// createOrg creates an organization with the caller as owner.
func (w *Web) createOrg(c *gin.Context) {
	slug := strings.TrimSpace(c.PostForm("slug"))
	name := strings.TrimSpace(c.PostForm("name"))
	again := func(c *gin.Context, p ui.Page) { w.render(c, p.Status, ui.NoOrgPage(p)) }
	if err := store.ValidSlug(slug); err != nil {
		w.fail(c, http.StatusBadRequest, err.Error(), again)
		return
	}
	org, err := w.store.CreateOrganization(c.Request.Context(), slug, name, principal.From(c).UserID)
	if errors.Is(err, store.ErrSlugReserved) {
		w.fail(c, http.StatusConflict, "the slug "+slug+" is reserved: an identity provider group mapping places people in this organization; choose another", again)
		return
	}
	if errors.Is(err, store.ErrConflict) {
		w.fail(c, http.StatusConflict, "the slug "+slug+" is taken: choose another", again)
		return
	}
	if err != nil {
		w.internal(c, "create the organization", err)
		return
	}
	audit.SetOrg(c, org.ID)
	audit.SetTarget(c, org.ID)
	redirectWithFlash(c, "/o/"+org.Slug, "Organization "+org.Name+" created.")
}
