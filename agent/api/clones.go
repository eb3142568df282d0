package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/agent/branch"
	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/sdk/agentapi"
)

// listClones is GET /clones: a bare array, newest first.
// ?label=k=v (or ?label=k) filters by labels, every term matching.
func (s *Server) listClones(c *gin.Context) {
	sel, ok := labelSelector(c)
	if !ok {
		return
	}
	clones := s.clones.List()
	snaps := s.snapshotIndex(c.Request.Context())
	bySnap := clonesBySnapshot(clones, snaps)
	out := make([]agentapi.Clone, 0, len(clones))
	for _, cl := range clones {
		if sel.Matches(cl.Labels) {
			out = append(out, s.cloneView(cl, snaps, bySnap))
		}
	}
	c.JSON(http.StatusOK, out)
}

// getClone is GET /clone/{id}; 404 NOT_FOUND for an unknown clone (DLE's
// CLI waits for that code after a destroy).
func (s *Server) getClone(c *gin.Context) {
	cl, err := s.clones.Get(c.Param("id"))
	if err != nil {
		s.writeCloneError(c, err)
		return
	}
	c.JSON(http.StatusOK, s.cloneViewOne(c.Request.Context(), cl))
}

// createClone is POST /clone: 201 with the clone, normally CREATING.
func (s *Server) createClone(c *gin.Context) {
	var req agentapi.CreateCloneRequest
	if !readJSON(c, &req) {
		return
	}
	if req.DB == nil {
		badRequest(c, "db.username", "db.username: is required: give db.username and db.password for the clone's database user")
		return
	}
	snapshotID := ""
	var pit *clone.PointInTime
	if req.Snapshot != nil {
		snapshotID = req.Snapshot.ID
		var ok bool
		if pit, ok = parsePointInTime(c, req.Snapshot.PointInTime, req.Snapshot.LSN, "snapshot."); !ok {
			return
		}
	}
	if pit != nil {
		// The archive chooses the snapshot; a point-in-time clone is on
		// no branch (its data is none of the branch's commits).
		cl, err := s.clones.Create(c.Request.Context(), clone.CreateRequest{
			ID: req.ID, SnapshotID: snapshotID, PointInTime: pit, ReadOnly: req.ReadOnly,
			Username: req.DB.Username, Password: req.DB.Password, Restricted: req.DB.Restricted, DBName: req.DB.DBName,
			Protected: req.Protected, ProtectionDurationMinutes: req.ProtectionDurationMinutes, ExtraConf: req.ExtraConf,
		})
		if err != nil {
			s.writeCloneError(c, err)
			return
		}
		s.watchCreation(cl.ID)
		c.JSON(http.StatusCreated, s.cloneViewOne(c.Request.Context(), cl))
		return
	}
	b, ok := s.branchService(c)
	if !ok {
		return
	}
	// As in DLE: snapshot.id wins and brings its branch; otherwise the
	// clone starts from the head of its branch (default main).
	branchName := req.Branch
	if snapshotID != "" {
		// A snapshot on the requested branch's chain (a new branch
		// points at its fork point) keeps the branch; otherwise the
		// snapshot brings its own.
		onBranch := false
		if branchName != "" && branch.ValidateName(branchName) == nil {
			ids, err := b.SnapshotIDs(c.Request.Context(), branchName)
			onBranch = err == nil && ids[snapshotID]
		}
		if !onBranch {
			branchName = b.BranchOf(snapshotID)
		}
	} else {
		if branchName == "" {
			branchName = branch.Default
		}
		if err := branch.ValidateName(branchName); err != nil {
			badRequest(c, "branch", "branch: "+err.Error())
			return
		}
		head, err := b.Head(c.Request.Context(), branchName)
		if err != nil {
			s.writeBranchError(c, err, false)
			return
		}
		snapshotID = head
	}
	cl, err := s.clones.Create(c.Request.Context(), clone.CreateRequest{
		ID:                        req.ID,
		SnapshotID:                snapshotID,
		Branch:                    branchName,
		Username:                  req.DB.Username,
		Password:                  req.DB.Password,
		Restricted:                req.DB.Restricted,
		DBName:                    req.DB.DBName,
		Protected:                 req.Protected,
		ProtectionDurationMinutes: req.ProtectionDurationMinutes,
		ExtraConf:                 req.ExtraConf,
		Labels:                    req.Labels,
		ReadOnly:                  req.ReadOnly,
	})
	if err != nil {
		s.writeCloneError(c, err)
		return
	}
	s.watchCreation(cl.ID)
	c.JSON(http.StatusCreated, s.cloneViewOne(c.Request.Context(), cl))
}

// watchCreation feeds the creation-time histogram once the clone is ready.
func (s *Server) watchCreation(id string) {
	s.bgWG.Go(func() {
		cl, err := s.clones.Wait(s.bg, id)
		if err == nil && cl.Status == clone.StatusOK {
			s.metrics.cloneCreation.Observe(cl.CloningTime.Seconds())
		}
	})
}

