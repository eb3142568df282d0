package api

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/sdk/agentapi"
	"github.com/thinlab/thinlab/sdk/labels"
)

// snapshotParam is the catch-all {id} without its leading slash.
func snapshotParam(c *gin.Context) string {
	return strings.TrimPrefix(c.Param("id"), "/")
}

// listSnapshots is GET /snapshots: newest createdAt first. The query
// parameters branch and dataset (DLE's UI) filter: the snapshots a clone
// of the branch may start from (Service.SnapshotIDs), of one pool.
// ?label= filters by labels, as for clones.
func (s *Server) listSnapshots(c *gin.Context) {
	sel, ok := labelSelector(c)
	if !ok {
		return
	}
	branchName := c.Query("branch")
	var onBranch map[string]bool
	if branchName != "" {
		b, ok := s.branchService(c)
		if !ok {
			return
		}
		var err error
		if onBranch, err = b.SnapshotIDs(c.Request.Context(), branchName); err != nil {
			s.writeBranchError(c, err, false)
			return
		}
	}
	dataset := c.Query("dataset")
	if dataset != "" {
		if _, ok := s.clones.Pool(dataset); !ok {
			badRequest(c, "dataset", fmt.Sprintf("dataset %q not found: use a pool name from GET /status", dataset))
			return
		}
	}
	snaps := s.snapshotIndex(c.Request.Context())
	bySnap := clonesBySnapshot(s.clones.List(), snaps)
	out := make([]agentapi.Snapshot, 0, len(snaps))
	for _, sn := range snaps {
		if dataset != "" && sn.Pool != dataset {
			continue
		}
		if onBranch != nil && !onBranch[sn.ID] {
			continue
		}
		if len(sel) > 0 && !sel.Matches(s.snaps.Get(sn.ID).Labels) {
			continue
		}
		out = append(out, s.snapshotView(sn, bySnap[sn.ID]))
	}
	sortSnapshots(out)
	c.JSON(http.StatusOK, out)
}

// sortSnapshots orders newest first; equal times fall back to the ID
// (descending) so the order is total and the listing stable.
func sortSnapshots(out []agentapi.Snapshot) {
	slices.SortFunc(out, func(a, b agentapi.Snapshot) int {
		if c := agentapi.TimeOf(b.CreatedAt).Compare(agentapi.TimeOf(a.CreatedAt)); c != 0 {
			return c
		}
		return strings.Compare(b.ID, a.ID)
	})
}

// findSnapshot resolves id to its pool and snapshot, answering 400 for a
// malformed ID and 404 for an unknown one.
func (s *Server) findSnapshot(c *gin.Context, id string) (storage.Pool, storage.Snapshot, bool) {
	poolName, _, err := storage.ParseSnapshotID(id)
	if err != nil {
		badRequest(c, "id", fmt.Sprintf("%q is not a snapshot id: want <pool>@snapshot_<YYYYMMDDhhmmss> (list them with GET /snapshots)", id))
		return nil, storage.Snapshot{}, false
	}
	p, ok := s.clones.Pool(poolName)
	if !ok {
		notFound(c, fmt.Sprintf("snapshot %q not found: there is no pool %q", id, poolName))
		return nil, storage.Snapshot{}, false
	}
	sn, err := p.GetSnapshot(c.Request.Context(), id)
	if errors.Is(err, storage.ErrNotFound) {
		notFound(c, fmt.Sprintf("snapshot %q not found (list snapshots with GET /snapshots)", id))
		return nil, storage.Snapshot{}, false
	}
	if err != nil {
		s.internalError(c, err)
		return nil, storage.Snapshot{}, false
	}
	if sn.Pool == "" {
		sn.Pool = p.Name()
	}
	return p, sn, true
}

// getSnapshot is GET /snapshot/{id}.
func (s *Server) getSnapshot(c *gin.Context) {
	_, sn, ok := s.findSnapshot(c, snapshotParam(c))
	if !ok {
		return
	}
	snaps := snapshotIndex{sn.ID: sn}
	c.JSON(http.StatusOK, s.snapshotView(sn, clonesBySnapshot(s.clones.List(), snaps)[sn.ID]))
}

