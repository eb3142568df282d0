package rbac

import "testing"

// TestMatrix lists every role x permission explicitly, so a change to the
// policy has to change this table too.
func TestMatrix(t *testing.T) {
	const y, n = true, false
	want := map[Permission]map[Role]bool{
		//                 owner      admin      member     viewer
		CloneRead:      {Owner: y, Admin: y, Member: y, Viewer: y},
		CloneCreate:    {Owner: y, Admin: y, Member: y, Viewer: n},
		CloneUpdate:    {Owner: y, Admin: y, Member: y, Viewer: n},
		CloneDelete:    {Owner: y, Admin: y, Member: y, Viewer: n},
		SnapshotRead:   {Owner: y, Admin: y, Member: y, Viewer: y},
		CloneConnect:   {Owner: y, Admin: y, Member: y, Viewer: n},
		SnapshotCreate: {Owner: y, Admin: y, Member: y, Viewer: n},
		SnapshotUpdate: {Owner: y, Admin: y, Member: n, Viewer: n},
		SnapshotDelete: {Owner: y, Admin: y, Member: n, Viewer: n},
		AgentManage:    {Owner: y, Admin: y, Member: n, Viewer: n},
		AgentRead:      {Owner: y, Admin: y, Member: y, Viewer: y},
		AgentRefresh:   {Owner: y, Admin: y, Member: n, Viewer: n},
		MemberManage:   {Owner: y, Admin: y, Member: n, Viewer: n},
		MemberRead:     {Owner: y, Admin: y, Member: y, Viewer: y},
		TokenManage:    {Owner: y, Admin: y, Member: y, Viewer: n},
		BillingManage:  {Owner: y, Admin: n, Member: n, Viewer: n},
		BillingRead:    {Owner: y, Admin: y, Member: n, Viewer: n},
		UsageRead:      {Owner: y, Admin: y, Member: n, Viewer: n},
		AuditRead:      {Owner: y, Admin: y, Member: n, Viewer: n},
		OrgManage:      {Owner: y, Admin: n, Member: n, Viewer: n},
		// Everyone reads their own inbox and sets their own preferences;
		// admins set the organization's and manage its channels.
		NotificationRead:   {Owner: y, Admin: y, Member: y, Viewer: y},
		NotificationManage: {Owner: y, Admin: y, Member: n, Viewer: n},
	}
	if len(want) != len(Permissions) {
		t.Fatalf("matrix covers %d permissions, rbac has %d", len(want), len(Permissions))
	}
	for _, p := range Permissions {
		row, ok := want[p]
		if !ok {
			t.Fatalf("permission %s missing from the matrix", p)
		}
		if len(row) != len(Roles) {
			t.Fatalf("permission %s: matrix row has %d roles, want %d", p, len(row), len(Roles))
		}
		for _, r := range Roles {
			if got := Can(r, p); got != row[r] {
				t.Errorf("Can(%s, %s) = %v, want %v", r, p, got, row[r])
			}
		}
	}
	for _, p := range Permissions {
		if Can("", p) || Can("superuser", p) {
			t.Errorf("unknown role granted %s", p)
		}
	}
	if Can(Owner, "clone:fly") {
		t.Error("owner granted an unknown permission")
	}
}

func TestParseRole(t *testing.T) {
	if r, err := ParseRole(" Admin "); err != nil || r != Admin {
		t.Fatalf("ParseRole(Admin) = %q, %v", r, err)
	}
	if _, err := ParseRole("root"); err == nil {
		t.Fatal("ParseRole(root) accepted")
	}
}

func TestAtLeast(t *testing.T) {
	if !AtLeast(Owner, Admin) || AtLeast(Viewer, Member) || !AtLeast(Member, Member) {
		t.Fatal("role ranking wrong")
	}
}
