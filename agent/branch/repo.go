package branch

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/sdk/agentapi"
)

// repo is the branch graph as of one read of the pools and the state.
type repo struct {
	doc    stateDoc
	pools  map[string]storage.Pool
	snaps  map[string]storage.Snapshot
	heads  map[string]string // branch name -> head snapshot ID
	parent map[string]string // snapshot ID -> parent ID ("" for none)
	clones map[string][]string
	now    time.Time
}

func (r *repo) pool(name string) storage.Pool { return r.pools[name] }

func (s *Service) repo(ctx context.Context) (*repo, error) {
	r := &repo{
		doc:    s.snapshotDoc(),
		pools:  map[string]storage.Pool{},
		snaps:  map[string]storage.Snapshot{},
		heads:  map[string]string{},
		parent: map[string]string{},
		clones: map[string][]string{},
		now:    s.now(),
	}
	// Data refreshes of each pool, newest first, chain to the one before.
	var newest *storage.Snapshot
	storageClones := map[string][]string{}
	for _, p := range s.pools {
		r.pools[p.Name()] = p
		list, err := p.Snapshots(ctx)
		if err != nil {
			return nil, fmt.Errorf("list snapshots of pool %s: %w", p.Name(), err)
		}
		prev := ""
		for _, sn := range slices.Backward(list) {
			if sn.Pool == "" {
				sn.Pool = p.Name()
			}
			r.snaps[sn.ID] = sn
			if _, isCommit := r.doc.Commits[sn.ID]; isCommit || sn.OfClone() {
				continue
			}
			r.parent[sn.ID] = prev
			prev = sn.ID
			if newest == nil || sn.DataStateAt.After(newest.DataStateAt) {
				n := sn
				newest = &n
			}
		}
		for _, sn := range list {
			storageClones[sn.ID] = sn.Clones
		}
	}
	for id, c := range r.doc.Commits {
		if _, ok := r.snaps[id]; !ok {
			continue // deleted by hand; ForgetSnapshot drops it
		}
		if _, ok := r.snaps[c.Parent]; ok {
			r.parent[id] = c.Parent
		} else {
			r.parent[id] = ""
		}
	}
	// The clone engine knows which snapshot each clone was made from; a
	// pool may say otherwise (on ZFS a commit makes the clone a clone of
	// the commit), so the pool only adds datasets the engine does not know.
	known := map[string]bool{}
	if s.clones != nil {
		for _, cl := range s.clones.List() {
			known[cl.ID] = true
			r.clones[cl.SnapshotID] = append(r.clones[cl.SnapshotID], cl.ID)
		}
	}
	for id, names := range storageClones {
		for _, name := range names {
			if !known[name] && !slices.Contains(r.clones[id], name) {
				r.clones[id] = append(r.clones[id], name)
			}
		}
	}
	for _, ids := range r.clones {
		slices.Sort(ids)
	}

	// The default branch: its last commit, unless a data refresh came
	// after it.
	if newest != nil {
		r.heads[Default] = newest.ID
	}
	if b := r.doc.Branches[Default]; b != nil {
		if head, ok := r.snaps[b.Head]; ok && (newest == nil || !newest.CreatedAt.After(head.CreatedAt)) {
			r.heads[Default] = b.Head
		}
	}
	for name, b := range r.doc.Branches {
		if name != Default {
			r.heads[name] = b.Head
		}
	}
	return r, nil
}

// ownCommits are the snapshots committed on branch name, newest first.
func (r *repo) ownCommits(name string) []string {
	var out []string
	for id, c := range r.doc.Commits {
		if c.Branch == name {
			out = append(out, id)
		}
	}
	slices.SortFunc(out, func(a, b string) int {
		return r.doc.Commits[b].CreatedAt.Compare(r.doc.Commits[a].CreatedAt)
	})
	return out
}

func (r *repo) dataset(id string) string {
	sn := r.snaps[id]
	if c, ok := r.doc.Commits[id]; ok {
		return sn.Pool + "/branch/" + c.Branch
	}
	return sn.Pool
}

func (r *repo) details(id string) agentapi.SnapshotDetails {
	sn := r.snaps[id]
	d := agentapi.SnapshotDetails{
		ID:          id,
		Parent:      orDash(r.parent[id]),
		DataStateAt: compactTime(sn.DataStateAt),
		Message:     orDash(sn.Message),
		Dataset:     r.dataset(id),
		CreatedAt:   agentapi.NewLocalTime(sn.CreatedAt),
		Pool:        sn.Pool,
	}
	if c, ok := r.doc.Commits[id]; ok {
		d.Author = c.Author
		d.Message = orDash(c.Message)
	}
	for _, other := range sortedKeys(r.snaps) {
		if r.parent[other] == id {
			d.Child = append(d.Child, other)
		}
	}
	for _, name := range sortedKeys(r.heads) {
		if r.heads[name] == id {
			d.Branch = append(d.Branch, name)
		}
	}
	for _, name := range sortedKeys(r.doc.Branches) {
		if name != Default && r.doc.Branches[name].Base == id {
			d.Root = append(d.Root, name)
		}
	}
	if cl := r.clones[id]; len(cl) > 0 {
		d.Clones = slices.Clone(cl)
	}
	return d
}

