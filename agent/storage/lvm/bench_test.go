//go:build lvmvm

package lvm

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/command"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

// BenchmarkInVMLVM runs inside the VM: a pgbench -i -s 30 data directory
// (about 450 MiB, cleanly stopped) on main; median of 5 snapshots and 5
// clones; clone ready = Clone until the clone's postgres answers a query.
func BenchmarkInVMLVM(b *testing.B) {
	f := newVMFixture(b, "3584M")
	ctx := b.Context()
	pgUser, err := pgcluster.LookupUser("postgres")
	if err != nil {
		b.Fatal(err)
	}
	p, err := Open(ctx, Config{Name: "bench", VG: f.vg, ThinPool: f.thinPool, MountRoot: filepath.Join(f.mountRoot, "bench"),
		Owner: &storage.Owner{UID: int(pgUser.UID), GID: int(pgUser.GID)}, NoUdev: true, Logger: quietLogger()})
	if err != nil {
		b.Fatal(err)
	}
	data := filepath.Join(p.MainDir(), storage.DataSubdir)
	origin := &pgcluster.Cluster{DataDir: data, User: pgUser}
	if err := origin.Init(ctx, pgcluster.InitOptions{}); err != nil {
		b.Fatal(err)
	}
	port := 20000 + rand.IntN(10000)
	startPG(b, origin, port)
	binDir, err := pgcluster.NewestBinDir("")
	if err != nil {
		b.Fatal(err)
	}
	if _, err := (command.Runner{}).RunCmd(ctx, command.Cmd{
		Name: filepath.Join(binDir, "pgbench"), Args: []string{"-i", "-q", "-s", "30", "-h", data, "-p", fmt.Sprint(port), "-U", "postgres", "postgres"},
		Credential: pgUser.Credential(), Dir: "/",
	}); err != nil {
		b.Fatal(err)
	}
	if err := origin.Stop(ctx, "fast"); err != nil {
		b.Fatal(err)
	}
	syncAll(b)

	var snaps, clones, ready []time.Duration
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var snapID string
	for i := range 5 {
		start := time.Now()
		s, err := p.Snapshot(ctx, storage.SnapshotOptions{DataStateAt: base.Add(time.Duration(i) * time.Minute)})
		if err != nil {
			b.Fatal(err)
		}
		snaps = append(snaps, time.Since(start))
		snapID = s.ID
	}
	for i := range 6 {
		start := time.Now()
		c, err := p.Clone(ctx, snapID, fmt.Sprintf("b%d", i))
		if err != nil {
			b.Fatal(err)
		}
		took := time.Since(start)
		pg := &pgcluster.Cluster{DataDir: filepath.Join(c.Mountpoint, storage.DataSubdir), User: pgUser}
		startPG(b, pg, port+1+i)
		psql(b, pg, port+1+i, "SELECT count(*) FROM pgbench_branches")
		readyTook := time.Since(start)
		if err := pg.Stop(ctx, "immediate"); err != nil {
			b.Fatal(err)
		}
		if i == 0 {
			continue // warm-up
		}
		clones = append(clones, took)
		ready = append(ready, readyTook)
	}

	// The baseline: a full copy of the data directory on the same thin
	// LV, in the same VM.
	dst := filepath.Join(p.MainDir(), "copy")
	start := time.Now()
	// --reflink=never: cp 9 would otherwise share extents on XFS.
	if _, err := (command.Runner{}).Run(ctx, "cp", "-a", "--reflink=never", data, dst); err != nil {
		b.Fatal(err)
	}
	syncAll(b)
	fullCopy := time.Since(start)
	if err := os.RemoveAll(dst); err != nil {
		b.Fatal(err)
	}

	fmt.Printf("BENCH data_dir_size_lvm_tcg %d MiB\n", dirBytes(b, data)>>20)
	fmt.Printf("BENCH storage_snapshot_lvm_tcg %.3f s\n", median(snaps).Seconds())
	fmt.Printf("BENCH storage_clone_lvm_tcg %.3f s\n", median(clones).Seconds())
	fmt.Printf("BENCH storage_clone_ready_lvm_tcg %.3f s\n", median(ready).Seconds())
	fmt.Printf("BENCH full_copy_lvm_tcg %.3f s\n", fullCopy.Seconds())
	if err := p.DestroySnapshot(ctx, snapID, true); err != nil {
		b.Fatal(err)
	}
}

func dirBytes(t testing.TB, dir string) int64 {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			n += fi.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func syncAll(t testing.TB) {
	if _, err := (command.Runner{}).Run(t.Context(), "sync"); err != nil {
		t.Fatal(err)
	}
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	slices.Sort(s)
	return s[len(s)/2]
}
