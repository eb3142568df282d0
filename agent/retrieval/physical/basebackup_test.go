package physical

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

// TestBasebackupStreaming: the first copy by pg_basebackup, a standby
// streaming from the source, and snapshot cycles that show new rows.
func TestBasebackupStreaming(t *testing.T) {
	h := newHarness(t, config.ToolBasebackup, nil)
	if err := h.r.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	if !h.r.Status().StandbyRunning {
		t.Fatal("the standby is not running after the first copy")
	}
	h.waitReplayed("initial")
	h.checkCycleShowsNewRows(false)

	lag, err := h.r.CheckLag(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !lag.SourceReachable || lag.ReplayLSN == "" || lag.Bytes < 0 {
		t.Errorf("lag %+v: want a reachable source and a replay position", lag)
	}
	// The password reached pg_basebackup and the standby only through
	// the private passfile: it is in no file of the pool's data.
	checkNoPasswordInData(t, h)
}

// TestStandbyReplaysDuringCycle: the standby's postmaster stays the same
// and its replay position advances while a cycle runs.
func TestStandbyReplaysDuringCycle(t *testing.T) {
	h := newHarness(t, config.ToolBasebackup, nil)
	if err := h.r.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	h.insert("before")
	h.waitReplayed("before")
	pid, err := h.r.standby().PID()
	if err != nil || pid == 0 {
		t.Fatalf("standby pid: %d, %v", pid, err)
	}
	// While the throwaway postgres is up (mid-cycle), rows committed on
	// the source reach the standby.
	var during atomic.Bool
	h.r.beforePromote = func() {
		h.insert("during")
		deadline := time.Now().Add(time.Minute)
		for time.Now().Before(deadline) {
			if slices.Contains(h.standbyNotes(), "during") {
				during.Store(true)
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	lsnBefore := h.replayLSN()
	// A writer keeps committing while the cycle runs.
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Go(func() {
		conn, err := pgx.Connect(ctx, h.src.Cluster.SocketConnString(h.src.Port, "postgres", "postgres"))
		if err != nil {
			return
		}
		defer func() { _ = conn.Close(context.Background()) }()
		for i := 0; ctx.Err() == nil; i++ {
			_, _ = conn.Exec(ctx, fmt.Sprintf("INSERT INTO t (note) VALUES ('w%d')", i))
			time.Sleep(20 * time.Millisecond)
		}
	})
	snap := h.cycle()
	cancel()
	wg.Wait()
	if !during.Load() {
		t.Error("a row committed on the source while the cycle's throwaway postgres ran did not reach the standby within a minute")
	}
	h.insert("after")
	h.waitReplayed("after")
	lsnAfter := h.replayLSN()
	var advanced bool
	if err := h.standbyConn().QueryRow(t.Context(), "SELECT $1::pg_lsn > $2::pg_lsn", lsnAfter, lsnBefore).Scan(&advanced); err != nil {
		t.Fatal(err)
	}
	if !advanced {
		t.Errorf("replay LSN %s after the cycle, %s before: want it advanced", lsnAfter, lsnBefore)
	}
	pidAfter, _ := h.r.standby().PID()
	if pidAfter != pid {
		t.Errorf("standby postmaster pid %d after the cycle, %d before: the standby must never stop", pidAfter, pid)
	}
	notes, _ := h.cloneNotes(snap.ID)
	if len(notes) == 0 || notes[0] != "initial" {
		t.Errorf("clone of %s has %v", snap.ID, notes)
	}
}

func checkNoPasswordInData(t testing.TB, h *harness) {
	t.Helper()
	for _, f := range []string{"postgresql.auto.conf", "postgresql.conf", "thinlab-postgres.log"} {
		raw, err := pgcluster.ReadDataFile(h.r.dataDir(), f, 1<<20)
		if err != nil {
			continue
		}
		if containsSecret(raw) {
			t.Errorf("%s in the pool's data holds the source's password", f)
		}
	}
}

// TestBasebackupOnEveryLoopBackend: the pg_basebackup cycle test on the
// other backends that run on this host: zfs-fuse (a snapshot of the
// temporary clone depends on the temporary snapshot of main, which is
// retired and reaped through retention) and XFS reflink (file-by-file
// copies: the standby pauses replay for the copy of main). Retention keeps
// one snapshot, so every cycle also destroys the previous one; a pre
// snapshot (unpromoted standby) follows. LVM runs
// the same storage steps in the VM (storagetest's CloneSnapshotter).
func TestBasebackupOnEveryLoopBackend(t *testing.T) {
	for _, mode := range []string{storage.ModeZFS, storage.ModeReflink} {
		t.Run(mode, func(t *testing.T) {
			h := newHarnessOn(t, mode, config.ToolBasebackup, func(h *harness) { h.keep = 1 })
			if err := h.r.Refresh(t.Context()); err != nil {
				t.Fatal(err)
			}
			h.waitReplayed("initial")
			h.checkCycleShowsNewRows(false)
			if h.replayPaused() {
				t.Error("the standby's replay is still paused after the cycles")
			}
			snaps, err := h.pool.Snapshots(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if len(snaps) != 1 || snaps[0].Labels[LabelKind] != kindPromo {
				t.Errorf("snapshots after two cycles with keep 1: %+v, want the newest promoted one only", snaps)
			}
			// A pre snapshot (the unpromoted standby; on reflink taken
			// with replay paused): its clone is a hot standby with the row.
			h.insert("pre")
			h.waitReplayed("pre")
			pre, err := h.r.PreSnapshot(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if notes, inRecovery := h.cloneNotes(pre.ID); !slices.Contains(notes, "pre") || !inRecovery {
				t.Errorf("a clone of the pre snapshot has rows %v (in recovery %v), want %q in a hot standby", notes, inRecovery, "pre")
			}
			if h.replayPaused() {
				t.Error("the standby's replay is still paused after the pre snapshot")
			}
			if mode == storage.ModeReflink {
				// An agent killed during the copy left replay paused:
				// the next cycle resumes it.
				if _, err := h.standbyConn().Exec(t.Context(), "SELECT pg_wal_replay_pause()"); err != nil {
					t.Fatal(err)
				}
				h.insert("after pause")
				if _, err := h.r.SnapshotCycle(t.Context()); err != nil && !errors.Is(err, ErrNoNewData) {
					t.Fatal(err)
				}
				if h.replayPaused() {
					t.Fatal("a cycle left the standby's replay paused as it found it")
				}
				h.waitReplayed("after pause")
			}
		})
	}
}
