package agentapi

import (
	"context"
	"net/http"
	"net/url"
)

// Labels (Thinlab addition): key=value labels on clones, snapshots and
// branches, set on create or later, and list filters ("k=v" or "k",
// every term matching; sdk/labels has the rules).

// labelQuery is "?label=...&label=..." for terms, "" for none.
func labelQuery(terms []string) string {
	if len(terms) == 0 {
		return ""
	}
	return "?" + url.Values{"label": terms}.Encode()
}

// ClonesLabeled lists the clones whose labels match every term.
func (c *Client) ClonesLabeled(ctx context.Context, terms ...string) ([]Clone, error) {
	var cl []Clone
	if err := c.do(ctx, http.MethodGet, "/clones"+labelQuery(terms), nil, &cl); err != nil {
		return nil, err
	}
	return cl, nil
}

// SnapshotsLabeled lists the snapshots whose labels match every term.
func (c *Client) SnapshotsLabeled(ctx context.Context, terms ...string) ([]Snapshot, error) {
	var s []Snapshot
	if err := c.do(ctx, http.MethodGet, "/snapshots"+labelQuery(terms), nil, &s); err != nil {
		return nil, err
	}
	return s, nil
}

// BranchesLabeled lists the branches whose labels match every term.
func (c *Client) BranchesLabeled(ctx context.Context, terms ...string) ([]BranchView, error) {
	var out []BranchView
	if err := c.do(ctx, http.MethodGet, "/branches"+labelQuery(terms), nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// SetCloneLabels replaces a clone's labels; its protection is not
// touched (the body has no "protected").
func (c *Client) SetCloneLabels(ctx context.Context, id string, set map[string]string) (*Clone, error) {
	if set == nil {
		set = map[string]string{} // null would read as "no labels given": an unprotect in DLE's PATCH
	}
	var cl Clone
	if err := c.do(ctx, http.MethodPatch, "/clone/"+id, CloneLabelsRequest{Labels: set}, &cl); err != nil {
		return nil, err
	}
	return &cl, nil
}

// SetSnapshotLabels replaces a snapshot's labels.
func (c *Client) SetSnapshotLabels(ctx context.Context, id string, set map[string]string) (*Snapshot, error) {
	if set == nil {
		set = map[string]string{}
	}
	return c.UpdateSnapshot(ctx, id, PatchSnapshotRequest{Labels: &set})
}

// SetBranchLabels replaces a branch's labels.
func (c *Client) SetBranchLabels(ctx context.Context, name string, set map[string]string) (*BranchView, error) {
	if set == nil {
		set = map[string]string{}
	}
	var out BranchView
	if err := c.do(ctx, http.MethodPatch, "/branch/"+url.PathEscape(name), PatchSnapshotRequest{Labels: &set}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
