package lvm

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/thinlab/thinlab/agent/storage"
)

// lvsFields are the columns read from `lvs --reportformat json --units b
// --nosuffix`. data_percent is empty for inactive thin LVs.
var lvsFields = []string{"lv_name", "lv_attr", "lv_tags", "origin", "pool_lv", "data_percent", "metadata_percent", "lv_size", "lv_active", "lv_dm_path"}

// lvRow is one LV as lvs reports it (all strings, as in lvs' JSON).
type lvRow struct {
	Name        string `json:"lv_name"`
	Attr        string `json:"lv_attr"`
	Tags        string `json:"lv_tags"`
	Origin      string `json:"origin"`
	PoolLV      string `json:"pool_lv"`
	DataPercent string `json:"data_percent"`
	MetaPercent string `json:"metadata_percent"`
	Size        string `json:"lv_size"`
	Active      string `json:"lv_active"`
	DMPath      string `json:"lv_dm_path"`
}

// parseLVs reads lvs' JSON report. lvs may print several report objects
// (and, with json_std, a "log" section); every "lv" list is collected.
func parseLVs(out []byte) ([]lvRow, error) {
	var doc struct {
		Report []struct {
			LV []lvRow `json:"lv"`
		} `json:"report"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, fmt.Errorf("parse lvs JSON report: %w", err)
	}
	var rows []lvRow
	for _, r := range doc.Report {
		rows = append(rows, r.LV...)
	}
	return rows, nil
}

func (r lvRow) isThinPool() bool { return strings.HasPrefix(r.Attr, "t") }

func (r lvRow) active() bool { return r.Active == "active" || (len(r.Attr) > 4 && r.Attr[4] == 'a') }

func (r lvRow) sizeBytes() uint64 {
	n, _ := strconv.ParseUint(r.Size, 10, 64)
	return n
}

// mappedBytes is the space the thin LV (or pool) has allocated:
// data_percent of its size. Zero when unknown (inactive LV).
func (r lvRow) mappedBytes() uint64 {
	pct, err := strconv.ParseFloat(r.DataPercent, 64)
	if err != nil || pct <= 0 {
		return 0
	}
	return uint64(float64(r.sizeBytes()) * pct / 100)
}

func percent(s string) float64 {
	f, _ := strconv.ParseFloat(s, 64)
	return f
}

type snapInfo struct {
	row  lvRow
	meta snapshotMeta
}

type cloneInfo struct {
	row  lvRow
	meta cloneMeta
}

// state is the pool as one lvs report shows it.
type state struct {
	thinPool *lvRow
	main     *lvRow
	snaps    []snapInfo
	clones   []cloneInfo
	// names holds every LV name in the VG (to detect collisions with LVs
	// that are not Thinlab's).
	names map[string]bool
	// broken lists Thinlab LVs whose metadata could not be read.
	broken []string
}

// buildState sorts rows into the pool's picture: only LVs tagged with pool
// and living in thinPool count.
func buildState(rows []lvRow, pool, thinPool string) state {
	st := state{names: map[string]bool{}}
	for i := range rows {
		r := rows[i]
		st.names[strings.Trim(r.Name, "[]")] = true
		if r.Name == thinPool && r.isThinPool() {
			st.thinPool = &rows[i]
			continue
		}
		ts, err := parseTags(r.Tags)
		if err != nil {
			if strings.Contains(r.Tags, poolTag(pool)) {
				st.broken = append(st.broken, fmt.Sprintf("%s: %v", r.Name, err))
			}
			continue
		}
		if ts.pool != pool || r.PoolLV != thinPool {
			continue
		}
		switch ts.kind {
		case kindMain:
			st.main = &rows[i]
		case kindSnap:
			var m snapshotMeta
			if err := ts.decodeMeta(&m); err != nil {
				st.broken = append(st.broken, fmt.Sprintf("%s: %v", r.Name, err))
				continue
			}
			st.snaps = append(st.snaps, snapInfo{row: r, meta: m})
		case kindClone:
			var m cloneMeta
			if err := ts.decodeMeta(&m); err != nil {
				st.broken = append(st.broken, fmt.Sprintf("%s: %v", r.Name, err))
				continue
			}
			st.clones = append(st.clones, cloneInfo{row: r, meta: m})
		}
	}
	return st
}

func (st state) snapshotByID(id string) *snapInfo {
	for i := range st.snaps {
		if st.snaps[i].meta.ID == id {
			return &st.snaps[i]
		}
	}
	return nil
}

func (st state) cloneByName(name string) *cloneInfo {
	for i := range st.clones {
		if st.clones[i].meta.Name == name {
			return &st.clones[i]
		}
	}
	return nil
}

// clonesOf returns the names of the clones made from snapshot id, sorted.
func (st state) clonesOf(id string) []string {
	var names []string
	for _, c := range st.clones {
		if c.meta.SnapshotID == id {
			names = append(names, c.meta.Name)
		}
	}
	slices.Sort(names)
	return names
}

// cloneUsed estimates what a clone wrote: its mapped space beyond its
// snapshot's. Thin LVs share blocks without telling lvs which, so this is
// exact only while the snapshot is active and the clone has not unmapped
// (discarded) blocks.
func (st state) cloneUsed(c cloneInfo) uint64 {
	var base uint64
	if s := st.snapshotByID(c.meta.SnapshotID); s != nil {
		base = s.row.mappedBytes()
	}
	if m := c.row.mappedBytes(); m > base {
		return m - base
	}
	return 0
}

func (st state) snapshots(pool string) []storage.Snapshot {
	out := make([]storage.Snapshot, 0, len(st.snaps))
	for _, s := range st.snaps {
		out = append(out, storage.Snapshot{
			ID:          s.meta.ID,
			Pool:        pool,
			CreatedAt:   s.meta.CreatedAt,
			DataStateAt: s.meta.DataStateAt,
			Message:     s.meta.Message,
			Labels:      s.meta.Labels,
			// LVM does not report a thin LV's exclusive blocks (only
			// thin_ls on a metadata snapshot does), so PhysicalSize
			// stays 0; LogicalSize is what the snapshot maps.
			LogicalSize: s.row.mappedBytes(),
			Clones:      st.clonesOf(s.meta.ID),
		})
	}
	storage.SortSnapshots(out)
	return out
}

func (st state) clonesList(mountDir func(string) string) []storage.Clone {
	out := make([]storage.Clone, 0, len(st.clones))
	for _, c := range st.clones {
		out = append(out, storage.Clone{
			Name:       c.meta.Name,
			SnapshotID: c.meta.SnapshotID,
			Mountpoint: mountDir(c.meta.Name),
			CreatedAt:  c.meta.CreatedAt,
			UsedBytes:  st.cloneUsed(c),
		})
	}
	slices.SortFunc(out, func(a, b storage.Clone) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out
}

// usage turns the thin pool's and LVs' numbers into storage.Usage. The
// thin pool is the whole space (it may be shared with LVs that are not
// this pool's); snapshots are charged what is left after main and clones.
func (st state) usage() storage.Usage {
	var u storage.Usage
	u.CompressRatio = 1
	if st.thinPool == nil {
		return u
	}
	u.Size = st.thinPool.sizeBytes()
	u.Used = min(st.thinPool.mappedBytes(), u.Size)
	u.Free = u.Size - u.Used
	if st.main != nil {
		u.DataSize = st.main.mappedBytes()
	}
	for _, c := range st.clones {
		u.UsedByClones += st.cloneUsed(c)
	}
	if u.Used > u.DataSize+u.UsedByClones {
		u.UsedBySnapshots = u.Used - u.DataSize - u.UsedByClones
	}
	return u
}
