package api

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/agent/retrieval"
	"github.com/thinlab/thinlab/sdk/agentapi"
)

// status is GET /status: the engine, pools, clones and retrieval.
func (s *Server) status(c *gin.Context) {
	ctx := c.Request.Context()
	clones := s.clones.List()
	snaps := s.snapshotIndex(ctx)
	bySnap := clonesBySnapshot(clones, snaps)
	ret := s.retrievingView()

	out := agentapi.InstanceStatus{
		Status: &agentapi.Status{Code: agentapi.InstanceOK, Message: "Instance is ready"},
		Engine: agentapi.Engine{
			Version:    s.version,
			Edition:    Edition,
			InstanceID: s.instance,
			StartedAt:  agentapi.NewLocalTime(s.startedAt),
			// The configuration is the agent's file; /admin/config is
			// read-only.
			DisableConfigModification: &disableConfigModification,
		},
		Pools: make([]agentapi.PoolEntry, 0, len(s.pools)),
		Cloning: agentapi.Cloning{
			ExpectedCloningTime:            s.clones.ExpectedCloningTime().Seconds(),
			NumClones:                      len(clones),
			Clones:                         make([]agentapi.Clone, 0, len(clones)),
			ProtectionLeaseDurationMinutes: s.cfg.Cloning.ProtectionLeaseDurationMinutes,
			ProtectionMaxDurationMinutes:   s.cfg.Cloning.ProtectionMaxDurationMinutes,
		},
		Retrieving:      ret,
		Provisioner:     agentapi.Provisioner{ContainerConfig: map[string]string{}},
		Synchronization: synchronizationView(ret.Lag),
	}
	if ret.Status == agentapi.RetrievalFailed {
		out.Status = &agentapi.Status{Code: agentapi.InstanceWarning, Message: "Subsystems that need attention: retrieving"}
	}
	for _, cl := range clones {
		out.Cloning.Clones = append(out.Cloning.Clones, s.cloneView(cl, snaps, bySnap))
		if cl.Hibernated {
			out.Cloning.NumHibernated++
		}
	}
	if w, ok := s.clones.(warmReporter); ok {
		if st := w.Warm(); st.Target > 0 || st.Ready > 0 || st.Starting > 0 {
			out.Cloning.Warm = &agentapi.WarmClones{Target: st.Target, Ready: st.Ready, Starting: st.Starting, SnapshotID: st.SnapshotID,
				MemoryBytes: st.PSSBytes, MaxMemoryBytes: st.MaxBytes, Taken: st.Taken}
		}
	}
	for _, p := range s.pools {
		entry := agentapi.PoolEntry{
			Name:      p.Name(),
			Mode:      p.Mode(),
			Status:    agentapi.PoolActive,
			CloneList: []string{},
		}
		var newest *agentapi.LocalTime
		for _, sn := range snaps {
			// Commits of branches are not the pool's data state.
			if sn.Pool == p.Name() && !sn.OfClone() && (newest == nil || sn.DataStateAt.After(newest.Time)) {
				newest = agentapi.NewLocalTime(sn.DataStateAt)
			}
		}
		entry.DataStateAt = newest
		if newest == nil {
			entry.Status = agentapi.PoolEmpty
			entry.DataStateAt = &agentapi.LocalTime{}
		}
		if ret.Job != nil && ret.Job.Pool == p.Name() {
			entry.Status = agentapi.PoolRefreshing
		}
		for _, cl := range clones {
			if cl.Pool == p.Name() {
				entry.CloneList = append(entry.CloneList, cl.ID)
			}
		}
		u, err := p.Usage(ctx)
		if err != nil {
			s.log.Warn("could not read pool usage", "pool", p.Name(), "err", err)
		}
		entry.FileSystem = agentapi.FileSystem{
			Mode:            p.Mode(),
			Size:            u.Size,
			Free:            u.Free,
			Used:            u.Used,
			DataSize:        u.DataSize,
			UsedBySnapshots: u.UsedBySnapshots,
			UsedByClones:    u.UsedByClones,
			CompressRatio:   u.CompressRatio,
		}
		if entry.FileSystem.CompressRatio == 0 {
			entry.FileSystem.CompressRatio = 1
		}
		out.Pools = append(out.Pools, entry)
	}
	c.JSON(http.StatusOK, out)
}

