package zfs

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/thinlab/thinlab/agent/storage"
)

// dataset is what one `zfs get` said about one dataset or snapshot.
type dataset struct {
	name  string
	props map[string]string // native properties
	user  map[string]string // thinlab: properties set on this dataset itself
}

func (d *dataset) prop(k string) string {
	if d == nil {
		return ""
	}
	return d.props[k]
}

func (d *dataset) num(k string) uint64 {
	n, _ := strconv.ParseUint(d.prop(k), 10, 64)
	return n
}

// time reads a user time property, falling back to the native creation
// time (seconds) for datasets made by hand.
func (d *dataset) time(k string) time.Time {
	if t, err := time.Parse(time.RFC3339Nano, d.user[k]); err == nil {
		return t.UTC()
	}
	return time.Unix(int64(d.num("creation")), 0).UTC() //nolint:gosec // G115: a creation time in seconds fits int64 for 292 billion years
}

// getProps runs one `zfs get -H -p` over names (not recursive) and returns
// the datasets by name. Exact numbers come from -p, which zfs-fuse supports
// on get but not on list.
func (p *Pool) getProps(ctx context.Context, props []string, names ...string) (map[string]*dataset, error) {
	return p.get(ctx, false, props, names...)
}

func (p *Pool) get(ctx context.Context, recursive bool, props []string, names ...string) (map[string]*dataset, error) {
	args := []string{"get", "-H", "-p"}
	if recursive {
		args = append(args, "-r")
	}
	args = append(args, "-o", "name,property,value,source", strings.Join(props, ","))
	args = append(args, names...)
	out, err := p.zfs(ctx, args...)
	if err != nil {
		return nil, classify(err)
	}
	return parseGet(out)
}

// parseGet reads `zfs get -H -o name,property,value,source` output. Values
// may contain tabs (zfs prints user properties raw), so the value is
// everything between the second and the last tab.
func parseGet(out []byte) (map[string]*dataset, error) {
	res := map[string]*dataset{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		first := strings.IndexByte(line, '\t')
		last := strings.LastIndexByte(line, '\t')
		if first < 0 || last <= first {
			return nil, fmt.Errorf("zfs get: unexpected line %q", line)
		}
		name, rest := line[:first], line[first+1:last]
		source := line[last+1:]
		before, after, ok := strings.Cut(rest, "\t")
		if !ok {
			return nil, fmt.Errorf("zfs get: unexpected line %q", line)
		}
		prop, value := before, after
		d := res[name]
		if d == nil {
			d = &dataset{name: name, props: map[string]string{}, user: map[string]string{}}
			res[name] = d
		}
		if strings.HasPrefix(prop, "thinlab:") {
			// Inherited values belong to an ancestor.
			if source == "local" || source == "received" {
				d.user[prop] = value
			}
			continue
		}
		d.props[prop] = value
	}
	return res, sc.Err()
}

// state is the whole pool as read by one recursive `zfs get`.
type state struct {
	p        *Pool
	datasets map[string]*dataset
}

var stateProps = []string{"type", "origin", "used", "referenced", "creation", "mountpoint", "mounted",
	propDataStateAt, propCreatedAt, propMessage, propLabels}

func (p *Pool) load(ctx context.Context) (*state, error) {
	ds, err := p.get(ctx, true, stateProps, p.mainDS, p.clonesDS, p.commitsDS)
	if err != nil {
		return nil, fmt.Errorf("zfs pool %s: read datasets: %w", p.cfg.Name, err)
	}
	return &state{p: p, datasets: ds}, nil
}

