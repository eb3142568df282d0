package api_test

import (
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/sdk/agentapi"
)

// TestLabels: key=value labels on clones, snapshots and branches, set on
// create or later, shown in the views and used as list filters; a PATCH
// with only labels leaves protection alone, while DLE's PATCH (no labels)
// keeps its meaning; bad labels are refused naming the field, and
// nothing is created or changed; labels survive a restart of the clone
// manager.
func TestLabels(t *testing.T) {
	e := newEnv(t, 4, snapA)
	ctx, c := e.ctx, e.client

	r := e.createReq("labeled", "")
	r.Labels = map[string]string{"team": "data", "ticket": "DB-42"}
	r.Protected = true
	k := e.createOK(r)
	if !maps.Equal(k.Labels, r.Labels) {
		t.Fatalf("created clone's labels %v, want %v", k.Labels, r.Labels)
	}
	e.createOK(e.createReq("plain", ""))

	// Bad labels: 400 naming the field, no clone.
	bad := e.createReq("badlabels", "")
	bad.Labels = map[string]string{"bad key": "x"}
	_, err := c.CreateClone(ctx, bad)
	e.wantError(err, http.StatusBadRequest, agentapi.CodeBadRequest, "", "labels")
	if _, err := c.Clone(ctx, "badlabels"); !agentapi.IsNotFound(err) {
		t.Fatalf("a clone with bad labels was made: %v", err)
	}

	// Filters.
	for q, want := range map[string]string{"team=data": "labeled", "team": "labeled", "team=web": "", "": "labeled,plain"} {
		var terms []string
		if q != "" {
			terms = []string{q}
		}
		got, err := c.ClonesLabeled(ctx, terms...)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, x := range got {
			ids = append(ids, x.ID)
		}
		if strings.Join(sortedCopy(ids), ",") != want {
			t.Errorf("?label=%s: %v, want %s", q, ids, want)
		}
	}
	if code, body := e.raw(http.MethodGet, "/clones?label=bad%20key", token, ""); code != http.StatusBadRequest || !strings.Contains(string(body), "label") {
		t.Errorf("a bad filter: %d %s", code, body)
	}

	// Labels only: protection stays.
	k2, err := c.SetCloneLabels(ctx, "labeled", map[string]string{"team": "web"})
	if err != nil || !k2.Protected || !maps.Equal(k2.Labels, map[string]string{"team": "web"}) {
		t.Fatalf("labels-only PATCH: %+v %v, want protection kept and the new labels", k2, err)
	}
	// Invalid labels with protection: refused, nothing changed.
	code, body := e.raw(http.MethodPatch, "/clone/labeled", token, `{"protected":false,"labels":{"x":"a\u0000b"}}`)
	if code != http.StatusBadRequest {
		t.Fatalf("PATCH with bad labels: %d %s", code, body)
	}
	if got, _ := c.Clone(ctx, "labeled"); !got.Protected || got.Labels["team"] != "web" {
		t.Fatalf("a refused PATCH changed the clone: %+v", got)
	}
	// DLE's PATCH: protection only, labels stay.
	k3, err := c.UpdateClone(ctx, "labeled", agentapi.PatchCloneRequest{Protected: false})
	if err != nil || k3.Protected || k3.Labels["team"] != "web" {
		t.Fatalf("DLE PATCH: %+v %v, want unprotected with labels kept", k3, err)
	}

	// Snapshots.
	snapID := e.snaps[0].ID
	s, err := c.SetSnapshotLabels(ctx, snapID, map[string]string{"source": "prod"})
	if err != nil || s.Labels["source"] != "prod" {
		t.Fatalf("snapshot labels: %+v %v", s, err)
	}
	if got, err := c.SnapshotsLabeled(ctx, "source=prod"); err != nil || len(got) != 1 || got[0].ID != snapID {
		t.Fatalf("snapshots ?label=source=prod: %+v %v", got, err)
	}
	if got, err := c.SnapshotsLabeled(ctx, "source=staging"); err != nil || len(got) != 0 {
		t.Fatalf("snapshots ?label=source=staging: %+v %v", got, err)
	}
	if code, body := e.raw(http.MethodPatch, "/snapshot/"+snapID, token, `{"labels":{"":"x"}}`); code != http.StatusBadRequest || !strings.Contains(string(body), "labels") {
		t.Fatalf("snapshot bad labels: %d %s", code, body)
	}

	// Branches.
	if _, err := c.CreateBranch(ctx, agentapi.CreateBranchRequest{BranchName: "exp", SnapshotID: snapID}); err != nil {
		t.Fatal(err)
	}
	if v, err := c.SetBranchLabels(ctx, "exp", map[string]string{"owner": "ada"}); err != nil || v.Labels["owner"] != "ada" {
		t.Fatalf("branch labels: %+v %v", v, err)
	}
	if got, err := c.BranchesLabeled(ctx, "owner=ada"); err != nil || len(got) != 1 || got[0].Name != "exp" {
		t.Fatalf("branches ?label=owner=ada: %+v %v", got, err)
	}
	if got, err := c.BranchesLabeled(ctx); err != nil || len(got) != 2 {
		t.Fatalf("branches without a filter: %+v %v", got, err)
	}

	// A restarted manager reads the labels back.
	if err := e.mgr.Close(); err != nil {
		t.Fatal(err)
	}
	m2, err := clone.NewManager(ctx, clone.Options{Config: e.cfg, Pools: []storage.Pool{e.pool}, Logger: e.log.Logger(), CheckInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = m2.Close() }()
	if got, err := m2.Get("labeled"); err != nil || got.Labels["team"] != "web" {
		t.Fatalf("after a restart: %+v %v", got.Labels, err)
	}
}

func sortedCopy(s []string) []string {
	return slices.Sorted(slices.Values(s))
}
