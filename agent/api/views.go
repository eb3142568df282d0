package api

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/sdk/agentapi"
)

// snapshotIndex is every pool's snapshots, read once per request.
type snapshotIndex map[string]storage.Snapshot

func (s *Server) snapshotIndex(ctx context.Context) snapshotIndex {
	idx := snapshotIndex{}
	for _, p := range s.pools {
		snaps, err := p.Snapshots(ctx)
		if err != nil {
			s.log.Warn("could not list snapshots", "pool", p.Name(), "err", err)
			continue
		}
		for _, sn := range snaps {
			if sn.Pool == "" {
				sn.Pool = p.Name()
			}
			idx[sn.ID] = sn
		}
	}
	return idx
}

// clonesBySnapshot maps snapshot IDs to the clones made from them, as the
// clone manager knows them (plus datasets the pool reports).
func clonesBySnapshot(clones []clone.Clone, snaps snapshotIndex) map[string][]string {
	out := map[string][]string{}
	seen := map[string]bool{}
	for _, c := range clones {
		out[c.SnapshotID] = append(out[c.SnapshotID], c.ID)
		seen[c.SnapshotID+"\x00"+c.ID] = true
		// A pool may say a known clone is made from another snapshot (on
		// ZFS a commit makes the clone a clone of the commit): the clone
		// manager's record wins.
		seen[c.ID] = true
	}
	for id, sn := range snaps {
		for _, name := range sn.Clones {
			if !seen[id+"\x00"+name] && !seen[name] {
				out[id] = append(out[id], name)
				seen[id+"\x00"+name] = true
			}
		}
	}
	for _, ids := range out {
		slices.Sort(ids)
	}
	return out
}

func (s *Server) snapshotView(sn storage.Snapshot, clones []string) agentapi.Snapshot {
	if clones == nil {
		clones = []string{}
	}
	meta := s.snaps.Get(sn.ID)
	out := agentapi.Snapshot{
		ID:           sn.ID,
		CreatedAt:    agentapi.NewLocalTime(sn.CreatedAt),
		DataStateAt:  agentapi.NewLocalTime(sn.DataStateAt),
		PhysicalSize: sn.PhysicalSize,
		LogicalSize:  sn.LogicalSize,
		Pool:         sn.Pool,
		NumClones:    len(clones),
		Clones:       clones,
		Message:      sn.Message,
		DeleteAt:     agentapi.NewLocalTime(meta.DeleteAt),
		Labels:       meta.Labels,
	}
	if s.branches != nil {
		out.Branch = s.branches.BranchOf(sn.ID)
	}
	if meta.ProtectedAt(s.now()) {
		out.Protected = true
		out.ProtectedTill = agentapi.NewLocalTime(meta.ProtectedTill)
	}
	return out
}

// cloneView renders a clone. snaps and bySnap may be nil (then the
// snapshot is shown by ID and pool only).
func (s *Server) cloneView(c clone.Clone, snaps snapshotIndex, bySnap map[string][]string) agentapi.Clone {
	snap := agentapi.Snapshot{ID: c.SnapshotID, Pool: c.Pool, Clones: []string{}}
	if sn, ok := snaps[c.SnapshotID]; ok {
		snap = s.snapshotView(sn, bySnap[c.SnapshotID])
	}
	out := agentapi.Clone{
		ID:            c.ID,
		Snapshot:      &snap,
		Branch:        c.Branch,
		Protected:     c.Protected,
		ProtectedTill: agentapi.NewLocalTime(c.ProtectedTill),
		DeleteAt:      agentapi.NewLocalTime(c.DeleteAt),
		CreatedAt:     agentapi.NewLocalTime(c.CreatedAt),
		Status:        agentapi.Status{Code: string(c.Status), Message: c.StatusMessage},
		DB: agentapi.Database{
			Username:   c.Username,
			DBName:     c.DBName,
			Restricted: c.Restricted,
		},
		Metadata: agentapi.CloneMetadata{
			CloneDiffSize:                  c.DiffSize,
			LogicalSize:                    c.LogicalSize,
			CloningTime:                    c.CloningTime.Seconds(),
			MaxIdleMinutes:                 c.MaxIdleMinutes,
			ProtectionLeaseDurationMinutes: s.cfg.Cloning.ProtectionLeaseDurationMinutes,
			ProtectionMaxDurationMinutes:   s.cfg.Cloning.ProtectionMaxDurationMinutes,
		},
		Pool:       c.Pool,
		Labels:     c.Labels,
		Hibernated: c.Hibernated,
		ReadOnly:   c.ReadOnly,
		ReplicaOf:  c.ReplicaOf,
		Replicas:   c.Replicas,
	}
	if p := c.PointInTime; p != nil {
		out.PointInTime = &agentapi.ClonePointInTime{LSN: p.LSN}
		if !p.Time.IsZero() {
			out.PointInTime.Time = p.Time.UTC().Format(time.RFC3339Nano)
		}
	}
	// A refresh waiting for this clone's pool that the busy-pool policy
	// will force: the owner sees when, in the status DLE clients show.
	if f, ok := s.retrieval.PendingForcedRefresh(); ok && f.Pool == c.Pool {
		out.RefreshForcedAt = agentapi.NewLocalTime(f.At)
		out.Status.Message = strings.TrimSpace(out.Status.Message + " " + f.Message())
	}
	// DLE fills the address only once the clone accepts connections.
	if c.Status == clone.StatusOK {
		out.DB.Host = c.Host
		out.DB.Port = strconv.Itoa(c.Port)
		out.DB.ConnStr = c.ConnString()
	}
	return out
}

// cloneViewOne renders one clone, reading only its snapshot.
func (s *Server) cloneViewOne(ctx context.Context, c clone.Clone) agentapi.Clone {
	snaps := snapshotIndex{}
	if p, ok := s.clones.Pool(c.Pool); ok {
		if sn, err := p.GetSnapshot(ctx, c.SnapshotID); err == nil {
			if sn.Pool == "" {
				sn.Pool = p.Name()
			}
			snaps[sn.ID] = sn
		}
	}
	return s.cloneView(c, snaps, clonesBySnapshot(s.clones.List(), snaps))
}
