package api

import (
	"context"
	"fmt"
	"net/http"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/agent/diff"
)

// inspect reads one database state through fn's session.
func inspectInto(dst **diff.State) func(context.Context, *pgx.Conn) error {
	return func(ctx context.Context, conn *pgx.Conn) error {
		st, err := diff.Inspect(ctx, conn)
		*dst = st
		return err
	}
}

// diffSnapshots is GET /snapshots/diff?from=A&to=B&db=D (Thinlab): the
// tables that differ between two snapshots and the DDL from A's schema to
// B's. Each snapshot is read through a short-lived clone of it.
func (s *Server) diffSnapshots(c *gin.Context) {
	from, to := c.Query("from"), c.Query("to")
	db := c.DefaultQuery("db", s.cfg.Provision.CloneDefaults.DBName)
	for field, id := range map[string]string{"from": from, "to": to} {
		if id == "" {
			badRequest(c, field, field+": give a snapshot ID (list them with GET /snapshots)")
			return
		}
	}
	if _, _, ok := s.findSnapshot(c, from); !ok {
		return
	}
	if _, _, ok := s.findSnapshot(c, to); !ok {
		return
	}
	ctx := c.Request.Context()
	var a, b *diff.State
	if err := s.clones.InspectSnapshot(ctx, from, db, inspectInto(&a)); err != nil {
		s.writeCloneError(c, fmt.Errorf("inspect snapshot %s: %w", from, err))
		return
	}
	if err := s.clones.InspectSnapshot(ctx, to, db, inspectInto(&b)); err != nil {
		s.writeCloneError(c, fmt.Errorf("inspect snapshot %s: %w", to, err))
		return
	}
	out := diff.Compare(a, b)
	out.From, out.To, out.Database = from, to, db
	c.JSON(http.StatusOK, out)
}

// diffClone is GET /clone/{id}/diff?db=D (Thinlab): what the clone changed
// since its snapshot.
func (s *Server) diffClone(c *gin.Context) {
	id := c.Param("id")
	cl, err := s.clones.Get(id)
	if err != nil {
		s.writeCloneError(c, err)
		return
	}
	db := c.DefaultQuery("db", cl.DBName)
	ctx := c.Request.Context()
	var a, b *diff.State
	// The live clone first: a wrong db or a clone that is not OK fails
	// before a clone of the snapshot is made.
	if err := s.clones.InspectClone(ctx, id, db, inspectInto(&b)); err != nil {
		s.writeCloneError(c, err)
		return
	}
	if err := s.clones.InspectSnapshot(ctx, cl.SnapshotID, db, inspectInto(&a)); err != nil {
		s.writeCloneError(c, fmt.Errorf("inspect snapshot %s: %w", cl.SnapshotID, err))
		return
	}
	out := diff.Compare(a, b)
	out.From, out.To, out.Database = cl.SnapshotID, "clone "+id, db
	c.JSON(http.StatusOK, out)
}
