// Package branch is data branching as Database Lab Engine 4 has it: a
// branch is a name pointing at a snapshot (its head); clones are created
// on a branch from its head; a commit snapshots a clone's current state
// onto its branch and moves the head there, so the next clone on the
// branch starts from the committed data. The log of a branch is its chain
// of snapshots, each with its parent, message and author.
//
// The snapshots are ordinary snapshots of the pools (every backend takes
// them, storage.SnapshotOptions.Source); which snapshot a branch points
// at and which one a commit follows is kept in the agent's state
// directory (StateFile), written atomically before a change is answered.
// The default branch "main" always exists: without commits its head is
// the newest data refresh, and a newer refresh moves it again.
package branch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/sdk/agentapi"
	"github.com/thinlab/thinlab/sdk/labels"
)

// Default is DLE's default branch; it cannot be deleted.
const Default = "main"

// MaxNameLen bounds a branch name (in characters).
const MaxNameLen = 100

// nameRE is DLE's branch-name rule: Unicode letters, digits, '_' and '-';
// no spaces, slashes or dots. Names never reach a path or a command line
// (they live in the state file only), so letters of any script are safe.
var nameRE = regexp.MustCompile(`^[\p{L}0-9_-]+$`)

// LabelBranch is set on every commit snapshot: the branch it was made on.
const LabelBranch = "thinlab.branch"

// Sentinel errors; the API answers 400 for all but internal failures, as
// DLE does, and 404 for an unknown snapshot on GET /branch/snapshot/{id}.
var (
	ErrInvalid  = errors.New("invalid request")
	ErrNotFound = errors.New("not found")
	ErrRefused  = errors.New("refused")
)

// Error is a client error with DLE's message text.
type Error struct {
	Kind    error
	Field   string
	Message string
}

func (e *Error) Error() string { return e.Message }

// Unwrap lets errors.Is see the kind.
func (e *Error) Unwrap() error { return e.Kind }

func invalid(field, format string, a ...any) error {
	return &Error{Kind: ErrInvalid, Field: field, Message: fmt.Sprintf(format, a...)}
}

func notFound(field, format string, a ...any) error {
	return &Error{Kind: ErrNotFound, Field: field, Message: fmt.Sprintf(format, a...)}
}

func refused(field, format string, a ...any) error {
	return &Error{Kind: ErrRefused, Field: field, Message: fmt.Sprintf(format, a...)}
}

// ValidateName checks a branch name (DLE's rule plus a length limit).
func ValidateName(name string) error {
	if utf8.RuneCountInString(name) > MaxNameLen {
		return invalid("branchName", "The branch name is longer than %d characters", MaxNameLen)
	}
	if !utf8.ValidString(name) || !nameRE.MatchString(name) {
		return invalid("branchName", "The branch name must contain only Unicode characters, numbers, underscores, and hyphens. Spaces and slashes are not allowed")
	}
	return nil
}

// Clones is what branches need of the clone engine (clone.Manager).
type Clones interface {
	List() []clone.Clone
	Get(id string) (clone.Clone, error)
	SnapshotClone(ctx context.Context, id string, opt storage.SnapshotOptions) (storage.Snapshot, error)
}

var _ Clones = (*clone.Manager)(nil)