// createSnapshot is POST /snapshot: a snapshot of the pool's current data
// (its main dataset). The reply is DLE's raw pool snapshot.
func (s *Server) createSnapshot(c *gin.Context) {
	var req agentapi.CreateSnapshotRequest
	if !readJSON(c, &req) {
		return
	}
	var p storage.Pool
	if req.PoolName == "" {
		p = s.pools[0]
	} else if p2, ok := s.clones.Pool(req.PoolName); ok {
		p = p2
	} else {
		badRequest(c, "poolName", fmt.Sprintf("poolName: pool %q not found: use a pool name from GET /status", req.PoolName))
		return
	}
	// A refresh rewrites the main dataset; a snapshot now would catch it
	// half-written.
	if s.retrieval != nil && s.retrieval.Refreshing(p.Name()) {
		conflict(c, fmt.Sprintf("pool %q is being refreshed: snapshot it when the refresh has finished", p.Name()))
		return
	}
	if _, err := os.Stat(filepath.Join(p.MainDir(), storage.DataSubdir, "PG_VERSION")); err != nil {
		badRequest(c, "poolName", fmt.Sprintf("pool %q holds no data yet: run a full refresh first (POST /full-refresh)", p.Name()))
		return
	}
	sn, err := p.Snapshot(c.Request.Context(), storage.SnapshotOptions{
		DataStateAt: time.Now().UTC().Truncate(time.Second),
		Message:     "snapshot by API",
	})
	if errors.Is(err, storage.ErrExists) {
		conflict(c, fmt.Sprintf("pool %q already has a snapshot of this second: retry in a second", p.Name()))
		return
	}
	if err != nil {
		s.internalError(c, err)
		return
	}
	s.log.Info("snapshot created", "snapshot", sn.ID)
	s.events.Emit(events.Event{Kind: events.SnapshotCreated, Pool: p.Name(), Snapshot: sn.ID, Message: sn.Message})
	c.JSON(http.StatusOK, agentapi.PoolSnapshot{
		ID:                sn.ID,
		CreatedAt:         sn.CreatedAt,
		DataStateAt:       sn.DataStateAt,
		Used:              sn.PhysicalSize,
		LogicalReferenced: sn.LogicalSize,
		Pool:              p.Name(),
		Message:           sn.Message,
	})
}

// deleteSnapshot is DELETE /snapshot/{id}. A snapshot with clones is
// refused (409) unless force=true, which destroys those clones first
// (refused if one of them is protected).
func (s *Server) deleteSnapshot(c *gin.Context) {
	force := false
	if v := c.Query("force"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			badRequest(c, "force", fmt.Sprintf("force: %q is not a boolean: use true or false", v))
			return
		}
		force = b
	}
	p, sn, ok := s.findSnapshot(c, snapshotParam(c))
	if !ok {
		return
	}
	if err := s.snaps.Err(); err != nil {
		s.internalError(c, err)
		return
	}
	if s.snaps.Get(sn.ID).ProtectedAt(s.now()) {
		conflict(c, fmt.Sprintf("snapshot %q is protected: remove its protection first (PATCH /snapshot/{id} with protected false)", sn.ID))
		return
	}
	if s.branches != nil {
		if err := s.branches.CheckSnapshotDelete(sn.ID); err != nil {
			s.writeBranchError(c, err, false)
			return
		}
	}
	var dependents []string
	var protected []string
	for _, cl := range s.clones.List() {
		if cl.SnapshotID == sn.ID {
			dependents = append(dependents, cl.ID)
			if cl.Protected {
				protected = append(protected, cl.ID)
			}
		}
	}
	if len(dependents) > 0 && !force {
		conflict(c, fmt.Sprintf("snapshot %q has dependent clones (%s): destroy them first, or delete with force=true", sn.ID, strings.Join(dependents, ", ")))
		return
	}
	if len(protected) > 0 {
		conflict(c, fmt.Sprintf("snapshot %q has protected clones (%s): remove their protection first", sn.ID, strings.Join(protected, ", ")))
		return
	}
	for _, id := range dependents {
		if err := s.clones.Destroy(c.Request.Context(), id); err != nil && !errors.Is(err, clone.ErrNotFound) {
			s.writeCloneError(c, err)
			return
		}
	}
	if err := s.waitGone(c.Request.Context(), dependents); err != nil {
		s.internalError(c, err)
		return
	}
	err := p.DestroySnapshot(c.Request.Context(), sn.ID, force)
	switch {
	case errors.Is(err, storage.ErrHasDependents):
		conflict(c, fmt.Sprintf("snapshot %q has dependent clones: destroy them first, or delete with force=true", sn.ID))
		return
	case errors.Is(err, storage.ErrNotFound):
		notFound(c, fmt.Sprintf("snapshot %q not found", sn.ID))
		return
	case err != nil:
		s.internalError(c, err)
		return
	}
	s.snaps.Forget(sn.ID)
	s.events.Emit(events.Event{Kind: events.SnapshotDeleted, Pool: p.Name(), Snapshot: sn.ID, Message: "deleted through the API"})
	if s.branches != nil {
		s.branches.ForgetSnapshot(sn.ID)
	}
	s.log.Info("snapshot deleted", "snapshot", sn.ID, "force", force)
	c.JSON(http.StatusOK, agentapi.Response{Status: "OK", Message: "Deleted snapshot"})
}

