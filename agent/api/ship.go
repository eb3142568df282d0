package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/agent/shipstore"
	"github.com/thinlab/thinlab/agent/snapshot"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/ship"
	"github.com/thinlab/thinlab/sdk/agentapi"
)

// shipTimeout bounds one transfer between agents.
const shipTimeout = 6 * time.Hour

// longTransfer lifts the server's read and write timeouts (which bound
// slow clients of ordinary requests) to shipTimeout for this request: a
// snapshot stream takes as long as its size needs.
func longTransfer(c *gin.Context) {
	rc := http.NewResponseController(c.Writer)
	deadline := time.Now().Add(shipTimeout)
	_ = rc.SetReadDeadline(deadline)  // unsupported writer (tests' recorders): the server's default stays
	_ = rc.SetWriteDeadline(deadline) // likewise
}

// exportLabels are the labels a snapshot is shipped with: the pool's,
// overlaid by those set through the API.
func (s *Server) exportLabels(sn storage.Snapshot) map[string]string {
	out := map[string]string{}
	maps.Copy(out, sn.Labels)
	maps.Copy(out, s.snaps.Get(sn.ID).Labels)
	return out
}

// shipSource resolves the id and base of an export or ship to the pool
// and snapshot, answering 4xx itself when they are wrong.
func (s *Server) shipSource(c *gin.Context, id, base string) (storage.Pool, storage.Snapshot, bool) {
	if id == "" {
		badRequest(c, "id", "id is empty: name the snapshot to ship (GET /snapshots lists them)")
		return nil, storage.Snapshot{}, false
	}
	p, sn, ok := s.findSnapshot(c, id)
	if !ok {
		return nil, storage.Snapshot{}, false
	}
	if _, ok := p.(storage.Shipper); !ok {
		badRequest(c, "id", fmt.Sprintf("pool %q is %s: snapshots are shipped from btrfs and reflink pools only", p.Name(), p.Mode()))
		return nil, storage.Snapshot{}, false
	}
	if base != "" {
		bp, _, err := storage.ParseSnapshotID(base)
		if err != nil || bp != p.Name() {
			badRequest(c, "base", fmt.Sprintf("base %q must be a snapshot of the same pool %q (<pool>@snapshot_<YYYYMMDDhhmmss>)", base, p.Name()))
			return nil, storage.Snapshot{}, false
		}
		if _, err := p.GetSnapshot(c.Request.Context(), base); err != nil {
			notFound(c, fmt.Sprintf("base snapshot %q not found (list snapshots with GET /snapshots)", base))
			return nil, storage.Snapshot{}, false
		}
	}
	return p, sn, true
}

// exportSnapshot is GET /snapshots/export?id=&base= (Thinlab): the
// snapshot as a stream (agent/storage/ship) for POST /snapshots/import.
func (s *Server) exportSnapshot(c *gin.Context) {
	longTransfer(c)
	id, base := c.Query("id"), c.Query("base")
	p, sn, ok := s.shipSource(c, id, base)
	if !ok {
		return
	}
	c.Header("Content-Type", "application/octet-stream")
	h, err := ship.Send(c.Request.Context(), p, sn.ID, base, s.exportLabels(sn), c.Writer)
	if err != nil {
		if !c.Writer.Written() {
			s.internalError(c, err)
			return
		}
		// The status is sent already; the receiver sees a stream
		// without its trailer and refuses it.
		s.log.Error("snapshot export interrupted", "snapshot", sn.ID, "request_id", requestIDOf(c), "err", err)
		return
	}
	s.log.Info("snapshot exported", "snapshot", sn.ID, "base", h.Base)
}

// importSnapshot is POST /snapshots/import?pool= (Thinlab): the body is
// a stream of GET /snapshots/export; the snapshot appears only when the
// whole stream arrived intact.
func (s *Server) importSnapshot(c *gin.Context) {
	longTransfer(c)
	p, ok := s.importPool(c, c.Query("pool"))
	if !ok {
		return
	}
	s.receive(c, c.Request.Context(), p, c.Request.Body)
}

// importPool is the pool named (the first when empty) if it can import.
func (s *Server) importPool(c *gin.Context, name string) (storage.Pool, bool) {
	p := s.pools[0]
	if name != "" {
		var ok bool
		if p, ok = s.clones.Pool(name); !ok {
			badRequest(c, "pool", fmt.Sprintf("pool %q not found: use a pool name from GET /status", name))
			return nil, false
		}
	}
	if _, ok := p.(storage.Shipper); !ok {
		badRequest(c, "pool", fmt.Sprintf("pool %q is %s: snapshots are imported into btrfs and reflink pools only", p.Name(), p.Mode()))
		return nil, false
	}
	return p, true
}

// receive makes the snapshot of stream r in p and answers 201 with it.
func (s *Server) receive(c *gin.Context, ctx context.Context, p storage.Pool, r io.Reader) { //nolint:revive // gin's context first, as in every handler
	sn, err := ship.Receive(ctx, p, r)
	switch {
	case errors.Is(err, storage.ErrExists):
		conflict(c, fmt.Sprintf("pool %q already has this snapshot: %v", p.Name(), err))
		return
	case errors.Is(err, storage.ErrNotFound):
		conflict(c, err.Error())
		return
	case errors.Is(err, ship.ErrBadStream), errors.Is(err, ship.ErrHostileEntry), errors.Is(err, ship.ErrNotShippable), errors.Is(err, storage.ErrInvalidName):
		s.log.Warn("snapshot import refused", "pool", p.Name(), "request_id", requestIDOf(c), "err", err)
		badRequest(c, "body", err.Error())
		return
	case err != nil:
		s.internalError(c, err)
		return
	}
	if len(sn.Labels) > 0 {
		if err := s.snaps.Set(sn.ID, snapshot.Meta{Labels: sn.Labels}); err != nil {
			s.log.Error("labels of imported snapshot not kept", "snapshot", sn.ID, "err", err)
		}
	}
	s.log.Info("snapshot imported", "snapshot", sn.ID)
	s.events.Emit(events.Event{Kind: events.SnapshotCreated, Pool: p.Name(), Snapshot: sn.ID, Message: sn.Message})
	c.JSON(http.StatusCreated, s.snapshotView(sn, nil))
}

