package api

import (
	"errors"
	"net/http"
	"net/url"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/notify"
	"github.com/thinlab/thinlab/platform/orgrules"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/platformapi"
)

// InvitationURL is the acceptance link of an invitation.
func InvitationURL(baseURL, secret string) string {
	return strings.TrimRight(baseURL, "/") + "/invitations/accept?secret=" + url.QueryEscape(secret)
}

func invitationJSON(inv store.Invitation) platformapi.Invitation {
	return platformapi.Invitation{ID: inv.ID, Email: inv.Email, Role: string(inv.Role), CreatedAt: inv.CreatedAt.UTC(), ExpiresAt: inv.ExpiresAt.UTC()}
}

func (a *API) listInvitations(c *gin.Context) {
	invs, err := a.Store.ListInvitations(c.Request.Context(), access.OrgID(c))
	if err != nil {
		a.internal(c, "list invitations", err)
		return
	}
	out := make([]platformapi.Invitation, 0, len(invs))
	for _, inv := range invs {
		out = append(out, invitationJSON(inv))
	}
	c.JSON(http.StatusOK, platformapi.List[platformapi.Invitation]{Items: out})
}

func (a *API) createInvitation(c *gin.Context) {
	var req platformapi.CreateInvitationRequest
	if !decode(c, &req) {
		return
	}
	audit.SetTarget(c, audit.MaskEmail(req.Email))
	addr, err := orgrules.InvitationEmail(req.Email)
	if reject(c, err) {
		return
	}
	role, err := orgrules.GrantRole(access.Role(c), req.Role)
	if reject(c, err) {
		return
	}
	inv, secret, _, err := a.Notifier.Invite(c.Request.Context(), a.Store, notify.Invitation{
		Org: access.Org(c), Email: addr, Role: role, InvitedBy: access.Caller(c).UserID, Inviter: access.Caller(c).Email,
		AcceptURL: func(secret string) string { return InvitationURL(a.BaseURL, secret) },
	})
	if err != nil {
		a.internal(c, "create the invitation", err)
		return
	}
	audit.SetTarget(c, inv.ID+" "+audit.MaskEmail(inv.Email))
	out := invitationJSON(*inv)
	out.Token = secret
	c.JSON(http.StatusCreated, out)
}

func (a *API) deleteInvitation(c *gin.Context) {
	id := c.Param("invitation")
	audit.SetTarget(c, id)
	err := a.Store.DeleteInvitation(c.Request.Context(), access.OrgID(c), id)
	if errors.Is(err, store.ErrNotFound) {
		notFound(c, "invitation")
		return
	}
	if err != nil {
		a.internal(c, "delete the invitation", err)
		return
	}
	c.Status(http.StatusNoContent)
}

func (a *API) acceptInvitation(c *gin.Context) {
	ctx := c.Request.Context()
	user, err := a.Store.UserByID(ctx, access.Caller(c).UserID)
	if err != nil {
		a.internal(c, "load your account", err)
		return
	}
	inv, err := a.Store.AcceptInvitation(ctx, c.Param("token"), user)
	if inv != nil && inv.ID != "" {
		// The secret itself is never written to the log; the ID is.
		audit.SetOrg(c, inv.OrgID)
		audit.SetTarget(c, inv.ID)
	}
	switch {
	case errors.Is(err, store.ErrNotFound):
		notFound(c, "invitation")
		return
	case errors.Is(err, store.ErrInvitationEmail), errors.Is(err, store.ErrEmailUnverified):
		forbidden(c, err.Error())
		return
	case errors.Is(err, store.ErrInvitationUsed), errors.Is(err, store.ErrInvitationExpired), errors.Is(err, store.ErrConflict):
		access.Error(c, http.StatusConflict, platformapi.CodeConflict, err.Error(), "")
		return
	case err != nil:
		a.internal(c, "accept the invitation", err)
		return
	}
	org, err := a.Store.OrganizationByRef(ctx, inv.OrgID)
	if err != nil {
		a.internal(c, "load the organization", err)
		return
	}
	c.JSON(http.StatusOK, platformapi.AcceptedInvitation{
		Org:  orgJSON(store.OrganizationWithRole{Organization: *org, Role: inv.Role}),
		Role: string(inv.Role),
	})
}