// updateSnapshot is PATCH /snapshot/{id}: protect or unprotect a snapshot
// (an omitted duration means no expiry, capped by the configured maximum)
// or schedule its deletion. The reply is the snapshot.
func (s *Server) updateSnapshot(c *gin.Context) {
	var req agentapi.PatchSnapshotRequest
	if !readJSON(c, &req) {
		return
	}
	if req.Protected == nil && req.DeleteAt == nil && req.Labels == nil {
		badRequest(c, "protected", "nothing to update: give protected (with an optional protectionDurationMinutes), deleteAt or labels")
		return
	}
	if req.Labels != nil {
		if err := labels.Validate("labels", *req.Labels); err != nil {
			badRequest(c, "labels", err.Error())
			return
		}
	}
	if req.Protected != nil && *req.Protected && req.DeleteAt != nil && !req.DeleteAt.IsZero() {
		badRequest(c, "deleteAt", "deleteAt: a snapshot cannot be protected and scheduled for deletion at once; give one of them")
		return
	}
	if req.Protected == nil && req.ProtectionDurationMinutes != nil {
		badRequest(c, "protectionDurationMinutes", "protectionDurationMinutes: give it together with protected true")
		return
	}
	_, sn, ok := s.findSnapshot(c, snapshotParam(c))
	if !ok {
		return
	}
	if err := s.snaps.Err(); err != nil {
		s.internalError(c, err)
		return
	}
	now := s.now()
	meta := s.snaps.Get(sn.ID)
	if !meta.ProtectedAt(now) {
		meta.Protected, meta.ProtectedTill = false, time.Time{}
	}
	if req.Protected != nil {
		meta.Protected, meta.ProtectedTill = *req.Protected, time.Time{}
		if *req.Protected {
			meta.ProtectedTill = s.snapshotProtectionTill(now, req.ProtectionDurationMinutes)
			meta.DeleteAt = time.Time{}
		}
	}
	if req.DeleteAt != nil {
		if !req.DeleteAt.IsZero() && meta.ProtectedAt(now) {
			badRequest(c, "deleteAt", fmt.Sprintf("deleteAt: snapshot %q is protected; remove its protection first", sn.ID))
			return
		}
		meta.DeleteAt = req.DeleteAt.Time
	}
	if req.Labels != nil {
		meta.Labels = maps.Clone(*req.Labels)
	}
	if err := s.snaps.Set(sn.ID, meta); err != nil {
		s.internalError(c, err)
		return
	}
	s.log.Info("snapshot updated", "snapshot", sn.ID, "protected", meta.ProtectedAt(now), "till", meta.ProtectedTill, "delete_at", meta.DeleteAt)
	snaps := snapshotIndex{sn.ID: sn}
	c.JSON(http.StatusOK, s.snapshotView(sn, clonesBySnapshot(s.clones.List(), snaps)[sn.ID]))
}

// snapshotProtectionTill: nil or 0 minutes mean no expiry, both capped by
// cloning.protectionMaxDurationMinutes (DLE's rule for snapshots).
func (s *Server) snapshotProtectionTill(now time.Time, minutes *uint) time.Time {
	var d uint
	if minutes != nil {
		d = *minutes
	}
	if max := s.cfg.Cloning.ProtectionMaxDurationMinutes; max > 0 && (d == 0 || d > max) {
		d = max
	}
	if d == 0 {
		return time.Time{}
	}
	return now.Add(time.Duration(d) * time.Minute)
}

// SweepSnapshots runs the snapshot policy's sweep now (deleteAt and
// retention) and returns the IDs it deleted.
func (s *Server) SweepSnapshots(ctx context.Context) []string {
	return s.snaps.Sweep(ctx)
}