// Options configure a Service.
type Options struct {
	// StateDir holds StateFile.
	StateDir string
	Pools    []storage.Pool
	Clones   Clones
	Logger   *slog.Logger
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// Service answers the branch routes. It is safe for concurrent use.
type Service struct {
	dir    string
	pools  []storage.Pool
	clones Clones
	log    *slog.Logger
	now    func() time.Time

	// opMu orders changes (create, commit, delete) so that a head read
	// for a commit is still the head when the commit is recorded.
	opMu sync.Mutex
	mu   sync.Mutex
	doc  stateDoc
}

// New loads the state. A corrupt file is an error (nothing is guessed).
func New(opt Options) (*Service, error) {
	doc, err := loadDoc(opt.StateDir)
	if err != nil {
		return nil, err
	}
	log := opt.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Service{dir: opt.StateDir, pools: opt.Pools, clones: opt.Clones, log: log.With("component", "branch"), now: opt.Now, doc: doc}
	if s.now == nil {
		s.now = time.Now
	}
	return s, nil
}

// publish writes next and then makes it the state.
func (s *Service) publish(next stateDoc) error {
	if err := writeDoc(s.dir, next); err != nil {
		return err
	}
	s.mu.Lock()
	s.doc = next
	s.mu.Unlock()
	return nil
}

func (s *Service) snapshotDoc() stateDoc {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.doc.clone()
}

// BranchOf names the branch a snapshot belongs to: the branch of a
// commit, else the default branch (data refreshes). It reads the state
// only.
func (s *Service) BranchOf(id string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.doc.Commits[id]; ok {
		return c.Branch
	}
	return Default
}

// Create makes branch name point at snapshotID, or, when that is empty,
// at the head of baseBranch. The checks and their messages follow DLE.
func (s *Service) Create(ctx context.Context, name, baseBranch, snapshotID string) error {
	if name == "" {
		return invalid("branchName", "The branch name must not be empty")
	}
	if name == baseBranch {
		return invalid("branchName", "new and base branches must have different names")
	}
	if err := ValidateName(name); err != nil {
		return err
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	r, err := s.repo(ctx)
	if err != nil {
		return err
	}
	if baseBranch != "" && snapshotID == "" {
		if _, ok := r.heads[baseBranch]; !ok {
			return invalid("baseBranch", "failed to found dataset of the branch: %s", baseBranch)
		}
	}
	if _, ok := r.heads[name]; ok || name == Default {
		return refused("branchName", "branch '%s' already exists", name)
	}
	if snapshotID == "" {
		if baseBranch == "" {
			return invalid("baseBranch", "either base branch name or base snapshot ID must be specified")
		}
		snapshotID = r.heads[baseBranch]
		if snapshotID == "" {
			return invalid("baseBranch", "base branch not found")
		}
	} else {
		if _, _, err := storage.ParseSnapshotID(snapshotID); err != nil {
			return invalid("snapshotID", "snapshot ID %q is invalid: want <pool>@snapshot_<YYYYMMDDhhmmss> (list them with GET /snapshots)", snapshotID)
		}
		if _, ok := r.snaps[snapshotID]; !ok {
			return invalid("snapshotID", "snapshot %s not found (list snapshots with GET /snapshots)", snapshotID)
		}
	}
	next := s.snapshotDoc()
	next.Branches[name] = &record{Name: name, Head: snapshotID, Base: snapshotID, CreatedAt: s.now().UTC()}
	if err := s.publish(next); err != nil {
		return err
	}
	s.log.Info("branch created", "branch", name, "snapshot", snapshotID)
	return nil
}

// Head resolves a branch to its head snapshot ("" with no error for the
// default branch of a pool without snapshots yet).
func (s *Service) Head(ctx context.Context, name string) (string, error) {
	r, err := s.repo(ctx)
	if err != nil {
		return "", err
	}
	head, ok := r.heads[name]
	if !ok && name != Default {
		return "", invalid("branch", "failed to found dataset of the branch: %s (branch not found; list branches with GET /branches)", name)
	}
	return head, nil
}

// CommitResult is a new commit.
type CommitResult struct {
	Snapshot storage.Snapshot
	Branch   string
}

// Commit snapshots the clone's current state onto its branch with
// message and moves the branch's head there (POST /branch/snapshot).
// author names who committed ("" = the clone's database user).
func (s *Service) Commit(ctx context.Context, cloneID, message, author string) (CommitResult, error) {
	return s.snapshotClone(ctx, cloneID, message, author, true)
}

// SnapshotClone snapshots the clone's current state without moving a
// branch (POST /snapshot/clone); its parent is the clone's snapshot.
func (s *Service) SnapshotClone(ctx context.Context, cloneID, message, author string) (CommitResult, error) {
	return s.snapshotClone(ctx, cloneID, message, author, false)
}

func (s *Service) snapshotClone(ctx context.Context, cloneID, message, author string, onBranch bool) (CommitResult, error) {
	if cloneID == "" {
		return CommitResult{}, invalid("cloneID", "cloneID must not be empty: give the clone to snapshot")
	}
	cl, err := s.clones.Get(cloneID)
	if err != nil {
		return CommitResult{}, invalid("cloneID", "clone not found")
	}
	branchName := cl.Branch
	if branchName == "" {
		branchName = Default
	}
	if cl.Status != clone.StatusOK {
		return CommitResult{}, refused("cloneID", "clone %s is %s: a commit needs a clone that is OK", cloneID, cl.Status)
	}
	if author == "" {
		author = cl.Username
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	r, err := s.repo(ctx)
	if err != nil {
		return CommitResult{}, err
	}
	parent := cl.SnapshotID
	if onBranch {
		head, ok := r.heads[branchName]
		if !ok {
			return CommitResult{}, invalid("cloneID", "branch not found: %s", branchName)
		}
		parent = head
	}
	opt := storage.SnapshotOptions{Message: message, Labels: map[string]string{LabelBranch: branchName}}
	var snap storage.Snapshot
	for attempt := 0; ; attempt++ {
		// IDs have second precision: a second commit in the same second
		// of the same pool waits for the next one.
		opt.DataStateAt = s.now()
		snap, err = s.clones.SnapshotClone(ctx, cloneID, opt)
		if !errors.Is(err, storage.ErrExists) || attempt >= 3 {
			break
		}
		select {
		case <-ctx.Done():
			return CommitResult{}, ctx.Err()
		case <-time.After(time.Second - time.Duration(s.now().Nanosecond())):
		}
	}
	switch {
	case errors.Is(err, clone.ErrNotReady):
		return CommitResult{}, refused("cloneID", "%s", err.Error())
	case errors.Is(err, clone.ErrNotFound):
		return CommitResult{}, invalid("cloneID", "clone not found")
	case errors.Is(err, storage.ErrInvalidName):
		return CommitResult{}, invalid("message", "%s", err.Error())
	case err != nil:
		return CommitResult{}, fmt.Errorf("snapshot of clone %s: %w", cloneID, err)
	}
	next := s.snapshotDoc()
	next.Commits[snap.ID] = &commit{ID: snap.ID, Parent: parent, Branch: branchName, Message: message, Author: author, CloneID: cloneID, CreatedAt: snap.CreatedAt, OnBranch: onBranch}
	if onBranch {
		b := next.Branches[branchName]
		if b == nil {
			b = &record{Name: branchName, CreatedAt: s.now().UTC()}
			next.Branches[branchName] = b
		}
		b.Head = snap.ID
	}
	if err := s.publish(next); err != nil {
		// Unrecorded, the snapshot would be a commit of no branch.
		if p := r.pool(snap.Pool); p != nil {
			if derr := p.DestroySnapshot(context.WithoutCancel(ctx), snap.ID, false); derr != nil {
				s.log.Error("snapshot of an unrecorded commit left behind", "snapshot", snap.ID, "err", derr)
			}
		}
		return CommitResult{}, err
	}
	s.log.Info("clone snapshot taken", "clone", cloneID, "branch", branchName, "snapshot", snap.ID, "moves_branch", onBranch)
	return CommitResult{Snapshot: snap, Branch: branchName}, nil
}

// Delete removes a branch and the snapshots committed on it. It refuses
// the default branch, a branch a clone works on or whose snapshots a
// clone uses, and the fork point of another branch.
func (s *Service) Delete(ctx context.Context, name string) error {
	if err := ValidateName(name); err != nil {
		return invalid("name", "invalid branch name: %s", err.Error())
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	r, err := s.repo(ctx)
	if err != nil {
		return err
	}
	if _, ok := r.heads[name]; !ok {
		return notFound("name", "failed to found dataset of the branch: %s", name)
	}
	if name == Default {
		return refused("name", "cannot delete default branch: %s", Default)
	}
	if r.doc.Branches[name].protectedAt(s.now()) {
		return refused("name", "branch %s is protected: remove its protection first (PATCH /branch/%s with protected false)", name, name)
	}
	own := r.ownCommits(name)
	ownSet := map[string]bool{}
	for _, id := range own {
		ownSet[id] = true
	}
	for _, cl := range s.clones.List() {
		if cl.Branch == name {
			return refused("name", "branch %s is used by clone %s: destroy the clone first", name, cl.ID)
		}
		if ownSet[cl.SnapshotID] {
			return refused("name", "snapshot %s has a dependent clone", cl.SnapshotID)
		}
	}
	for other, b := range r.doc.Branches {
		if other != name && ownSet[b.Base] {
			return refused("name", "branch %s is the fork point of branch %s: delete that branch first", name, other)
		}
	}
	for id, c := range r.doc.Commits {
		if !ownSet[id] && ownSet[c.Parent] {
			return refused("name", "snapshot %s of branch %s is the parent of snapshot %s of branch %s: delete that branch first", c.Parent, name, id, c.Branch)
		}
	}
	next := s.snapshotDoc()
	delete(next.Branches, name)
	for _, id := range own {
		delete(next.Commits, id)
	}
	if err := s.publish(next); err != nil {
		return err
	}
	// Newest first: a commit's snapshot may have been cloned only by
	// clones that are gone, so nothing depends on it now.
	for _, id := range own {
		if p := r.pool(r.snaps[id].Pool); p != nil {
			if err := p.DestroySnapshot(ctx, id, false); err != nil && !errors.Is(err, storage.ErrNotFound) {
				s.log.Warn("snapshot of a deleted branch left behind (delete it with DELETE /snapshot/{id})", "branch", name, "snapshot", id, "err", err)
			}
		}
	}
	s.log.Info("branch deleted", "branch", name, "snapshots", len(own))
	return nil
}

// Protect protects or unprotects a branch (PATCH /branch/{name}); till
// is when protection ends (zero: no expiry). It returns the branch's
// protection as DLE's PATCH answers it.
func (s *Service) Protect(ctx context.Context, name string, protected bool, till time.Time) (agentapi.BranchView, error) {
	if err := ValidateName(name); err != nil {
		return agentapi.BranchView{}, invalid("name", "invalid branch name: %s", err.Error())
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	r, err := s.repo(ctx)
	if err != nil {
		return agentapi.BranchView{}, err
	}
	head, ok := r.heads[name]
	if !ok {
		return agentapi.BranchView{}, invalid("name", "branch not found: %s", name)
	}
	next := s.snapshotDoc()
	b := next.Branches[name]
	if b == nil {
		// The default branch gets a record; its head keeps following
		// refreshes (a newer refresh wins over a recorded head).
		b = &record{Name: name, Head: head, CreatedAt: s.now().UTC()}
		next.Branches[name] = b
	}
	b.Protected, b.ProtectedTill = protected, time.Time{}
	if protected {
		b.ProtectedTill = till
	}
	if err := s.publish(next); err != nil {
		return agentapi.BranchView{}, err
	}
	s.log.Info("branch protection changed", "branch", name, "protected", protected, "till", till)
	v := agentapi.BranchView{Name: name, Protected: b.protectedAt(s.now())}
	if v.Protected {
		v.ProtectedTill = agentapi.NewLocalTime(b.ProtectedTill)
	}
	return v, nil
}

// SetLabels replaces a branch's labels (sdk/labels rules).
func (s *Service) SetLabels(ctx context.Context, name string, set map[string]string) (agentapi.BranchView, error) {
	if err := ValidateName(name); err != nil {
		return agentapi.BranchView{}, invalid("name", "invalid branch name: %s", err.Error())
	}
	if err := labels.Validate("labels", set); err != nil {
		return agentapi.BranchView{}, invalid("labels", "%s", err.Error())
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	r, err := s.repo(ctx)
	if err != nil {
		return agentapi.BranchView{}, err
	}
	head, ok := r.heads[name]
	if !ok {
		return agentapi.BranchView{}, invalid("name", "branch not found: %s", name)
	}
	next := s.snapshotDoc()
	b := next.Branches[name]
	if b == nil {
		b = &record{Name: name, Head: head, CreatedAt: s.now().UTC()}
		next.Branches[name] = b
	}
	b.Labels = maps.Clone(set)
	if err := s.publish(next); err != nil {
		return agentapi.BranchView{}, err
	}
	s.log.Info("branch labels changed", "branch", name, "labels", len(set))
	v := agentapi.BranchView{Name: name, Labels: b.Labels, Protected: b.protectedAt(s.now())}
	if v.Protected {
		v.ProtectedTill = agentapi.NewLocalTime(b.ProtectedTill)
	}
	return v, nil
}

// CheckSnapshotDelete refuses to delete a snapshot that a branch points
// at or that another commit follows.
func (s *Service) CheckSnapshotDelete(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, b := range s.doc.Branches {
		if b.Head == id {
			return refused("id", "snapshot %s is the head of branch %s: delete the branch (DELETE /branch/%s) or commit to it first", id, name, name)
		}
	}
	for cid, c := range s.doc.Commits {
		if c.Parent == id {
			return refused("id", "snapshot %s is the parent of snapshot %s on branch %s", id, cid, c.Branch)
		}
	}
	return nil
}

// ForgetSnapshot drops a deleted snapshot from the history.
func (s *Service) ForgetSnapshot(id string) {
	s.mu.Lock()
	_, ok := s.doc.Commits[id]
	s.mu.Unlock()
	if !ok {
		return
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	next := s.snapshotDoc()
	delete(next.Commits, id)
	if err := s.publish(next); err != nil {
		s.log.Warn("deleted snapshot stays in the branch history", "snapshot", id, "err", err)
	}
}

// sortedKeys returns m's keys sorted.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// compactTime is DLE's dataStateAt of branches and snapshot details.
func compactTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(storage.SnapshotTimeLayout)
}

// orDash is DLE's "-" for an unset parent or message.
func orDash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}
