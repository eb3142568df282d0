package api_test

import (
	"encoding/json"
	"net/http"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/thinlab/thinlab/agent/branch"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/sdk/agentapi"
)

// DLE 4's JSON keys, written out: a renamed field breaks DLE's CLI and UI.
var (
	branchViewKeys      = []string{"baseDataset", "dataStateAt", "dataset", "name", "numSnapshots", "parent", "protected", "snapshotID"}
	snapshotDetailsKeys = []string{"branch", "child", "clones", "dataStateAt", "dataset", "id", "message", "parent", "protected", "root"}
	compactRE           = regexp.MustCompile(`^[0-9]{14}$`)
)

// hasKeys checks that m has every DLE key (Thinlab may add more).
func hasKeys(t *testing.T, what string, m map[string]any, keys []string) {
	t.Helper()
	for _, k := range keys {
		if _, ok := m[k]; !ok {
			t.Fatalf("%s has no %q: %v", what, k, m)
		}
	}
}

// TestBranches is the branch workflow of DLE 4 against a real agent on
// real btrfs, reflink (XFS) and ZFS (zfs-fuse) pools (LVM: the storage
// conformance suite in the VM): create a branch, a clone on it, write,
// commit, a second clone from the commit sees the writes, the log shows
// the chain, and the delete rules hold; bad input changes nothing.
func TestBranches(t *testing.T) {
	for _, mode := range []string{storage.ModeBtrfs, storage.ModeReflink, storage.ModeZFS} {
		t.Run(mode, func(t *testing.T) { testBranches(t, mode) })
	}
}