// synchronizationView is DLE's replica section: the physical standby's or
// the logical replication subscription's lag (whole seconds), "Not
// available" for modes that are not continuously updated.
func synchronizationView(l *agentapi.RetrievalLag) *agentapi.Synchronization {
	if l == nil {
		return &agentapi.Synchronization{Status: agentapi.Status{Code: "Not available"}}
	}
	st := agentapi.Status{Code: "OK", Message: l.Kind + " replicating"}
	if !l.SourceReachable {
		st = agentapi.Status{Code: "WARNING", Message: "the source cannot be reached"}
	}
	return &agentapi.Synchronization{Status: st, ReplicationLag: int(l.Seconds)}
}

// retrievingView is the retrieval state in DLE's shape.
func (s *Server) retrievingView() agentapi.Retrieving {
	out := agentapi.Retrieving{
		Mode:   agentapi.RetrievalModeUnknown,
		Status: agentapi.RetrievalInactive,
		Alerts: map[string]agentapi.Alert{},
	}
	if s.retrieval == nil {
		return out
	}
	st := s.retrieval.Status()
	out.Mode = st.Mode
	out.Status = st.Status
	out.LastRefresh = agentapi.NewLocalTime(st.LastRefresh)
	out.NextRefresh = agentapi.NewLocalTime(st.NextRefresh)
	for k, a := range st.Alerts {
		out.Alerts[k] = agentapi.Alert{Level: a.Level, Message: a.Message, LastSeen: a.LastSeen, Count: a.Count}
	}
	if j := st.Job; j != nil {
		now := time.Now()
		p := j.Progress
		rj := &agentapi.RetrievalJob{Mode: j.Mode, Pool: j.Pool, StartedAt: agentapi.NewLocalTime(j.StartedAt),
			Phase: p.Phase, Unit: p.Unit, Done: p.Done, Total: p.Total, RatePerSecond: p.Rate(now)}
		if rj.RatePerSecond > 0 && p.Total > p.Done {
			rj.ETASeconds = float64(p.Total-p.Done) / rj.RatePerSecond
		}
		out.Job = rj
	}
	if l := st.Lag; l != nil {
		out.Lag = &agentapi.RetrievalLag{Kind: l.Kind, Seconds: l.Seconds, Bytes: l.Bytes, CheckedAt: agentapi.NewLocalTime(l.CheckedAt), SourceReachable: l.SourceReachable}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if pool, w, ok := s.retrieval.PointInTimeWindow(ctx); ok {
		pw := &agentapi.PointInTimeWindow{Available: w.Available, Reason: w.Reason, Pool: pool, FromLSN: w.FromLSN, ToLSN: w.ToLSN, ToSource: w.Source, Snapshots: len(w.Bases)}
		if !w.From.IsZero() {
			pw.From = w.From.UTC().Format(time.RFC3339Nano)
		}
		if !w.To.IsZero() {
			pw.To = w.To.UTC().Format(time.RFC3339Nano)
		}
		out.PointInTime = pw
	}
	return out
}

// getRetrieval is GET /instance/retrieval.
func (s *Server) getRetrieval(c *gin.Context) {
	c.JSON(http.StatusOK, s.retrievingView())
}

// fullRefresh is POST /full-refresh: the refresh runs in the background.
func (s *Server) fullRefresh(c *gin.Context) {
	if s.retrieval == nil {
		badRequest(c, "retrieval.mode", retrieval.ErrNotConfigured.Error())
		return
	}
	err := s.retrieval.FullRefresh()
	switch {
	case errors.Is(err, retrieval.ErrNotConfigured):
		badRequest(c, "retrieval.mode", err.Error())
	case errors.Is(err, retrieval.ErrRefreshRunning):
		conflict(c, err.Error()+": wait for it to finish (GET /instance/retrieval)")
	case err != nil:
		s.internalError(c, err)
	default:
		s.log.Info("full refresh started by API")
		c.JSON(http.StatusOK, agentapi.Response{Status: "OK", Message: "Full refresh started"})
	}
}

// disableConfigModification is what /status reports (a pointer field):
// POST /admin/config is refused.
var disableConfigModification = true