// shipSnapshot is POST /snapshots/ship (Thinlab): export a snapshot
// straight into another agent's POST /snapshots/import, or into the
// configured object storage (shipping.s3).
func (s *Server) shipSnapshot(c *gin.Context) {
	longTransfer(c)
	var req agentapi.ShipRequest
	if !readJSON(c, &req) {
		return
	}
	if (req.To == nil) == (req.S3 == nil) {
		badRequest(c, "to", "give exactly one of to (another agent: url, token, pool) and s3 (a key in shipping.s3)")
		return
	}
	var u *url.URL
	var store *shipstore.Store
	if req.To != nil {
		var err error
		u, err = url.Parse(req.To.URL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			badRequest(c, "to.url", fmt.Sprintf("to.url %q: give the receiving agent's API URL (https://host:port)", req.To.URL))
			return
		}
		if req.To.Token == "" {
			badRequest(c, "to.token", "to.token is empty: give the receiving agent's verification token")
			return
		}
	} else {
		if err := shipstore.CheckKey(req.S3.Key); err != nil {
			badRequest(c, "s3.key", err.Error())
			return
		}
		var ok bool
		if store, ok = s.shipStore(c); !ok {
			return
		}
	}
	p, sn, ok := s.shipSource(c, req.ID, req.Base)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), shipTimeout)
	defer cancel()
	pr, pw := io.Pipe()
	sent := make(chan ship.Header, 1)
	go func() {
		h, err := ship.Send(ctx, p, sn.ID, req.Base, s.exportLabels(sn), pw)
		sent <- h
		_ = pw.CloseWithError(err) // err nil: a clean end of the stream
	}()

	if store != nil {
		n, err := store.Put(ctx, req.S3.Key, pr)
		_ = pr.CloseWithError(errors.New("upload done")) // unblocks the sender if the upload stopped early
		h := <-sent
		if err != nil {
			s.log.Error("snapshot export to S3 failed", "snapshot", sn.ID, "key", req.S3.Key, "request_id", requestIDOf(c), "err", err)
			writeError(c, http.StatusBadGateway, agentapi.CodeInternal, "the export to shipping.s3 failed (nothing was stored), request id "+requestIDOf(c), "s3")
			return
		}
		s.log.Info("snapshot exported to S3", "snapshot", sn.ID, "base", h.Base, "key", req.S3.Key, "bytes", n)
		c.JSON(http.StatusOK, agentapi.ShipResult{Base: h.Base, Key: req.S3.Key, Bytes: n})
		return
	}

	remote := &agentapi.Client{BaseURL: req.To.URL, Token: req.To.Token}
	got, err := remote.ImportSnapshot(ctx, req.To.Pool, pr)
	_ = pr.CloseWithError(errors.New("receiver done")) // unblocks the sender if the receiver stopped early
	h := <-sent
	if err != nil {
		var apiErr *agentapi.APIError
		if errors.As(err, &apiErr) && apiErr.StatusCode < 500 {
			writeError(c, http.StatusBadGateway, agentapi.CodeBadRequest, "the receiving agent refused the snapshot: "+apiErr.Message, "to")
			return
		}
		s.log.Error("snapshot ship failed", "snapshot", sn.ID, "to", u.Host, "request_id", requestIDOf(c), "err", err)
		writeError(c, http.StatusBadGateway, agentapi.CodeInternal, "shipping to the receiving agent failed, request id "+requestIDOf(c), "to")
		return
	}
	s.log.Info("snapshot shipped", "snapshot", sn.ID, "base", h.Base, "to", u.Host, "as", got.ID)
	c.JSON(http.StatusOK, agentapi.ShipResult{Snapshot: got, Base: h.Base})
}

// shipStore opens shipping.s3, answering 400 when it is not configured.
func (s *Server) shipStore(c *gin.Context) (*shipstore.Store, bool) {
	if s.cfg.Shipping.S3.Endpoint == "" {
		badRequest(c, "s3", "shipping.s3 is not configured on this agent: set shipping.s3 (endpoint, bucket, credentials' environment variables) in its config")
		return nil, false
	}
	st, err := shipstore.New(s.cfg.Shipping.S3)
	if err != nil {
		s.internalError(c, err)
		return nil, false
	}
	return st, true
}

// fetchSnapshot is POST /snapshots/fetch (Thinlab): import a stream that
// POST /snapshots/ship stored in shipping.s3.
func (s *Server) fetchSnapshot(c *gin.Context) {
	longTransfer(c)
	var req agentapi.FetchRequest
	if !readJSON(c, &req) {
		return
	}
	if err := shipstore.CheckKey(req.S3.Key); err != nil {
		badRequest(c, "s3.key", err.Error())
		return
	}
	p, ok := s.importPool(c, req.Pool)
	if !ok {
		return
	}
	store, ok := s.shipStore(c)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), shipTimeout)
	defer cancel()
	body, err := store.Get(ctx, req.S3.Key)
	if errors.Is(err, shipstore.ErrNotFound) {
		notFound(c, fmt.Sprintf("s3.key %q: no such object in shipping.s3", req.S3.Key))
		return
	}
	if err != nil {
		s.internalError(c, err)
		return
	}
	defer func() { _ = body.Close() }()
	s.receive(c, ctx, p, body)
}
