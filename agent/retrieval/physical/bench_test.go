package physical

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/storage"
)

// BenchmarkPhysical prints
//
//	BENCH physical_snapshot_cycle S s   one snapshot cycle on a streaming standby (median of b.N)
//	BENCH physical_staleness S s        from a commit on the source to a snapshot holding it, one-minute schedule
//
// on a source of THINLAB_BENCH_PHYSICAL_MB MiB of table data (16 by
// default; the figure is 1536). Run with
// `make bench BENCH=Physical` (THINLAB_BENCH_PHYSICAL_MB=1536 for the
// issue's size), on a btrfs loop pool (THINLAB_BENCH_PHYSICAL_MODE=zfs or
// reflink for another backend).
func BenchmarkPhysical(b *testing.B) {
	mb := 16
	if v := os.Getenv("THINLAB_BENCH_PHYSICAL_MB"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("THINLAB_BENCH_PHYSICAL_MB %q: want a number of MiB", v)
		}
		mb = n
	}
	mode := storage.ModeBtrfs
	if v := os.Getenv("THINLAB_BENCH_PHYSICAL_MODE"); v != "" {
		mode = v // zfs, reflink
	}
	// Room for the copy, its WAL and what each cycle's throwaway rewrites
	// (its recovery replays from the standby's last restartpoint): with
	// 1.5 GiB, 4x the data filled the pool after a few cycles. Retention
	// keeps two snapshots.
	h := newHarnessSized(b, mode, max(1<<30, int64(mb)<<24), config.ToolBasebackup, func(h *harness) { h.keep = 2 })
	// About 250 bytes a row on disk.
	h.src.Exec(b, "postgres", fmt.Sprintf("CREATE TABLE big AS SELECT g AS id, repeat(md5(g::text), 6) AS pad FROM generate_series(1, %d) g", mb<<20/250))
	if err := h.r.Refresh(b.Context()); err != nil {
		b.Fatal(err)
	}
	var cycles []time.Duration
	for i := 0; b.Loop(); i++ {
		note := fmt.Sprintf("bench-%d", i)
		h.insert(note)
		h.waitReplayed(note)
		start := time.Now()
		snap := h.cycle()
		cycles = append(cycles, time.Since(start))
		if notes, _ := h.cloneNotes(snap.ID); !slices.Contains(notes, note) {
			b.Fatalf("a clone of %s lacks %q", snap.ID, note)
		}
	}
	slices.Sort(cycles)
	fmt.Printf("BENCH physical_snapshot_cycle %.2f s\n", cycles[len(cycles)/2].Seconds())

	// Staleness: the schedule runs every minute; a commit waits for the
	// next cycle and its snapshot.
	sched, err := cron.ParseStandard("* * * * *")
	if err != nil {
		b.Fatal(err)
	}
	h.r.sched = sched
	if err := h.r.Start(b.Context()); err != nil {
		b.Fatal(err)
	}
	// The commit's own time (dataStateAt) lies between these two.
	committed := time.Now()
	h.insert("stale")
	deadline := committed.Add(3 * time.Minute)
	for {
		snaps, err := h.pool.Snapshots(b.Context())
		if err != nil {
			b.Fatal(err)
		}
		if len(snaps) > 0 && snaps[0].Labels[LabelKind] == kindPromo && !snaps[0].DataStateAt.Before(committed.UTC().Truncate(time.Second)) {
			staleness := time.Since(committed)
			if notes, _ := h.cloneNotes(snaps[0].ID); !slices.Contains(notes, "stale") {
				b.Fatalf("the first snapshot after the commit, %s, lacks it", snaps[0].ID)
			}
			fmt.Printf("BENCH physical_staleness %.1f s\n", staleness.Seconds())
			return
		}
		if time.Now().After(deadline) {
			b.Fatal("no snapshot holding the commit within 3 minutes of a one-minute schedule")
		}
		time.Sleep(200 * time.Millisecond)
	}
}