// chain is the head of a branch and its parents, newest first, bounded by
// the number of snapshots (the graph has no cycles; the bound makes sure).
func (r *repo) chain(head string) []string {
	var out []string
	for id := head; id != "" && len(out) <= len(r.snaps); id = r.parent[id] {
		if _, ok := r.snaps[id]; !ok {
			break
		}
		out = append(out, id)
	}
	return out
}

func (r *repo) view(name string) agentapi.BranchView {
	head := r.heads[name]
	sn := r.snaps[head]
	v := agentapi.BranchView{
		Name:        name,
		BaseDataset: sn.Pool,
		Parent:      "-",
		DataStateAt: compactTime(sn.DataStateAt),
		SnapshotID:  head,
		Dataset:     sn.Pool + "/branch/" + name,
	}
	if b := r.doc.Branches[name]; b.protectedAt(r.now) {
		v.Protected = true
		v.ProtectedTill = agentapi.NewLocalTime(b.ProtectedTill)
	}
	if b := r.doc.Branches[name]; b != nil {
		v.Labels = b.Labels
	}
	base := ""
	if b := r.doc.Branches[name]; b != nil && name != Default {
		base = b.Base
		for _, other := range sortedKeys(r.heads) {
			if other != name && r.heads[other] == base {
				v.Parent = other
				break
			}
		}
	}
	for _, id := range r.chain(head) {
		v.NumSnapshots++
		if id == base {
			break
		}
	}
	return v
}

// List is GET /branches: every branch whose head exists, newest head
// first.
func (s *Service) List(ctx context.Context) ([]agentapi.BranchView, error) {
	r, err := s.repo(ctx)
	if err != nil {
		return nil, err
	}
	out := []agentapi.BranchView{}
	for _, name := range sortedKeys(r.heads) {
		if _, ok := r.snaps[r.heads[name]]; !ok {
			s.log.Warn("branch points at a snapshot that is gone", "branch", name, "snapshot", r.heads[name])
			continue
		}
		out = append(out, r.view(name))
	}
	slices.SortStableFunc(out, func(a, b agentapi.BranchView) int {
		if c := strings.Compare(b.DataStateAt, a.DataStateAt); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out, nil
}

// SnapshotIDs are the snapshots a client may start a clone of branch
// name from (GET /snapshots?branch=name): for the default branch every
// data refresh and its commits; for another branch its chain from the
// head back to its fork point.
func (s *Service) SnapshotIDs(ctx context.Context, name string) (map[string]bool, error) {
	r, err := s.repo(ctx)
	if err != nil {
		return nil, err
	}
	head, ok := r.heads[name]
	if !ok {
		if name == Default {
			return map[string]bool{}, nil
		}
		return nil, invalid("branch", "failed to found dataset of the branch: %s (branch not found; list branches with GET /branches)", name)
	}
	out := map[string]bool{}
	if name == Default {
		for id := range r.snaps {
			if c, ok := r.doc.Commits[id]; !ok || c.Branch == Default {
				out[id] = true
			}
		}
		return out, nil
	}
	base := ""
	if b := r.doc.Branches[name]; b != nil {
		base = b.Base
	}
	for _, id := range r.chain(head) {
		out[id] = true
		if id == base {
			break
		}
	}
	return out, nil
}

// Log is GET /branch/{name}/log: the head, then its parents.
func (s *Service) Log(ctx context.Context, name string) ([]agentapi.SnapshotDetails, error) {
	if err := ValidateName(name); err != nil {
		return nil, invalid("name", "invalid branch name: %s", err.Error())
	}
	r, err := s.repo(ctx)
	if err != nil {
		return nil, err
	}
	head, ok := r.heads[name]
	if !ok {
		return nil, invalid("name", "failed to found dataset of the branch: %s", name)
	}
	out := []agentapi.SnapshotDetails{}
	for _, id := range r.chain(head) {
		out = append(out, r.details(id))
	}
	return out, nil
}

// Snapshot is GET /branch/snapshot/{id}.
func (s *Service) Snapshot(ctx context.Context, id string) (agentapi.SnapshotDetails, error) {
	if _, _, err := storage.ParseSnapshotID(id); err != nil {
		return agentapi.SnapshotDetails{}, invalid("id", "%q is not a snapshot id: want <pool>@snapshot_<YYYYMMDDhhmmss> (list them with GET /snapshots)", id)
	}
	r, err := s.repo(ctx)
	if err != nil {
		return agentapi.SnapshotDetails{}, err
	}
	if _, ok := r.snaps[id]; !ok {
		return agentapi.SnapshotDetails{}, notFound("id", "snapshot %s not found", id)
	}
	return r.details(id), nil
}