// cloneDatasets are the direct children of the clones container.
func (s *state) cloneDatasets() []string {
	prefix := s.p.clonesDS + "/"
	var out []string
	for name, d := range s.datasets {
		rest, ok := strings.CutPrefix(name, prefix)
		if ok && !strings.ContainsAny(rest, "/@") && d.prop("type") == "filesystem" {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// snapshotID maps a ZFS snapshot of main, of a commit dataset or (while
// a commit is being made) of a clone to a Thinlab ID ("" if the snapshot is not one of ours, e.g. made
// by hand with another name).
func (s *state) snapshotID(zfsName string) string {
	ds, snap, ok := strings.Cut(zfsName, "@")
	if !ok {
		return ""
	}
	if ds != s.p.mainDS {
		rest, inClones := strings.CutPrefix(ds, s.p.clonesDS+"/")
		if !inClones {
			rest, inClones = strings.CutPrefix(ds, s.p.commitsDS+"/")
		}
		if !inClones || strings.Contains(rest, "/") {
			return ""
		}
	}
	id := s.p.cfg.Name + "@" + snap
	if _, _, err := storage.ParseSnapshotID(id); err != nil {
		return ""
	}
	return id
}

// snapshotName is the ZFS name of the snapshot with Thinlab ID id, or "".
// Of two datasets holding the same name (made by hand), main wins.
func (s *state) snapshotName(id string) string {
	_, snap, err := storage.ParseSnapshotID(id)
	if err != nil {
		return ""
	}
	if d := s.datasets[s.p.mainDS+"@"+snap]; d != nil {
		return d.name
	}
	names := make([]string, 0, 1)
	for name, d := range s.datasets {
		if d.prop("type") == "snapshot" && strings.HasSuffix(name, "@"+snap) && s.snapshotID(name) == id {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	if len(names) == 0 {
		return ""
	}
	return names[0]
}

func (s *state) clones() []storage.Clone {
	var out []storage.Clone
	for _, name := range s.cloneDatasets() {
		d := s.datasets[name]
		out = append(out, storage.Clone{
			Name:       strings.TrimPrefix(name, s.p.clonesDS+"/"),
			SnapshotID: s.snapshotID(d.prop("origin")),
			Mountpoint: d.prop("mountpoint"),
			CreatedAt:  d.time(propCreatedAt),
			UsedBytes:  d.num("used"),
		})
	}
	slices.SortStableFunc(out, func(a, b storage.Clone) int { return a.CreatedAt.Compare(b.CreatedAt) })
	return out
}

func (s *state) snapshots() []storage.Snapshot {
	byID := map[string][]string{}
	for _, c := range s.clones() {
		if c.SnapshotID != "" {
			byID[c.SnapshotID] = append(byID[c.SnapshotID], c.Name)
		}
	}
	var out []storage.Snapshot
	for name, d := range s.datasets {
		id := s.snapshotID(name)
		if id == "" || d.prop("type") != "snapshot" {
			continue
		}
		snap := storage.Snapshot{
			ID:           id,
			Pool:         s.p.cfg.Name,
			CreatedAt:    d.time(propCreatedAt),
			PhysicalSize: d.num("used"),
			LogicalSize:  d.num("referenced"),
			Clones:       byID[id],
		}
		snap.DataStateAt = dataStateAt(d, id)
		snap.Message = decodeMessage(d.user[propMessage])
		snap.Labels = decodeLabels(d.user[propLabels])
		out = append(out, snap)
	}
	storage.SortSnapshots(out)
	return out
}

// dataStateAt reads the property, falling back to the time in the ID.
func dataStateAt(d *dataset, id string) time.Time {
	if t, err := time.Parse(time.RFC3339Nano, d.user[propDataStateAt]); err == nil {
		return t.UTC()
	}
	_, snap, _ := storage.ParseSnapshotID(id)
	digits := strings.TrimPrefix(snap, "snapshot_")
	if t, err := time.Parse(storage.SnapshotTimeLayout, digits[:min(len(digits), 14)]); err == nil {
		return t.UTC()
	}
	return d.time(propCreatedAt)
}

// encodeMessage stores a message as a JSON string: zfs prints property
// values raw, so a newline or tab would break parsing its output.
func encodeMessage(m string) (string, error) {
	raw, _ := json.Marshal(m)
	if len(raw) > maxPropLen {
		return "", fmt.Errorf("%w: snapshot message is %d bytes encoded; keep it under %d", storage.ErrInvalidName, len(raw), maxPropLen)
	}
	return string(raw), nil
}

func decodeMessage(v string) string {
	if v == "" {
		return ""
	}
	var m string
	if err := json.Unmarshal([]byte(v), &m); err != nil {
		return v // set by hand, unencoded
	}
	return m
}

func encodeLabels(l map[string]string) (string, error) {
	for k := range l {
		if k == "" {
			return "", fmt.Errorf("%w: snapshot labels: a label key is empty; give every label a name", storage.ErrInvalidName)
		}
	}
	raw, _ := json.Marshal(l)
	if len(raw) > maxPropLen {
		return "", fmt.Errorf("%w: snapshot labels are %d bytes as JSON; keep them under %d", storage.ErrInvalidName, len(raw), maxPropLen)
	}
	return string(raw), nil
}

func decodeLabels(v string) map[string]string {
	if v == "" {
		return nil
	}
	var l map[string]string
	if err := json.Unmarshal([]byte(v), &l); err != nil || len(l) == 0 {
		return nil
	}
	return l
}
