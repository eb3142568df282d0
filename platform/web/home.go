package web

import (
	"net/http"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/orgrules"
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
	if w.refused(c, "create the organization", orgrules.NewOrganization(slug, name), again) {
		return
	}
	org, err := w.store.CreateOrganization(c.Request.Context(), slug, name, access.Caller(c).UserID)
	if w.refused(c, "create the organization", orgrules.CreateOrganizationFailed(err, slug), again) {
		return
	}
	audit.SetOrg(c, org.ID)
	audit.SetTarget(c, org.ID)
	w.redirectWithFlash(c, "/o/"+org.Slug, "Organization "+org.Name+" created.")
}
