package web

import (
	"context"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/access"
	"github.com/thinlab/thinlab/sdk/agentapi"
	"github.com/thinlab/thinlab/sdk/labels"
	"github.com/thinlab/thinlab/ui"
)

// branchesPage draws the route's agent's branch tree: its branches (GET
// /branches), each one's chain of snapshots (GET /branch/{name}/log) with
// their messages, authors and clones.
func (w *Web) branchesPage(c *gin.Context) {
	org, ag := access.Org(c), access.Agent(c)
	cl, err := w.agentClient(ag)
	var branches []agentapi.BranchView
	if err == nil {
		ctx, cancel := context.WithTimeout(c.Request.Context(), agentCallTimeout)
		branches, err = cl.Branches(ctx)
		cancel()
	}
	if err != nil {
		status, msg := agentFailure(ag, err)
		w.errorPage(c, status, msg)
		return
	}
	nodes := make(map[string]*ui.BranchNode, len(branches))
	for _, b := range branches {
		n := &ui.BranchNode{Name: b.Name, Head: b.SnapshotID, Protected: b.Protected, Labels: labels.String(b.Labels)}
		ctx, cancel := context.WithTimeout(c.Request.Context(), agentCallTimeout)
		log, err := cl.BranchLog(ctx, b.Name)
		cancel()
		if err != nil {
			_, n.Error = agentFailure(ag, err)
		}
		for _, s := range log {
			row := ui.CommitRow{ID: s.ID, DataStateAt: s.DataStateAt, Message: dash(s.Message), Author: s.Author}
			for _, id := range s.Clones {
				row.Clones = append(row.Clones, ui.CloneLink{ID: id, Href: clonePath(org.Slug, ag.ID, id)})
			}
			n.Commits = append(n.Commits, row)
		}
		nodes[b.Name] = n
	}
	p := w.page(c, "Branches")
	p.Title = "Branches of " + ag.Name
	var snaps []string
	for _, b := range branches {
		for _, cm := range nodes[b.Name].Commits {
			if !slices.Contains(snaps, cm.ID) {
				snaps = append(snaps, cm.ID)
			}
		}
	}
	w.render(c, p.Status, ui.BranchesPage(p, ui.Branches{
		AgentID: ag.ID, AgentName: ag.Name, Roots: branchTree(branches, nodes), ClonesHref: "/o/" + org.Slug + "/clones",
		DiffHref: "/o/" + org.Slug + "/agents/" + ag.ID + "/snapshots/diff", Snapshots: snaps,
	}))
}

// branchTree nests each branch under its parent branch (in the agent's
// order); a branch whose parent is unknown is a root.
func branchTree(branches []agentapi.BranchView, nodes map[string]*ui.BranchNode) []ui.BranchNode {
	children := map[string][]string{}
	var roots []string
	for _, b := range branches {
		if _, ok := nodes[b.Parent]; ok && b.Parent != b.Name {
			children[b.Parent] = append(children[b.Parent], b.Name)
		} else {
			roots = append(roots, b.Name)
		}
	}
	var build func(name string, seen []string) ui.BranchNode
	build = func(name string, seen []string) ui.BranchNode {
		n := *nodes[name]
		for _, ch := range children[name] {
			if !slices.Contains(seen, ch) { // a cycle in bad state must not loop
				n.Children = append(n.Children, build(ch, append(seen, ch)))
			}
		}
		return n
	}
	out := make([]ui.BranchNode, 0, len(roots))
	for _, r := range roots {
		out = append(out, build(r, []string{r}))
	}
	return out
}

// dash is DLE's "-" for an unset message, shown as nothing.
func dash(s string) string {
	if s == "-" {
		return ""
	}
	return s
}

// snapshotDiffPage shows what changed between two snapshots of the
// route's agent (GET /snapshots/diff?from=&to=&db=).
func (w *Web) snapshotDiffPage(c *gin.Context) {
	ag := access.Agent(c)
	from, to := strings.TrimSpace(c.Query("from")), strings.TrimSpace(c.Query("to"))
	if from == "" || to == "" {
		w.errorPage(c, http.StatusBadRequest, "from and to: choose the two snapshots to compare")
		return
	}
	cl, err := w.agentClient(ag)
	var d *agentapi.Diff
	if err == nil {
		ctx, cancel := context.WithTimeout(c.Request.Context(), agentCallTimeout)
		d, err = cl.DiffSnapshots(ctx, from, to, c.Query("db"))
		cancel()
	}
	if err != nil {
		status, msg := agentFailure(ag, err)
		w.errorPage(c, status, msg)
		return
	}
	v := diffView(d)
	v.AgentName, v.To = ag.Name, d.To
	p := w.page(c, "Branches")
	p.Title = "Changes between two snapshots"
	w.render(c, p.Status, ui.CloneDiffPage(p, v))
}

// diffView is the agent's diff as the page shows it.
func diffView(d *agentapi.Diff) ui.CloneDiff {
	v := ui.CloneDiff{From: d.From, Database: d.Database, DDL: d.DDL}
	for _, t := range d.Tables {
		v.Tables = append(v.Tables, ui.TableChange{
			Name: t.Schema + "." + t.Table, Change: t.Change, SchemaChanged: t.SchemaChanged,
			SizeFrom: ui.FormatBytes(uint64(max(t.SizeFrom, 0))), SizeTo: ui.FormatBytes(uint64(max(t.SizeTo, 0))), RowsFrom: rowCount(t.RowsFrom), RowsTo: rowCount(t.RowsTo),
		})
	}
	return v
}

// cloneDiffPage shows what the route's clone changed since its snapshot
// (GET /clone/{id}/diff; ?db= picks another database of the clone).
func (w *Web) cloneDiffPage(c *gin.Context) {
	org, ag, id := access.Org(c), access.Agent(c), c.Param("clone")
	cl, err := w.agentClient(ag)
	var d *agentapi.Diff
	if err == nil {
		ctx, cancel := context.WithTimeout(c.Request.Context(), agentCallTimeout)
		d, err = cl.DiffClone(ctx, id, c.Query("db"))
		cancel()
	}
	if err != nil {
		status, msg := agentFailure(ag, err)
		if status == http.StatusNotFound {
			msg = "clone not found"
		}
		w.errorPage(c, status, msg)
		return
	}
	v := diffView(d)
	v.AgentName, v.CloneID, v.CloneHref = ag.Name, id, clonePath(org.Slug, ag.ID, id)
	p := w.page(c, "Clone")
	p.Title = "Changes in clone " + id
	w.render(c, p.Status, ui.CloneDiffPage(p, v))
}

// rowCount is an exact count, or "?" where the agent did not count.
func rowCount(n *int64) string {
	if n == nil {
		return "?"
	}
	return strconv.FormatInt(*n, 10)
}
