// Package usage turns the agents' usage samples (sdk/tunnel.UsageSample,
// events of kind tunnel.EventKindUsage) into the platform's usage rows,
// and those into reports: clone-hours, storage GiB-hours and counts per
// organization, agent, user and clone, by day or month, as JSON or CSV,
// and the estimated savings of thin clones over full copies.
package usage

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"time"

	"github.com/thinlab/thinlab/platform/audit"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/platformapi"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

// DefaultCopyRateMiBPerSecond is the rate full copies are assumed to be
// made at for the savings estimate, measured on the project's machines:
// `cp -a` of a 1.5 GiB data directory took 1.9-2.9 s with writeback
// (BENCHMARKS.md, full_copy), about 600 MiB/s.
const DefaultCopyRateMiBPerSecond = 600

// maxBytes bounds a byte count from an agent to what the database holds.
const maxBytes = math.MaxInt64

// Ingest stores the usage samples among events of agentID, each sample
// once (a sample sent again after a reconnect has the same ID and is
// skipped). Other events are ignored; a sample that cannot be read is an
// error naming it (the agent keeps the batch and sends it again, so
// nothing is lost to a platform bug fixed later).
func Ingest(ctx context.Context, st *store.Store, agentID string, events []tunnel.Event) error {
	clones, pools, err := BatchRows(events)
	if err != nil {
		return err
	}
	_, err = st.InsertUsage(ctx, agentID, clones, pools)
	return err
}

// BatchRows are the usage rows of the samples among events.
func BatchRows(events []tunnel.Event) ([]store.UsageClonePeriod, []store.UsagePoolPeriod, error) {
	var clones []store.UsageClonePeriod
	var pools []store.UsagePoolPeriod
	for _, e := range events {
		if e.Kind != tunnel.EventKindUsage {
			continue
		}
		c, p, err := Rows(e)
		if err != nil {
			return nil, nil, err
		}
		clones = append(clones, c...)
		pools = append(pools, p...)
	}
	return clones, pools, nil
}

// Rows are the usage rows of one sample event (without agent and
// organization, which InsertUsage sets from the authenticated agent).
func Rows(e tunnel.Event) ([]store.UsageClonePeriod, []store.UsagePoolPeriod, error) {
	var smp tunnel.UsageSample
	if err := json.Unmarshal(e.Data, &smp); err != nil {
		return nil, nil, fmt.Errorf("usage sample %s: %w", e.ID, err)
	}
	if e.ID == "" || len(e.ID) > 200 {
		return nil, nil, fmt.Errorf("usage sample with an ID of %d bytes: 1-200 are accepted", len(e.ID))
	}
	if smp.To.Before(smp.From) {
		return nil, nil, fmt.Errorf("usage sample %s ends (%s) before it starts (%s)", e.ID, smp.To, smp.From)
	}
	period := smp.To.Sub(smp.From).Seconds()
	clones := make([]store.UsageClonePeriod, 0, len(smp.Clones))
	diffByPool := map[string]uint64{}
	seen := map[string]bool{}
	for _, c := range smp.Clones {
		if c.ID == "" || len(c.ID) > 200 || seen[c.ID] {
			continue // a clone without an ID, or twice in one sample, is not counted
		}
		seen[c.ID] = true
		secs := c.Seconds
		// A clone cannot exist longer than the period it is sampled in.
		if secs < 0 || math.IsNaN(secs) {
			secs = 0
		}
		secs = min(secs, period)
		diffByPool[c.Pool] += c.DiffBytes
		clones = append(clones, store.UsageClonePeriod{
			SampleID: e.ID, CloneID: c.ID, Pool: c.Pool, PeriodFrom: smp.From.UTC(), PeriodTo: smp.To.UTC(),
			Seconds: secs, DiffBytes: clampBytes(c.DiffBytes), LogicalBytes: clampBytes(c.LogicalBytes),
			CloningSeconds: max(0, c.CloningSeconds), Destroyed: c.Destroyed,
		})
	}
	pools := make([]store.UsagePoolPeriod, 0, len(smp.Pools))
	seenPool := map[string]bool{}
	for _, p := range smp.Pools {
		if p.Name == "" || seenPool[p.Name] {
			continue
		}
		seenPool[p.Name] = true
		snap := uint64(0)
		if p.UsedBytes > diffByPool[p.Name] {
			snap = p.UsedBytes - diffByPool[p.Name]
		}
		pools = append(pools, store.UsagePoolPeriod{
			SampleID: e.ID, Pool: p.Name, PeriodFrom: smp.From.UTC(), PeriodTo: smp.To.UTC(), Seconds: period,
			UsedBytes: clampBytes(p.UsedBytes), SnapshotBytes: clampBytes(snap), Snapshots: p.Snapshots, Clones: p.Clones,
		})
	}
	return clones, pools, nil
}