func testBranches(t *testing.T, mode string) {
	e := newEnvOn(t, mode, 6, snapA, snapB)
	ctx, c := e.ctx, e.client
	snapAID, snapBID := e.snaps[0].ID, e.snaps[1].ID

	// GET /branches: main at the newest refresh, DLE's shape.
	code, body := e.raw(http.MethodGet, "/branches", token, "")
	var raw []map[string]any
	if code != http.StatusOK || json.Unmarshal(body, &raw) != nil || len(raw) != 1 {
		t.Fatalf("GET /branches: %d %s", code, body)
	}
	hasKeys(t, "BranchView", raw[0], branchViewKeys)
	if raw[0]["name"] != "main" || raw[0]["snapshotID"] != snapBID || raw[0]["parent"] != "-" || raw[0]["numSnapshots"] != float64(2) || !compactRE.MatchString(raw[0]["dataStateAt"].(string)) {
		t.Fatalf("main branch: %s", body)
	}

	// POST /branch: 200 {"name"}.
	code, body = e.raw(http.MethodPost, "/branch", token, `{"branchName":"feature","baseBranch":"main"}`)
	if code != http.StatusOK || string(body) != `{"name":"feature"}` {
		t.Fatalf("POST /branch: %d %s", code, body)
	}
	before, err := c.Branches(ctx)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("BadInput", func(t *testing.T) {
		e.t = t
		for _, tc := range []struct {
			body, detail, msg string
		}{
			{`{"branchName":"","baseBranch":"main"}`, "branchName", "must not be empty"},
			{`{"branchName":"main","baseBranch":"main"}`, "branchName", "different names"},
			{`{"branchName":"../etc","baseBranch":"main"}`, "branchName", "Spaces and slashes are not allowed"},
			{`{"branchName":"a/b","baseBranch":"main"}`, "branchName", "Spaces and slashes are not allowed"},
			{`{"branchName":"..","baseBranch":"main"}`, "branchName", "Spaces and slashes are not allowed"},
			{`{"branchName":"with space","baseBranch":"main"}`, "branchName", "Spaces and slashes are not allowed"},
			{`{"branchName":"nul\u0000x","baseBranch":"main"}`, "branchName", "Spaces and slashes are not allowed"},
			{`{"branchName":"` + strings.Repeat("x", 5000) + `","baseBranch":"main"}`, "branchName", "longer than"},
			{`{"branchName":"x","baseBranch":"nope"}`, "baseBranch", "failed to found dataset of the branch: nope"},
			{`{"branchName":"feature","baseBranch":"main"}`, "branchName", "branch 'feature' already exists"},
			{`{"branchName":"x"}`, "baseBranch", "either base branch name or base snapshot ID must be specified"},
			{`{"branchName":"x","snapshotID":"../../x"}`, "snapshotID", "invalid"},
			{`{"branchName":"x","snapshotID":"` + e.pool.Name() + `@snapshot_20000101000000"}`, "snapshotID", "not found"},
		} {
			code, body := e.raw(http.MethodPost, "/branch", token, tc.body)
			m := decodeMap(t, body)
			if code != http.StatusBadRequest || m["code"] != agentapi.CodeBadRequest || m["detail"] != tc.detail || !strings.Contains(m["message"].(string), tc.msg) {
				t.Fatalf("POST /branch %.80s: %d %s, want 400 on %s saying %q", tc.body, code, body, tc.detail, tc.msg)
			}
		}
		for _, path := range []string{"/branch/..%2F..%2Fetc/log", "/branch/a%20b/log", "/branch/nope/log"} {
			if code, body := e.raw(http.MethodGet, path, token, ""); code != http.StatusBadRequest {
				t.Fatalf("GET %s: %d %s, want 400", path, code, body)
			}
		}
		if code, body := e.raw(http.MethodDelete, "/branch/nope", token, ""); code != http.StatusBadRequest || !strings.Contains(string(body), "failed to found dataset of the branch: nope") {
			t.Fatalf("DELETE /branch/nope: %d %s", code, body)
		}
		_, err := c.CreateClone(ctx, agentapi.CreateCloneRequest{ID: "x", Branch: "nope", DB: &agentapi.DatabaseRequest{Username: "alice", Password: goodPassword}})
		e.wantError(err, http.StatusBadRequest, agentapi.CodeBadRequest, "branch", "nope")
		_, err = c.CreateClone(ctx, agentapi.CreateCloneRequest{ID: "x", Branch: "../main", DB: &agentapi.DatabaseRequest{Username: "alice", Password: goodPassword}})
		e.wantError(err, http.StatusBadRequest, agentapi.CodeBadRequest, "branch", "slashes")
		_, err = c.Commit(ctx, "no-such-clone", "m")
		e.wantError(err, http.StatusBadRequest, agentapi.CodeBadRequest, "cloneID", "clone not found")
		_, err = c.Commit(ctx, "", "m")
		e.wantError(err, http.StatusBadRequest, agentapi.CodeBadRequest, "cloneID", "must not be empty")
		after, err := c.Branches(ctx)
		if err != nil || !reflect.DeepEqual(after, before) {
			t.Fatalf("branches changed by bad requests: %+v, was %+v (%v)", after, before, err)
		}
		if list, _ := c.Clones(ctx); len(list) != 0 {
			t.Fatalf("bad requests made clones: %+v", list)
		}
		// Letters of any script are names (DLE's rule).
		if _, err := c.CreateBranch(ctx, agentapi.CreateBranchRequest{BranchName: "ветка_1", BaseBranch: "main"}); err != nil {
			t.Fatal(err)
		}
		if err := c.DeleteBranch(ctx, "ветка_1"); err != nil {
			t.Fatal(err)
		}
	})
	e.t = t

	// A clone on the branch, a write, a commit.
	dev := e.createOK(agentapi.CreateCloneRequest{ID: "dev", Branch: "feature", DB: &agentapi.DatabaseRequest{Username: "alice", Password: goodPassword}})
	if dev.Branch != "feature" || dev.Snapshot == nil || dev.Snapshot.ID != snapBID {
		t.Fatalf("clone on feature: branch %q snapshot %+v", dev.Branch, dev.Snapshot)
	}
	query(ctx, t, dev, goodPassword, "WITH i AS (INSERT INTO t VALUES ('three') RETURNING v) SELECT v FROM i")
	code, body = e.raw(http.MethodPost, "/branch/snapshot", token, `{"cloneID":"dev","message":"add three"}`)
	var cr map[string]any
	if code != http.StatusOK || json.Unmarshal(body, &cr) != nil || len(cr) != 1 {
		t.Fatalf("POST /branch/snapshot: %d %s", code, body)
	}
	commitID, _ := cr["snapshotID"].(string)
	if _, _, err := storage.ParseSnapshotID(commitID); err != nil {
		t.Fatalf("commit snapshotID %q: %v", commitID, err)
	}
	// The committing clone keeps working.
	if v := query(ctx, t, dev, goodPassword, "SELECT string_agg(v, ',' ORDER BY v) FROM t"); v != "three,two" {
		t.Fatalf("dev after its commit sees %q", v)
	}

	// DLE's UI sends the branch with a snapshot it listed for it: a new
	// branch's snapshot is its fork point, and the clone is on the branch.
	ui, err := c.CreateClone(ctx, agentapi.CreateCloneRequest{ID: "ui", Branch: "feature", Snapshot: &agentapi.SnapshotCloneField{ID: snapBID}, DB: &agentapi.DatabaseRequest{Username: "ui", Password: goodPassword}})
	if err != nil || ui.Branch != "feature" {
		t.Fatalf("clone with branch and a snapshot of its chain: %+v %v", ui, err)
	}
	if _, err := c.WaitClone(ctx, "ui"); err != nil {
		t.Fatal(err)
	}
	e.destroy("ui")
	// A second clone on the branch starts from the commit.
	dev2 := e.createOK(agentapi.CreateCloneRequest{ID: "dev2", Branch: "feature", DB: &agentapi.DatabaseRequest{Username: "bob", Password: goodPassword}})
	if dev2.Snapshot == nil || dev2.Snapshot.ID != commitID || dev2.Snapshot.Branch != "feature" {
		t.Fatalf("dev2 snapshot %+v, want the commit %s on feature", dev2.Snapshot, commitID)
	}
	if v := query(ctx, t, dev2, goodPassword, "SELECT string_agg(v, ',' ORDER BY v) FROM t"); v != "three,two" {
		t.Fatalf("clone of the commit sees %q, want three,two", v)
	}
	// main is untouched.
	m1 := e.createOK(agentapi.CreateCloneRequest{ID: "m1", DB: &agentapi.DatabaseRequest{Username: "carol", Password: goodPassword}})
	if m1.Branch != "main" || m1.Snapshot.ID != snapBID {
		t.Fatalf("clone on main: %q %+v", m1.Branch, m1.Snapshot)
	}
	if v := query(ctx, t, m1, goodPassword, "SELECT string_agg(v, ',' ORDER BY v) FROM t"); v != "two" {
		t.Fatalf("main sees %q", v)
	}

	// The branch list, log and graph.
	views, err := c.Branches(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var feature agentapi.BranchView
	for _, v := range views {
		if v.Name == "feature" {
			feature = v
		}
	}
	if feature.SnapshotID != commitID || feature.NumSnapshots != 2 || feature.Parent != "main" || feature.BaseDataset != e.pool.Name() {
		t.Fatalf("feature after the commit: %+v", feature)
	}
	code, body = e.raw(http.MethodGet, "/branch/feature/log", token, "")
	var logRaw []map[string]any
	if code != http.StatusOK || json.Unmarshal(body, &logRaw) != nil || len(logRaw) != 3 {
		t.Fatalf("GET /branch/feature/log: %d %s", code, body)
	}
	for _, d := range logRaw {
		hasKeys(t, "SnapshotDetails", d, snapshotDetailsKeys)
		if !compactRE.MatchString(d["dataStateAt"].(string)) {
			t.Fatalf("log dataStateAt %v", d["dataStateAt"])
		}
	}
	log, err := c.BranchLog(ctx, "feature")
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{log[0].ID, log[1].ID, log[2].ID}
	if !reflect.DeepEqual(ids, []string{commitID, snapBID, snapAID}) || log[0].Parent != snapBID || log[2].Parent != "-" || log[0].Message != "add three" || log[0].Author != "alice" || log[1].Message != e.snaps[1].Message {
		t.Fatalf("feature log %+v", log)
	}
	if !reflect.DeepEqual(log[0].Branch, []string{"feature"}) || !reflect.DeepEqual(log[0].Clones, []string{"dev2"}) || !reflect.DeepEqual(log[1].Root, []string{"feature"}) || !slices.Contains(log[1].Child, commitID) {
		t.Fatalf("graph links: head %+v fork point %+v", log[0], log[1])
	}
	d, err := c.BranchSnapshot(ctx, commitID)
	if err != nil || d.ID != commitID || d.Dataset != e.pool.Name()+"/branch/feature" {
		t.Fatalf("GET /branch/snapshot/%s: %+v %v", commitID, d, err)
	}
	if code, body := e.raw(http.MethodGet, "/branch/snapshot/"+e.pool.Name()+"@snapshot_20000101000000", token, ""); code != http.StatusNotFound || decodeMap(t, body)["code"] != agentapi.CodeNotFound {
		t.Fatalf("unknown branch snapshot: %d %s", code, body)
	}
	if code, body := e.raw(http.MethodGet, "/branch/snapshot/not-an-id", token, ""); code != http.StatusBadRequest {
		t.Fatalf("bad branch snapshot id: %d %s", code, body)
	}
	if main, err := c.BranchLog(ctx, "main"); err != nil || len(main) != 2 || main[0].ID != snapBID {
		t.Fatalf("main log %+v %v", main, err)
	}
	// The snapshots a clone of feature may start from: its chain back to
	// the fork point (snapB), not main's older refresh.
	if code, body := e.raw(http.MethodGet, "/snapshots?branch=feature", token, ""); code != http.StatusOK || !strings.Contains(string(body), commitID) || !strings.Contains(string(body), snapBID) || strings.Contains(string(body), snapAID) {
		t.Fatalf("GET /snapshots?branch=feature: %d %s", code, body)
	}

	// A commit on main moves main; POST /snapshot/clone then takes a
	// snapshot that moves no branch.
	mainCommit, err := c.Commit(ctx, "m1", "x")
	if err != nil {
		t.Fatalf("commit on main: %v", err)
	}
	if head, _ := c.BranchLog(ctx, "main"); len(head) != 3 || head[0].ID != mainCommit || head[1].ID != snapBID {
		t.Fatalf("main after a commit: %+v", head)
	}
	sc, err := c.SnapshotClone(ctx, "m1", "just a snapshot")
	if err != nil || sc.Branch != "main" || sc.Message != "just a snapshot" {
		t.Fatalf("POST /snapshot/clone: %+v %v", sc, err)
	}
	if head, _ := c.BranchLog(ctx, "main"); head[0].ID != mainCommit {
		t.Fatalf("POST /snapshot/clone moved main to %s", head[0].ID)
	}

	// State survives a restart of the service.
	if views, err = c.Branches(ctx); err != nil {
		t.Fatal(err)
	}
	again, err := branch.New(branch.Options{StateDir: e.cfg.StateDir, Pools: []storage.Pool{e.pool}, Clones: e.mgr})
	if err != nil {
		t.Fatal(err)
	}
	reloaded, err := again.List(ctx)
	if err != nil || !reflect.DeepEqual(reloaded, views) {
		t.Fatalf("branches after reload %+v (%v), want %+v", reloaded, err, views)
	}

	// Delete rules.
	err = c.DeleteBranch(ctx, "main")
	e.wantError(err, http.StatusBadRequest, agentapi.CodeBadRequest, "name", "cannot delete default branch: main")
	err = c.DeleteBranch(ctx, "feature")
	e.wantError(err, http.StatusBadRequest, agentapi.CodeBadRequest, "name", "clone")
	err = c.DeleteSnapshot(ctx, commitID, false)
	e.wantError(err, http.StatusBadRequest, agentapi.CodeBadRequest, "id", "head of branch feature")
	e.destroy("dev")
	err = c.DeleteBranch(ctx, "feature")
	e.wantError(err, http.StatusBadRequest, agentapi.CodeBadRequest, "name", "dev2")
	e.destroy("dev2")
	// Protection (PATCH, DLE's shape: name and protection only).
	code, body = e.raw(http.MethodPatch, "/branch/feature", token, `{"protected":true,"protectionDurationMinutes":30}`)
	if m := decodeMap(t, body); code != http.StatusOK || m["name"] != "feature" || m["protected"] != true || m["protectedTill"] == nil {
		t.Fatalf("PATCH /branch/feature: %d %s", code, body)
	}
	if views, _ := c.Branches(ctx); !slices.ContainsFunc(views, func(v agentapi.BranchView) bool { return v.Name == "feature" && v.Protected }) {
		t.Fatalf("feature not shown protected: %+v", views)
	}
	err = c.DeleteBranch(ctx, "feature")
	e.wantError(err, http.StatusBadRequest, agentapi.CodeBadRequest, "name", "branch feature is protected")
	for _, tc := range []struct{ path, body, detail string }{
		{"/branch/feature", `{}`, "protected"},
		{"/branch/feature", `{"deleteAt":"2030-01-01T00:00:00Z"}`, "deleteAt"},
		{"/branch/nope", `{"protected":true}`, "name"},
		{"/branch/a%2Fb", `{"protected":true}`, "name"},
	} {
		if code, body := e.raw(http.MethodPatch, tc.path, token, tc.body); code != http.StatusBadRequest || decodeMap(t, body)["detail"] != tc.detail {
			t.Fatalf("PATCH %s %s: %d %s, want 400 on %s", tc.path, tc.body, code, body, tc.detail)
		}
	}
	if code, body := e.raw(http.MethodPatch, "/branch/feature", token, `{"protected":false}`); code != http.StatusOK || decodeMap(t, body)["protected"] != false {
		t.Fatalf("unprotect: %d %s", code, body)
	}
	if err := c.DeleteBranch(ctx, "feature"); err != nil {
		t.Fatalf("delete feature without clones: %v", err)
	}
	if views, _ := c.Branches(ctx); len(views) != 1 || views[0].Name != "main" {
		t.Fatalf("branches after delete: %+v", views)
	}
	if _, err := c.Snapshot(ctx, commitID); err == nil {
		t.Fatalf("the commit of a deleted branch is still there")
	}
	e.destroy("m1")
	if err := c.DeleteSnapshot(ctx, sc.ID, false); err != nil {
		t.Fatalf("delete the clone snapshot: %v", err)
	}
	e.assertNothingLeft()
}
