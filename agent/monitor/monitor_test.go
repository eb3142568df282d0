package monitor

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/agent/storage/storagetest"
	"github.com/thinlab/thinlab/internal/testenv"
)

// writeProc builds a /proc tree: host CPU times, memory, load, one
// mountinfo line per mount, and processes owned by uids.
type procTree struct {
	t    *testing.T
	root string
}

func (p procTree) file(rel, body string) {
	p.t.Helper()
	path := filepath.Join(p.root, rel)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		p.t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		p.t.Fatal(err)
	}
}

func (p procTree) cpu(user, system, idle, iowait uint64) {
	p.file("stat", fmt.Sprintf("cpu  %d 0 %d %d %d 0 0 0 0 0\ncpu0 1 0 1 1 0 0 0 0 0 0\ncpu1 1 0 1 1 0 0 0 0 0 0\n", user, system, idle, iowait))
}

// proc is process pid of uid with utime+stime ticks, PSS kB and title.
func (p procTree) proc(pid int, uid uint32, ticks uint64, pssKB int, title string) {
	dir := fmt.Sprintf("%d", pid)
	p.file(dir+"/stat", fmt.Sprintf("%d (postgres) S 1 1 1 0 -1 0 0 0 0 0 %d 0 0 0 20 0 1 0", pid, ticks))
	p.file(dir+"/smaps_rollup", fmt.Sprintf("Rss: 9999 kB\nPss: %d kB\n", pssKB))
	p.file(dir+"/cmdline", title+"\x00")
	if err := os.Chown(filepath.Join(p.root, dir), int(uid), int(uid)); err != nil {
		p.t.Fatal(err)
	}
}