func clampBytes(b uint64) int64 {
	if b > maxBytes {
		return maxBytes
	}
	return int64(b)
}

// gibHours converts byte-seconds to GiB-hours.
func gibHours(byteSeconds float64) float64 { return byteSeconds / (1 << 30) / 3600 }

// Groupings accepted by Report.
var (
	Periods = []string{"day", "month"}
	Bys     = []string{"org", "agent", "user", "clone"}
)

// Report is orgID's usage of the periods that start in [from, to).
func Report(ctx context.Context, st *store.Store, orgID string, from, to time.Time, period, by string) (platformapi.UsageReport, error) {
	rows, err := st.UsageByPeriod(ctx, orgID, from, to, store.UsageGrouping{Period: period, By: by})
	if err != nil {
		return platformapi.UsageReport{}, err
	}
	out := platformapi.UsageReport{From: from.UTC(), To: to.UTC(), Period: period, By: by, Items: make([]platformapi.UsageRow, 0, len(rows))}
	for _, r := range rows {
		out.Items = append(out.Items, platformapi.UsageRow{
			Bucket: r.Bucket.UTC(), Key: r.Key, Name: r.Name, CloneHours: r.CloneSeconds / 3600, Clones: r.Clones,
			CloneStorageGiBHours: gibHours(r.CloneByteSeconds), SnapshotStorageGiBHours: gibHours(r.SnapshotByteSeconds),
			Snapshots: r.Snapshots,
		})
	}
	return out, nil
}

// CSVHeader is the first line of a usage CSV export.
var CSVHeader = []string{"bucket", "period", "by", "key", "name", "clone_hours", "clones", "clone_storage_gib_hours", "snapshot_storage_gib_hours", "snapshots"}

// WriteCSV writes the report as CSV with CSVHeader. Names come from
// people (agent names, emails): every cell is defused against spreadsheet
// formulas the way the audit export does it.
func WriteCSV(w io.Writer, r platformapi.UsageReport) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(CSVHeader); err != nil {
		return err
	}
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', 6, 64) }
	for _, it := range r.Items {
		rec := []string{
			it.Bucket.UTC().Format(time.RFC3339), r.Period, r.By, it.Key, it.Name, f(it.CloneHours),
			strconv.FormatInt(it.Clones, 10), f(it.CloneStorageGiBHours), f(it.SnapshotStorageGiBHours),
			strconv.FormatInt(it.Snapshots, 10),
		}
		for i := range rec {
			rec[i] = audit.DefuseFormula(rec[i])
		}
		if err := cw.Write(rec); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// Savings estimates, per month of [from, to), what orgID's clones would
// have taken as full copies: disk (each clone's logical size over its
// hours, against what it really wrote) and time to provision (its
// logical size at copyRate MiB/s, against its real cloning time).
func Savings(ctx context.Context, st *store.Store, orgID string, from, to time.Time, copyRate float64) (platformapi.SavingsReport, error) {
	if copyRate <= 0 {
		copyRate = DefaultCopyRateMiBPerSecond
	}
	rows, err := st.SavingsByMonth(ctx, orgID, from, to)
	if err != nil {
		return platformapi.SavingsReport{}, err
	}
	out := platformapi.SavingsReport{Items: make([]platformapi.SavingsMonth, 0, len(rows))}
	for _, r := range rows {
		full, thin := gibHours(r.LogicalByteSeconds), gibHours(r.CloneByteSeconds)
		out.Items = append(out.Items, platformapi.SavingsMonth{
			Month: r.Bucket.UTC(), Clones: r.Clones, FullCopyGiBHours: full, ThinGiBHours: thin, SavedGiBHours: max(0, full-thin),
			FullCopyHours:        r.LogicalBytesOfClones / (1 << 20) / copyRate / 3600,
			ThinProvisionHours:   r.CloningSecondsOfClones / 3600,
			CopyRateMiBPerSecond: copyRate,
		})
	}
	return out, nil
}
