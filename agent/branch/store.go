package branch

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// StateFile holds the branches and the commits' history in the agent's
// state directory. The snapshots themselves (and their messages) live in
// the pools; this file adds what the pools cannot say: which snapshot a
// branch points at and which snapshot a commit follows.
const StateFile = "branches.json"

// record is one branch as persisted. The default branch has a record
// only once something was committed to it.
type record struct {
	Name string `json:"name"`
	// Head is the snapshot the branch points at: new clones on the branch
	// start from it, and a commit moves it.
	Head string `json:"head"`
	// Base is the snapshot the branch was created from (its fork point);
	// empty for the default branch.
	Base      string    `json:"base,omitempty"`
	CreatedAt time.Time `json:"createdAt"`
	// Protected keeps the branch from being deleted until ProtectedTill
	// (zero: no expiry).
	Protected     bool      `json:"protected,omitempty"`
	ProtectedTill time.Time `json:"protectedTill,omitzero"`
	// Labels are the branch's key=value labels.
	Labels map[string]string `json:"labels,omitempty"`
}

// protectedAt reports whether the protection holds at now (DLE: an
// expired protection no longer blocks a delete).
func (r *record) protectedAt(now time.Time) bool {
	return r != nil && r.Protected && (r.ProtectedTill.IsZero() || now.Before(r.ProtectedTill))
}

// commit is one snapshot taken of a clone, with its place in the history.
type commit struct {
	ID string `json:"id"`
	// Parent is the snapshot this one follows: the branch's head when it
	// was committed (POST /branch/snapshot) or the clone's snapshot
	// (POST /snapshot/clone).
	Parent  string `json:"parent"`
	Branch  string `json:"branch"`
	Message string `json:"message,omitempty"`
	// Author is who committed: the clone's database user, or the e-mail a
	// trusted proxy sent.
	Author    string    `json:"author,omitempty"`
	CloneID   string    `json:"cloneId"`
	CreatedAt time.Time `json:"createdAt"`
	// OnBranch is false for a snapshot of a clone that did not move its
	// branch (POST /snapshot/clone).
	OnBranch bool `json:"onBranch"`
}

type stateDoc struct {
	Version  int                `json:"version"`
	Branches map[string]*record `json:"branches"`
	Commits  map[string]*commit `json:"commits"`
}

func emptyDoc() stateDoc {
	return stateDoc{Version: 1, Branches: map[string]*record{}, Commits: map[string]*commit{}}
}

func loadDoc(dir string) (stateDoc, error) {
	doc := emptyDoc()
	if dir == "" {
		return doc, nil
	}
	raw, err := os.ReadFile(filepath.Join(dir, StateFile)) //nolint:gosec // the agent's own state directory, from its config
	if errors.Is(err, os.ErrNotExist) {
		return doc, nil
	}
	if err != nil {
		return doc, fmt.Errorf("read branch state: %w", err)
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return emptyDoc(), fmt.Errorf("branch state %s is corrupt (%v): move it away to start with the default branch only", filepath.Join(dir, StateFile), err)
	}
	if doc.Branches == nil {
		doc.Branches = map[string]*record{}
	}
	if doc.Commits == nil {
		doc.Commits = map[string]*commit{}
	}
	return doc, nil
}

// clone copies the document, so that a change is built aside, written,
// and only then published.
func (d stateDoc) clone() stateDoc {
	out := emptyDoc()
	for k, v := range d.Branches {
		r := *v
		out.Branches[k] = &r
	}
	for k, v := range d.Commits {
		c := *v
		out.Commits[k] = &c
	}
	return out
}

// writeDoc replaces the state file atomically (temp file, fsync, rename,
// fsync of the directory): a crash leaves the old or the new file.
func writeDoc(dir string, doc stateDoc) error {
	if dir == "" {
		return errors.New("no stateDir configured: branches cannot be saved")
	}
	raw, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("stateDir: %w", err)
	}
	f, err := os.CreateTemp(dir, StateFile+".tmp-*")
	if err != nil {
		return fmt.Errorf("write branch state: %w", err)
	}
	defer func() { _ = os.Remove(f.Name()) }() // nothing left after the rename
	_, err = f.Write(raw)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write branch state: %w", err)
	}
	if err := os.Rename(f.Name(), filepath.Join(dir, StateFile)); err != nil {
		return fmt.Errorf("write branch state: %w", err)
	}
	d, err := os.Open(dir) //nolint:gosec // the configured stateDir
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
