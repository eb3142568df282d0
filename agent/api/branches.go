package api

import (
	"errors"
	"net/http"
	"slices"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/agent/branch"
	"github.com/thinlab/thinlab/sdk/agentapi"
)

// forwardedUserHeader is set by a trusted proxy (DLE's Platform) together
// with the shared token; it names who commits.
const forwardedUserHeader = "X-Forwarded-User-Email"

// branchService answers 500 (logged) when the branch state could not be
// loaded at start.
func (s *Server) branchService(c *gin.Context) (*branch.Service, bool) {
	if s.branches == nil {
		s.internalError(c, s.branchErr)
		return nil, false
	}
	return s.branches, true
}

// writeBranchError answers the branch service's client errors with 400,
// as DLE does (an unknown snapshot on GET /branch/snapshot/{id} is 404),
// and anything else with 500.
func (s *Server) writeBranchError(c *gin.Context, err error, notFoundIs404 bool) {
	if be, ok := errors.AsType[*branch.Error](err); ok {
		if notFoundIs404 && errors.Is(err, branch.ErrNotFound) {
			notFound(c, be.Message)
			return
		}
		badRequest(c, be.Field, be.Message)
		return
	}
	s.internalError(c, err)
}

// listBranches is GET /branches.
func (s *Server) listBranches(c *gin.Context) {
	b, ok := s.branchService(c)
	if !ok {
		return
	}
	if len(s.pools) == 0 {
		badRequest(c, "", "no available pools")
		return
	}
	sel, ok := labelSelector(c)
	if !ok {
		return
	}
	out, err := b.List(c.Request.Context())
	if err != nil {
		s.writeBranchError(c, err, false)
		return
	}
	out = slices.DeleteFunc(out, func(v agentapi.BranchView) bool { return !sel.Matches(v.Labels) })
	c.JSON(http.StatusOK, out)
}

// createBranch is POST /branch: 200 {"name"} (not 201, as in DLE).
func (s *Server) createBranch(c *gin.Context) {
	b, ok := s.branchService(c)
	if !ok {
		return
	}
	var req agentapi.CreateBranchRequest
	if !readJSON(c, &req) {
		return
	}
	if err := b.Create(c.Request.Context(), req.BranchName, req.BaseBranch, req.SnapshotID); err != nil {
		s.writeBranchError(c, err, false)
		return
	}
	c.JSON(http.StatusOK, agentapi.BranchName{Name: req.BranchName})
}

// commitClone is POST /branch/snapshot: a commit of the clone onto its
// branch; 200 {"snapshotID"}.
func (s *Server) commitClone(c *gin.Context) {
	b, ok := s.branchService(c)
	if !ok {
		return
	}
	var req agentapi.CloneSnapshotRequest
	if !readJSON(c, &req) {
		return
	}
	res, err := b.Commit(c.Request.Context(), req.CloneID, req.Message, c.GetHeader(forwardedUserHeader))
	if err != nil {
		s.writeBranchError(c, err, false)
		return
	}
	c.JSON(http.StatusOK, agentapi.CommitResponse{SnapshotID: res.Snapshot.ID})
}

// snapshotClone is POST /snapshot/clone: a snapshot of the clone that
// moves no branch; 200 with the Snapshot.
func (s *Server) snapshotClone(c *gin.Context) {
	b, ok := s.branchService(c)
	if !ok {
		return
	}
	var req agentapi.CloneSnapshotRequest
	if !readJSON(c, &req) {
		return
	}
	res, err := b.SnapshotClone(c.Request.Context(), req.CloneID, req.Message, c.GetHeader(forwardedUserHeader))
	if err != nil {
		s.writeBranchError(c, err, false)
		return
	}
	sn := res.Snapshot
	c.JSON(http.StatusOK, s.snapshotView(sn, clonesBySnapshot(s.clones.List(), snapshotIndex{sn.ID: sn})[sn.ID]))
}

// getBranchSnapshot is GET /branch/snapshot/{id}: the snapshot in the
// branch graph; 404 for an unknown one.
func (s *Server) getBranchSnapshot(c *gin.Context) {
	b, ok := s.branchService(c)
	if !ok {
		return
	}
	d, err := b.Snapshot(c.Request.Context(), snapshotParam(c))
	if err != nil {
		s.writeBranchError(c, err, true)
		return
	}
	c.JSON(http.StatusOK, d)
}

// branchLog is GET /branch/{name}/log: the head and its parents.
func (s *Server) branchLog(c *gin.Context) {
	b, ok := s.branchService(c)
	if !ok {
		return
	}
	out, err := b.Log(c.Request.Context(), c.Param("name"))
	if err != nil {
		s.writeBranchError(c, err, false)
		return
	}
	c.JSON(http.StatusOK, out)
}

// updateBranch is PATCH /branch/{name}: protect or unprotect a branch
// (an omitted duration means no expiry, capped by the maximum, as for
// snapshots). The answer has only name and protection, as in DLE.
func (s *Server) updateBranch(c *gin.Context) {
	b, ok := s.branchService(c)
	if !ok {
		return
	}
	var req agentapi.PatchSnapshotRequest
	if !readJSON(c, &req) {
		return
	}
	if req.DeleteAt != nil {
		badRequest(c, "deleteAt", "deleteAt: scheduled deletion of branches is not supported by this agent; delete the branch with DELETE /branch/{name}")
		return
	}
	if req.Protected == nil && req.Labels == nil {
		badRequest(c, "protected", "nothing to update: give protected (with an optional protectionDurationMinutes) or labels")
		return
	}
	var v agentapi.BranchView
	var err error
	if req.Labels != nil {
		v, err = b.SetLabels(c.Request.Context(), c.Param("name"), *req.Labels)
	}
	if err == nil && req.Protected != nil {
		v, err = b.Protect(c.Request.Context(), c.Param("name"), *req.Protected, s.snapshotProtectionTill(s.now(), req.ProtectionDurationMinutes))
		v.Labels = labelsOf(req.Labels, v.Labels)
	}
	if err != nil {
		s.writeBranchError(c, err, false)
		return
	}
	c.JSON(http.StatusOK, v)
}

// deleteBranch is DELETE /branch/{name}: 200 Response "Deleted branch".
func (s *Server) deleteBranch(c *gin.Context) {
	b, ok := s.branchService(c)
	if !ok {
		return
	}
	if err := b.Delete(c.Request.Context(), c.Param("name")); err != nil {
		s.writeBranchError(c, err, false)
		return
	}
	c.JSON(http.StatusOK, agentapi.Response{Status: "OK", Message: "Deleted branch"})
}

// labelsOf is the labels a PATCH just set, else those the answer had.
func labelsOf(set *map[string]string, had map[string]string) map[string]string {
	if set != nil {
		return *set
	}
	return had
}
