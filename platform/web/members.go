package web

import (
	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/ui"
)

// members lists the organization's members.
func (w *Web) members(c *gin.Context) {
	w.renderMembers(c, w.page(c, "Members"))
}

func (w *Web) renderMembers(c *gin.Context, p ui.Page) {
	p.Title = "Members"
	members, err := w.store.ListMembers(c.Request.Context(), access.OrgID(c))
	if err != nil {
		w.internal(c, "list members", err)
		return
	}
	role := access.Role(c)
	v := ui.Members{CanManage: rbac.Can(role, rbac.MemberManage)}
	me := access.Caller(c).UserID
	for _, m := range members {
		row := ui.Member{
			UserID: m.UserID, Email: m.Email, Name: m.Name, Role: string(m.Role), Since: m.CreatedAt,
			IsSelf: m.UserID == me,
			// The API's rule: only someone at least as strong as the
			// member may change them, and only to roles up to their own.
			CanEdit: v.CanManage && rbac.AtLeast(role, m.Role),
		}
		for _, r := range rbac.Roles {
			if rbac.AtLeast(role, r) {
				row.Assignee = append(row.Assignee, string(r))
			}
		}
		v.Members = append(v.Members, row)
	}
	w.render(c, p.Status, ui.MembersPage(p, v))
}
