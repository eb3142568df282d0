package api

import (
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/orgrules"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/platformapi"
)

func orgJSON(o store.OrganizationWithRole) platformapi.Org {
	return platformapi.Org{ID: o.ID, Slug: o.Slug, Name: o.Name, Role: string(o.Role), CreatedAt: o.CreatedAt.UTC()}
}

// visibleOrgs lists the caller's organizations; a token sees only its own.
func (a *API) visibleOrgs(c *gin.Context) ([]platformapi.Org, error) {
	p := access.Caller(c)
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
	p := access.Caller(c)
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
func checkCreateOrg(req platformapi.CreateOrgRequest) error {
	return orgrules.NewOrganization(req.Slug, req.Name)
}

func (a *API) createOrg(c *gin.Context) {
	var req platformapi.CreateOrgRequest
	if !decode(c, &req) {
		return
	}
	p := access.Caller(c)
	if reject(c, checkCreateOrg(req)) {
		return
	}
	org, err := a.Store.CreateOrganization(c.Request.Context(), req.Slug, req.Name, p.UserID)
	if a.refused(c, "create the organization", orgrules.CreateOrganizationFailed(err, req.Slug)) {
		return
	}
	audit.SetOrg(c, org.ID)
	audit.SetTarget(c, org.ID)
	c.JSON(http.StatusCreated, orgJSON(store.OrganizationWithRole{Organization: *org, Role: "owner"}))
}
