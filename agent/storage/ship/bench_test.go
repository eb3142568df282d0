package ship_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/ship"
	"github.com/thinlab/thinlab/agent/storage/storagetest"
)

const (
	benchFiles    = 8
	benchFileSize = 128 << 20 // 1 GiB in all
	benchRounds   = 3
)

// BenchmarkShipBtrfs compares a full ship of a 1 GiB btrfs snapshot to
// another pool (ship.Send piped into ship.Receive in one process: framing,
// SHA-256, temporary name, publish) with the raw `btrfs send | btrfs
// receive` pipeline between the same two filesystems. It prints BENCH
// ship_ratio (our throughput / raw throughput) and both throughputs,
// medians of benchRounds alternating runs, and checks the shipped data.
func BenchmarkShipBtrfs(b *testing.B) {
	ctx, cancel := context.WithTimeout(b.Context(), 20*time.Minute)
	defer cancel()
	src := storagetest.NewLoopPoolSize(b, storage.ModeBtrfs, 3<<30)
	dst := storagetest.NewLoopPoolSize(b, storage.ModeBtrfs, 3<<30)
	data := filepath.Join(src.MainDir(), storage.DataSubdir)
	if err := os.MkdirAll(data, 0o700); err != nil {
		b.Fatal(err)
	}
	rng := mrand.NewChaCha8([32]byte{1})
	buf := make([]byte, benchFileSize)
	for i := range benchFiles {
		_, _ = rng.Read(buf)
		if err := os.WriteFile(filepath.Join(data, fmt.Sprintf("f%d", i)), buf, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	want := sha256.Sum256(buf)
	sn, err := src.Snapshot(ctx, storage.SnapshotOptions{Message: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	_, name, _ := storage.ParseSnapshotID(sn.ID)
	snapDir := filepath.Join(filepath.Dir(src.MainDir()), "snapshots", name)
	rawDir := filepath.Join(filepath.Dir(dst.MainDir()), "raw")
	if err := os.Mkdir(rawDir, 0o700); err != nil {
		b.Fatal(err)
	}
	sync := func() { _ = exec.CommandContext(ctx, "sync").Run() }

	// Deleted subvolumes are cleaned up in the background; wait for
	// that so one run's cleanup does not slow the next one.
	settle := func() {
		sync()
		if out, err := exec.CommandContext(ctx, "btrfs", "subvolume", "sync", filepath.Dir(dst.MainDir())).CombinedOutput(); err != nil {
			b.Fatalf("btrfs subvolume sync: %v: %s", err, out)
		}
	}
	runRaw := func() float64 {
		settle()
		start := time.Now()
		out, err := exec.CommandContext(ctx, "sh", "-c", `btrfs -q send "$1" | btrfs -q receive "$2"`, "sh", snapDir, rawDir).CombinedOutput()
		if err != nil {
			b.Fatalf("raw btrfs send | receive: %v: %s", err, out)
		}
		sync()
		d := time.Since(start).Seconds()
		if out, err := exec.CommandContext(ctx, "btrfs", "subvolume", "delete", filepath.Join(rawDir, name)).CombinedOutput(); err != nil {
			b.Fatalf("delete raw copy: %v: %s", err, out)
		}
		return d
	}
	runOurs := func() float64 {
		settle()
		start := time.Now()
		pr, pw := io.Pipe()
		go func() {
			_, err := ship.Send(ctx, src, sn.ID, "", nil, pw)
			_ = pw.CloseWithError(err)
		}()
		got, err := ship.Receive(ctx, dst, pr)
		if err != nil {
			b.Fatal(err)
		}
		sync()
		d := time.Since(start).Seconds()
		c, err := dst.Clone(ctx, got.ID, "check")
		if err != nil {
			b.Fatal(err)
		}
		last, err := os.ReadFile(filepath.Join(c.Mountpoint, storage.DataSubdir, fmt.Sprintf("f%d", benchFiles-1)))
		if err != nil || sha256.Sum256(last) != want {
			b.Fatalf("shipped data differs from the source (%v)", err)
		}
		if err := dst.DestroySnapshot(ctx, got.ID, true); err != nil {
			b.Fatal(err)
		}
		return d
	}
	var ours, raw []float64
	for i := range benchRounds {
		// Alternate which goes first, so neither always finds the
		// caches the other warmed.
		if i%2 == 0 {
			raw = append(raw, runRaw())
			ours = append(ours, runOurs())
		} else {
			ours = append(ours, runOurs())
			raw = append(raw, runRaw())
		}
	}
	b.Logf("seconds per run: ship %v, raw %v", ours, raw)
	slices.Sort(ours)
	slices.Sort(raw)
	mib := float64(benchFiles*benchFileSize) / (1 << 20)
	oursMiBs, rawMiBs := mib/ours[len(ours)/2], mib/raw[len(raw)/2]
	fmt.Printf("BENCH ship_btrfs_mib_s %.0f MiB/s\n", oursMiBs)
	fmt.Printf("BENCH raw_btrfs_send_receive_mib_s %.0f MiB/s\n", rawMiBs)
	fmt.Printf("BENCH ship_ratio %.2f\n", oursMiBs/rawMiBs)
}