// TestSampleFromFixedProc: known counters give known figures: host CPU
// and IO wait shares, memory, load, a pool's device IO utilisation and
// throughput, and each clone's CPU, PSS and client connections found by
// its uid (root's processes never count).
func TestSampleFromFixedProc(t *testing.T) {
	testenv.NeedsRoot(t, "root, to give fixture processes their owners")
	p := procTree{t: t, root: t.TempDir()}
	sys := t.TempDir()
	p.cpu(100, 100, 700, 100)
	p.file("meminfo", "MemTotal:       8000 kB\nMemFree: 1 kB\nMemAvailable:   2000 kB\n")
	p.file("loadavg", "1.50 1.00 0.50 2/300 12345\n")
	p.file("self/mountinfo", "36 25 7:3 / /pools/p1 rw,relatime shared:1 - btrfs /dev/loop3 rw\n37 25 0:40 / /pools/z rw - zfs tank/z rw\n")
	disk := filepath.Join(sys, "class", "block", "loop3", "stat")
	if err := os.MkdirAll(filepath.Dir(disk), 0o755); err != nil {
		t.Fatal(err)
	}
	writeDisk := func(read, written, ticks uint64) {
		if err := os.WriteFile(disk, fmt.Appendf(nil, "1 0 %d 0 1 0 %d 0 0 %d 0 0 0 0 0\n", read, written, ticks), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeDisk(0, 0, 0)
	p.proc(10, 200001, 100, 1000, "postgres: alice postgres 127.0.0.1(5000) idle")
	p.proc(11, 200001, 50, 500, "postgres: checkpointer ")
	p.proc(12, 200002, 10, 100, "postgres: bob app [local] idle in transaction")
	p.proc(13, 0, 1000, 9000, "postgres: root-owned 127.0.0.1(1) idle")

	s, err := New(Options{
		ProcRoot: p.root, SysRoot: sys, Events: events.NewBus(),
		Pools: func(context.Context) []Pool {
			return []Pool{{Name: "p1", Path: "/pools/p1/main", SizeBytes: 100, UsedBytes: 40, FreeBytes: 60}, {Name: "z", Path: "/pools/z"}}
		},
		Clones: func() []Clone {
			return []Clone{{ID: "c1", Pool: "p1", UID: 200001}, {ID: "c2", Pool: "p1", UID: 200002}, {ID: "root", UID: 0}}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if smp, err := s.Take(t.Context()); err != nil || smp != nil {
		t.Fatalf("first sample: %+v %v, want nil (priming)", smp, err)
	}
	// One period later: 1000 more ticks of which 500 busy, 100 iowait;
	// the disk was busy 1.5 s of it; c1 used 200 ticks (2 s of CPU).
	s.prev.at = time.Now().Add(-10 * time.Second)
	p.cpu(300, 400, 1100, 200)
	writeDisk(2048, 4096, 1500)
	p.proc(10, 200001, 250, 1000, "postgres: alice postgres 127.0.0.1(5000) idle")
	p.proc(11, 200001, 100, 500, "postgres: checkpointer ")
	smp, err := s.Take(t.Context())
	if err != nil || smp == nil {
		t.Fatalf("second sample: %v", err)
	}
	near := func(what string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > want*0.02+0.01 {
			t.Errorf("%s = %.3f, want %.3f", what, got, want)
		}
	}
	near("cpu", smp.CPUPercent, 50)
	near("iowait", smp.IOWaitPercent, 10)
	if smp.CPUs != 2 || smp.MemTotalBytes != 8000<<10 || smp.MemAvailableBytes != 2000<<10 || smp.Load1 != 1.5 {
		t.Errorf("host: %+v", smp)
	}
	if len(smp.Pools) != 2 || smp.Pools[0].Device != "loop3" || smp.Pools[0].IOUtilPercent == nil || smp.Pools[1].IOUtilPercent != nil {
		t.Fatalf("pools: %+v", smp.Pools)
	}
	near("io util", *smp.Pools[0].IOUtilPercent, 15)
	near("read B/s", smp.Pools[0].ReadBytesPerS, 2048*512/10.0)
	near("write B/s", smp.Pools[0].WriteBytesPerS, 4096*512/10.0)
	if len(smp.Clones) != 2 {
		t.Fatalf("clones: %+v (root's processes must not count)", smp.Clones)
	}
	c1, c2 := smp.Clones[0], smp.Clones[1]
	near("c1 cpu", c1.CPUPercent, 20)
	if c1.MemoryBytes != 1500<<10 || c1.Connections != 1 || c2.MemoryBytes != 100<<10 || c2.Connections != 1 || c2.CPUPercent != 0 {
		t.Errorf("clones: %+v %+v", c1, c2)
	}
}

// TestSampleRealHost: on this host, with a real loop pool that is written
// to, the sample has the host's CPUs and memory, and the pool's loop
// device with its writes.
func TestSampleRealHost(t *testing.T) {
	testenv.NeedsRoot(t, "root, for a loop pool")
	pool := storagetest.NewLoopPool(t, "btrfs")
	bus := events.NewBus()
	got := make(chan events.Event, 4)
	bus.Subscribe(func(e events.Event) {
		if e.Kind == events.Metrics {
			got <- e
		}
	})
	s, err := New(Options{
		Interval: 200 * time.Millisecond, Events: bus,
		Pools:  func(context.Context) []Pool { return []Pool{{Name: pool.Name(), Path: pool.MainDir()}} },
		Clones: func() []Clone { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	// Write 8 MiB through to the pool's device.
	f, err := os.Create(filepath.Join(pool.MainDir(), "data"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(make([]byte, 8<<20)); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()
	var smp Sample
	deadline := time.After(30 * time.Second)
	for smp.Pools == nil || smp.Pools[0].WriteBytesPerS == 0 {
		select {
		case e := <-got:
			if err := json.Unmarshal(e.Data, &smp); err != nil {
				t.Fatal(err)
			}
		case <-deadline:
			t.Fatalf("no sample showed the pool's writes; last %+v", smp)
		}
	}
	cancel()
	if err := <-done; err != context.Canceled {
		t.Errorf("Run ended with %v, want context.Canceled", err)
	}
	if smp.CPUs < 1 || smp.MemTotalBytes == 0 || smp.MemAvailableBytes == 0 || smp.MemAvailableBytes > smp.MemTotalBytes {
		t.Errorf("host figures: %+v", smp)
	}
	if d := smp.Pools[0].Device; len(d) < 5 || d[:4] != "loop" || smp.Pools[0].IOUtilPercent == nil {
		t.Errorf("pool device: %+v", smp.Pools[0])
	}
}
