package api

import (
	"errors"
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/principal"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/platformapi"
)

func orgJSON(o store.OrganizationWithRole) platformapi.Org {
	return platformapi.Org{ID: o.ID, Slug: o.Slug, Name: o.Name, Role: string(o.Role), CreatedAt: o.CreatedAt.UTC()}
}

// visibleOrgs lists the caller's organizations; a token sees only its own.
func (a *API) visibleOrgs(c *gin.Context) ([]platformapi.Org, error) {
	p := principal.From(c)
	orgs, err := a.Store.OrganizationsOfUser(c.Request.Context(), p.UserID)
	if err != nil {
		return nil, err
	}
	out := []platformapi.Org{}
	for _, o := range orgs {
		if p.TokenOrgID == "" || p.TokenOrgID == o.ID {
			out = append(out, orgJSON(o))
		}
	}
	return out, nil
}

func (a *API) me(c *gin.Context) {
	p := principal.From(c)
	u, err := a.Store.UserByID(c.Request.Context(), p.UserID)
	if err != nil {
		a.internal(c, "load your account", err)
		return
	}
	orgs, err := a.visibleOrgs(c)
	if err != nil {
		a.internal(c, "list organizations", err)
		return
	}
	c.JSON(http.StatusOK, platformapi.Me{ID: u.ID, Email: u.Email, Name: u.Name, Method: p.Method, TokenOrgID: p.TokenOrgID, Orgs: orgs})
}

func (a *API) listOrgs(c *gin.Context) {
	orgs, err := a.visibleOrgs(c)
	if err != nil {
		a.internal(c, "list organizations", err)
		return
	}
	c.JSON(http.StatusOK, platformapi.List[platformapi.Org]{Items: orgs})
}

// checkCreateOrg validates a decoded CreateOrgRequest.
func checkCreateOrg(req platformapi.CreateOrgRequest) *fieldError {
	if err := store.ValidSlug(req.Slug); err != nil {
		return &fieldError{"slug", err.Error()}
	}
	if len(req.Name) > 200 {
		return &fieldError{"name", "name is longer than 200 characters"}
	}
	return nil
}

func (a *API) createOrg(c *gin.Context) {
	var req platformapi.CreateOrgRequest
	if !decode(c, &req) {
		return
	}
	p := principal.From(c)
	if reject(c, checkCreateOrg(req)) {
		return
	}
	org, err := a.Store.CreateOrganization(c.Request.Context(), req.Slug, req.Name, p.UserID)
	if errors.Is(err, store.ErrSlugReserved) {
		access.Error(c, http.StatusConflict, platformapi.CodeConflict, "slug "+req.Slug+" is reserved: an identity provider group mapping places people in this organization; choose another slug", "slug")
		return
	}
	if errors.Is(err, store.ErrConflict) {
		access.Error(c, http.StatusConflict, platformapi.CodeConflict, "slug "+req.Slug+" is taken: choose another", "slug")
		return
	}
	if err != nil {
		a.internal(c, "create the organization", err)
		return
	}
	audit.SetOrg(c, org.ID)
	audit.SetTarget(c, org.ID)
	c.JSON(http.StatusCreated, orgJSON(store.OrganizationWithRole{Organization: *org, Role: "owner"}))
}