// updateClone is PATCH /clone/{id}: protection as in DLE (protected is a
// plain bool there: a body without it unprotects), and labels. A body
// with labels and without protected changes only the labels.
func (s *Server) updateClone(c *gin.Context) {
	var req struct {
		Protected                 *bool              `json:"protected"`
		ProtectionDurationMinutes *uint              `json:"protectionDurationMinutes"`
		Labels                    *map[string]string `json:"labels"`
	}
	if !readJSON(c, &req) {
		return
	}
	id := c.Param("id")
	var cl clone.Clone
	var err error
	if req.Labels != nil {
		// First: invalid labels refuse the whole request, protection
		// unchanged.
		cl, err = s.clones.SetLabels(id, *req.Labels)
	}
	if err == nil && (req.Protected != nil || req.Labels == nil) {
		cl, err = s.clones.UpdateProtection(id, req.Protected != nil && *req.Protected, req.ProtectionDurationMinutes)
	}
	if err != nil {
		s.writeCloneError(c, err)
		return
	}
	c.JSON(http.StatusOK, s.cloneViewOne(c.Request.Context(), cl))
}

// resetClone is POST /clone/{id}/reset: 200 with an empty body once the
// clone is RESETTING.
func (s *Server) resetClone(c *gin.Context) {
	var req agentapi.ResetCloneRequest
	if !readJSON(c, &req) {
		return
	}
	if req.Latest && req.SnapshotID != "" {
		badRequest(c, "snapshotID", "snapshotID: give either snapshotID or latest, not both")
		return
	}
	id := c.Param("id")
	cur, err := s.clones.Get(id)
	if err != nil {
		s.writeCloneError(c, err)
		return
	}
	pit, ok := parsePointInTime(c, req.PointInTime, req.LSN, "")
	if !ok {
		return
	}
	if pit != nil && (req.Latest || req.SnapshotID != "") {
		badRequest(c, "pointInTime", "pointInTime: give a point in time (pointInTime or lsn) alone, without snapshotID or latest")
		return
	}
	r := clone.ResetRequest{SnapshotID: req.SnapshotID, Latest: req.Latest, PointInTime: pit}
	if !req.Latest && req.SnapshotID == "" && pit == nil {
		// DLE: neither field means the clone's own snapshot (for a
		// point-in-time clone: its own target again).
		r.SnapshotID = cur.SnapshotID
		if cur.PointInTime != nil {
			r.SnapshotID, r.PointInTime = "", cur.PointInTime
		}
	}
	if _, err := s.clones.Reset(c.Request.Context(), id, r); err != nil {
		var ve *clone.ValidationError
		if errors.As(err, &ve) && ve.Field == "snapshot.id" {
			ve.Field = "snapshotID"
		}
		s.writeCloneError(c, err)
		return
	}
	c.Status(http.StatusOK)
}

// createReplicas is POST /clone/{id}/replicas: count hot-standby
// replicas streaming from the clone; 201 with them (CREATING).
func (s *Server) createReplicas(c *gin.Context) {
	var req agentapi.CreateReplicasRequest
	if !readJSON(c, &req) {
		return
	}
	reps, err := s.clones.CreateReplicas(c.Request.Context(), c.Param("id"), req.Count)
	if err != nil {
		s.writeCloneError(c, err)
		return
	}
	out := make([]agentapi.Clone, 0, len(reps))
	for _, r := range reps {
		s.watchCreation(r.ID)
		out = append(out, s.cloneViewOne(c.Request.Context(), r))
	}
	c.JSON(http.StatusCreated, out)
}

// parsePointInTime reads a point-in-time target (RFC 3339 time or LSN);
// nil when neither is given. A bad value is answered 400.
func parsePointInTime(c *gin.Context, at, lsn, prefix string) (*clone.PointInTime, bool) {
	if at == "" && lsn == "" {
		return nil, true
	}
	if at != "" && lsn != "" {
		badRequest(c, prefix+"lsn", prefix+"lsn: give pointInTime or lsn, not both")
		return nil, false
	}
	if lsn != "" {
		return &clone.PointInTime{LSN: lsn}, true
	}
	t, err := time.Parse(time.RFC3339Nano, at)
	if err != nil {
		badRequest(c, prefix+"pointInTime", fmt.Sprintf("%spointInTime: %q is not an RFC 3339 time (e.g. 2026-12-03T16:50:00.25Z)", prefix, at))
		return nil, false
	}
	return &clone.PointInTime{Time: t}, true
}

// destroyClone is DELETE /clone/{id}: 200 with an empty body once the
// clone is DELETING.
func (s *Server) destroyClone(c *gin.Context) {
	if err := s.clones.Destroy(c.Request.Context(), c.Param("id")); err != nil {
		s.writeCloneError(c, err)
		return
	}
	c.Status(http.StatusOK)
}

// waitGone waits until the clones are destroyed (or ctx ends).
func (s *Server) waitGone(ctx context.Context, ids []string) error {
	for _, id := range ids {
		cl, err := s.clones.Wait(ctx, id)
		if errors.Is(err, clone.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		return fmt.Errorf("clone %s was not destroyed (status %s: %s)", id, cl.Status, cl.StatusMessage)
	}
	return nil
}
