// Package rbac maps organization roles to named permissions. It is the one
// place that decides what a role may do; handlers ask rbac.Can.
package rbac

import (
	"fmt"
	"slices"
	"strings"
)

// Role is a member's role in an organization.
type Role string

// The roles, strongest first.
const (
	Owner  Role = "owner"
	Admin  Role = "admin"
	Member Role = "member"
	Viewer Role = "viewer"
)

// Roles lists every role, strongest first.
var Roles = []Role{Owner, Admin, Member, Viewer}

// Permission names one kind of action inside an organization.
type Permission string

// The permissions.
const (
	CloneRead    Permission = "clone:read"
	CloneCreate  Permission = "clone:create"
	CloneUpdate  Permission = "clone:update" // reset, protect/unprotect
	CloneDelete  Permission = "clone:delete"
	SnapshotRead Permission = "snapshot:read"
	// CloneConnect opens a TCP stream to a clone's postgres through the
	// agent's tunnel (`thinlab connect`, `thinlab port-forward`).
	CloneConnect   Permission = "clone:connect"
	SnapshotCreate Permission = "snapshot:create"
	SnapshotUpdate Permission = "snapshot:update" // protect/unprotect, deleteAt
	SnapshotDelete Permission = "snapshot:delete"
	// AgentRefresh starts a full refresh of an agent's data (retrieval).
	AgentRefresh  Permission = "agent:refresh"
	AgentManage   Permission = "agent:manage"
	AgentRead     Permission = "agent:read"
	MemberManage  Permission = "member:manage"
	MemberRead    Permission = "member:read"
	TokenManage   Permission = "token:manage"
	BillingManage Permission = "billing:manage"
	// BillingRead sees the plan, limits, projected invoice and invoices.
	BillingRead Permission = "billing:read"
	// UsageRead sees usage reports (per agent, user and clone) and savings.
	UsageRead Permission = "usage:read"
	AuditRead Permission = "audit:read"
	OrgManage Permission = "org:manage"
	// NotificationRead is one's own inbox and preferences.
	NotificationRead Permission = "notification:read"
	// NotificationManage is the organization's notification defaults,
	// Slack and webhook channels, and dead letters.
	NotificationManage Permission = "notification:manage"
)

// Permissions lists every permission.
var Permissions = []Permission{
	CloneRead, CloneCreate, CloneUpdate, CloneDelete, CloneConnect,
	SnapshotRead, SnapshotCreate, SnapshotUpdate, SnapshotDelete,
	AgentManage, AgentRead, AgentRefresh, MemberManage, MemberRead,
	TokenManage, BillingManage, BillingRead, UsageRead, AuditRead, OrgManage,
	NotificationRead, NotificationManage,
}

// grants is the whole policy: what each role may do.
var grants = map[Role][]Permission{
	Owner: Permissions,
	Admin: {
		CloneRead, CloneCreate, CloneUpdate, CloneDelete, CloneConnect,
		SnapshotRead, SnapshotCreate, SnapshotUpdate, SnapshotDelete,
		AgentManage, AgentRead, AgentRefresh, MemberManage, MemberRead,
		TokenManage, AuditRead, BillingRead, UsageRead, NotificationRead, NotificationManage,
	},
	// Members work with clones (their own and others': clones are
	// shared within the organization) and take snapshots; deleting or
	// protecting snapshots and refreshing data are for admins.
	Member: {
		CloneRead, CloneCreate, CloneUpdate, CloneDelete, CloneConnect,
		SnapshotRead, SnapshotCreate,
		AgentRead, MemberRead, TokenManage, NotificationRead,
	},
	// Viewers see clones and snapshots (connection strings hold no
	// passwords) but change nothing.
	Viewer: {CloneRead, SnapshotRead, AgentRead, MemberRead, NotificationRead},
}

var lookup = func() map[Role]map[Permission]bool {
	m := make(map[Role]map[Permission]bool, len(grants))
	for role, perms := range grants {
		m[role] = make(map[Permission]bool, len(perms))
		for _, p := range perms {
			m[role][p] = true
		}
	}
	return m
}()

// Can reports whether role grants perm. Unknown roles grant nothing.
func Can(role Role, perm Permission) bool {
	return lookup[role][perm]
}

// Grants returns the permissions of role, in the order of Permissions.
func Grants(role Role) []Permission {
	var out []Permission
	for _, p := range Permissions {
		if Can(role, p) {
			out = append(out, p)
		}
	}
	return out
}

// ParseRole validates a role name from user input.
func ParseRole(s string) (Role, error) {
	r := Role(strings.ToLower(strings.TrimSpace(s)))
	if slices.Contains(Roles, r) {
		return r, nil
	}
	return "", fmt.Errorf("unknown role %q: use owner, admin, member or viewer", s)
}

// AtLeast reports whether role is as strong as other (owner > admin >
// member > viewer); used so nobody grants a role stronger than their own.
func AtLeast(role, other Role) bool {
	return rank(role) >= rank(other)
}

func rank(r Role) int {
	for i, known := range Roles {
		if r == known {
			return len(Roles) - i
		}
	}
	return 0
}
