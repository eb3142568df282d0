package api

import (
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/orgrules"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/platformapi"
)

func memberJSON(m store.Member) platformapi.Member {
	return platformapi.Member{UserID: m.UserID, Email: m.Email, Name: m.Name, Role: string(m.Role), CreatedAt: m.CreatedAt.UTC()}
}

func (a *API) listMembers(c *gin.Context) {
	members, err := a.Store.ListMembers(c.Request.Context(), access.OrgID(c))
	if err != nil {
		a.internal(c, "list members", err)
		return
	}
	out := make([]platformapi.Member, 0, len(members))
	for _, m := range members {
		out = append(out, memberJSON(m))
	}
	c.JSON(http.StatusOK, platformapi.List[platformapi.Member]{Items: out})
}

// addMemberGone refuses the old add-by-user-id call without reading the
// body or looking anyone up.
func (a *API) addMemberGone(c *gin.Context) {
	access.Error(c, http.StatusGone, platformapi.CodeGone,
		"adding members by user id was removed: invite people by email (POST /api/v1/orgs/"+c.Param("org")+"/invitations); they join when they accept", "")
}

// targetMember is the :user the chain loaded, if the caller may change
// that member: only owners change owners.
func (a *API) targetMember(c *gin.Context) (*store.Member, bool) {
	m := access.Member(c)
	if reject(c, orgrules.MayChangeMember(access.Role(c), m.Role)) {
		return nil, false
	}
	return m, true
}

func (a *API) updateMember(c *gin.Context) {
	m, ok := a.targetMember(c)
	if !ok {
		return
	}
	var req platformapi.UpdateMemberRequest
	if !decode(c, &req) {
		return
	}
	role, err := orgrules.GrantRole(access.Role(c), req.Role)
	if reject(c, err) {
		return
	}
	err = a.Store.SetMemberRole(c.Request.Context(), access.OrgID(c), m.UserID, role)
	if a.refused(c, "change the member", orgrules.MemberChangeFailed(err, "role")) {
		return
	}
	m.Role = role
	c.JSON(http.StatusOK, memberJSON(*m))
}

func (a *API) removeMember(c *gin.Context) {
	m, ok := a.targetMember(c)
	if !ok {
		return
	}
	err := a.Store.RemoveMember(c.Request.Context(), access.OrgID(c), m.UserID)
	if a.refused(c, "change the member", orgrules.MemberChangeFailed(err, "")) {
		return
	}
	c.Status(http.StatusNoContent)
}
