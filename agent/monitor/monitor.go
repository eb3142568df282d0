// Package monitor samples the agent's host for the platform's charts and
// saturation alerts: CPU, memory and load of the host, space and disk IO
// of each pool, and CPU, memory and connections of each clone (found by
// the clone's own OS uid, so it needs no cgroups and no login). Each
// sample is one events.Metrics event; the platform keeps them with
// retention and downsampling.
package monitor

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

// DefaultInterval is the sampling period.
const DefaultInterval = 30 * time.Second

// clockTicks is USER_HZ, the unit of /proc/PID/stat times (100 on every
// Linux architecture the agent supports).
const clockTicks = 100

// Sample, PoolSample and CloneSample are the payload of an
// events.Metrics event; the platform reads the same types (sdk/tunnel).
type (
	Sample      = tunnel.MetricsSample
	PoolSample  = tunnel.PoolMetrics
	CloneSample = tunnel.CloneMetrics
)

// Pool is what the sampler needs to know of a pool.
type Pool struct {
	Name      string
	Path      string // a directory on the pool (its main dataset)
	SizeBytes uint64
	UsedBytes uint64
	FreeBytes uint64
}

// Clone is what the sampler needs to know of a clone.
type Clone struct {
	ID   string
	Pool string
	UID  uint32
}

// Options configure a Sampler; Events, Pools and Clones are required.
type Options struct {
	Interval time.Duration
	Pools    func(ctx context.Context) []Pool
	Clones   func() []Clone
	Events   *events.Bus
	Logger   *slog.Logger
	// ProcRoot and SysRoot are /proc and /sys (tests point them at fixed
	// trees).
	ProcRoot string
	SysRoot  string
}

// Sampler takes samples; counters of the previous sample make the rates.
type Sampler struct {
	opt  Options
	log  *slog.Logger
	prev *counters
}

// counters are the cumulative values rates are computed from.
type counters struct {
	at        time.Time
	cpuBusy   uint64
	cpuIOWait uint64
	cpuTotal  uint64
	disks     map[string]diskStat // by device name
	cloneCPU  map[string]uint64   // ticks by clone ID
}

type diskStat struct{ sectorsRead, sectorsWritten, ioTicksMS uint64 }

// New checks opt.
func New(opt Options) (*Sampler, error) {
	if opt.Events == nil || opt.Pools == nil || opt.Clones == nil {
		return nil, errors.New("monitor: Events, Pools and Clones are required")
	}
	if opt.Interval <= 0 {
		opt.Interval = DefaultInterval
	}
	if opt.ProcRoot == "" {
		opt.ProcRoot = "/proc"
	}
	if opt.SysRoot == "" {
		opt.SysRoot = "/sys"
	}
	log := opt.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Sampler{opt: opt, log: log.With("component", "monitor")}, nil
}

// Run samples every Interval until ctx ends. The first sample only
// primes the counters: rates need two.
func (s *Sampler) Run(ctx context.Context) error {
	t := time.NewTicker(s.opt.Interval)
	defer t.Stop()
	if _, err := s.Take(ctx); err != nil {
		s.log.Warn("host sample failed", "err", err)
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			smp, err := s.Take(ctx)
			if err != nil {
				s.log.Warn("host sample failed", "err", err)
				continue
			}
			if smp != nil {
				s.opt.Events.Emit(events.Event{Kind: events.Metrics, Severity: events.Info}.WithData(smp))
			}
		}
	}
}

// Take reads the host once and returns the sample since the previous
// call (nil on the first call, which only primes the counters).
func (s *Sampler) Take(ctx context.Context) (*Sample, error) {
	now := time.Now()
	cur := &counters{at: now, disks: map[string]diskStat{}, cloneCPU: map[string]uint64{}}
	cpus, err := s.readCPU(cur)
	if err != nil {
		return nil, err
	}
	smp := &Sample{Time: now.UTC(), CPUs: cpus}
	if err := s.readMemory(smp); err != nil {
		return nil, err
	}
	smp.Load1 = s.readLoad()

	prev := s.prev
	s.prev = cur
	if prev != nil {
		smp.Seconds = now.Sub(prev.at).Seconds()
		if d := cur.cpuTotal - prev.cpuTotal; d > 0 && cur.cpuTotal >= prev.cpuTotal {
			smp.CPUPercent = percent(cur.cpuBusy-prev.cpuBusy, d)
			smp.IOWaitPercent = percent(cur.cpuIOWait-prev.cpuIOWait, d)
		}
	}

	mounts := s.readMounts()
	for _, p := range s.opt.Pools(ctx) {
		ps := PoolSample{Name: p.Name, SizeBytes: p.SizeBytes, UsedBytes: p.UsedBytes, FreeBytes: p.FreeBytes}
		if dev := blockDevice(mounts, p.Path); dev != "" {
			if st, ok := s.readDisk(dev); ok {
				ps.Device = dev
				cur.disks[dev] = st
				if prev != nil && smp.Seconds > 0 {
					if old, ok := prev.disks[dev]; ok && st.ioTicksMS >= old.ioTicksMS {
						u := min(100, float64(st.ioTicksMS-old.ioTicksMS)/(smp.Seconds*10))
						ps.IOUtilPercent = &u
						ps.ReadBytesPerS = float64(st.sectorsRead-old.sectorsRead) * 512 / smp.Seconds
						ps.WriteBytesPerS = float64(st.sectorsWritten-old.sectorsWritten) * 512 / smp.Seconds
					}
				}
			}
		}
		smp.Pools = append(smp.Pools, ps)
	}

	procs := s.readProcsByUID()
	for _, c := range s.opt.Clones() {
		if c.UID == 0 {
			continue // never count root's processes as a clone's
		}
		ps := procs[c.UID]
		cs := CloneSample{ID: c.ID, Pool: c.Pool, MemoryBytes: ps.pss, Connections: ps.clients}
		cur.cloneCPU[c.ID] = ps.ticks
		if prev != nil && smp.Seconds > 0 {
			if old, ok := prev.cloneCPU[c.ID]; ok && ps.ticks >= old {
				cs.CPUPercent = float64(ps.ticks-old) / clockTicks / smp.Seconds * 100
			}
		}
		smp.Clones = append(smp.Clones, cs)
	}
	if prev == nil {
		return nil, nil //nolint:nilnil // the first call only primes the counters, as documented
	}
	return smp, nil
}

func percent(part, total uint64) float64 { return float64(part) / float64(total) * 100 }

// readCPU reads the aggregate "cpu" line of /proc/stat and counts CPUs.
func (s *Sampler) readCPU(c *counters) (int, error) {
	raw, err := os.ReadFile(filepath.Join(s.opt.ProcRoot, "stat"))
	if err != nil {
		return 0, fmt.Errorf("read CPU times: %w", err)
	}
	cpus := 0
	for line := range strings.SplitSeq(string(raw), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || !strings.HasPrefix(f[0], "cpu") {
			continue
		}
		if f[0] != "cpu" {
			cpus++
			continue
		}
		var v []uint64
		for _, x := range f[1:] {
			n, _ := strconv.ParseUint(x, 10, 64)
			v = append(v, n)
		}
		// user nice system idle iowait irq softirq steal (guest time is
		// already counted in user).
		for i, n := range v {
			if i >= 8 {
				break
			}
			c.cpuTotal += n
			if i != 3 && i != 4 {
				c.cpuBusy += n
			}
		}
		c.cpuIOWait = v[4]
	}
	if c.cpuTotal == 0 {
		return 0, errors.New("read CPU times: no cpu line in /proc/stat")
	}
	return cpus, nil
}

func (s *Sampler) readMemory(smp *Sample) error {
	raw, err := os.ReadFile(filepath.Join(s.opt.ProcRoot, "meminfo"))
	if err != nil {
		return fmt.Errorf("read memory: %w", err)
	}
	for line := range strings.SplitSeq(string(raw), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseUint(f[1], 10, 64)
		switch f[0] {
		case "MemTotal:":
			smp.MemTotalBytes = kb << 10
		case "MemAvailable:":
			smp.MemAvailableBytes = kb << 10
		}
	}
	return nil
}

func (s *Sampler) readLoad() float64 {
	raw, err := os.ReadFile(filepath.Join(s.opt.ProcRoot, "loadavg"))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(raw))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// mount is one line of mountinfo: where, and from which source.
type mount struct{ point, source string }

func (s *Sampler) readMounts() []mount {
	raw, err := os.ReadFile(filepath.Join(s.opt.ProcRoot, "self", "mountinfo"))
	if err != nil {
		return nil
	}
	var out []mount
	for line := range strings.SplitSeq(string(raw), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 2 {
			continue
		}
		out = append(out, mount{point: unescapeMount(f[4]), source: g[1]})
	}
	return out
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// blockDevice is the kernel name (loop3, dm-2, sda1) of the block device
// that the mount holding path comes from, "" when it has none.
func blockDevice(mounts []mount, path string) string {
	best := mount{}
	for _, m := range mounts {
		if (path == m.point || strings.HasPrefix(path, strings.TrimSuffix(m.point, "/")+"/")) && len(m.point) >= len(best.point) {
			best = m
		}
	}
	if !strings.HasPrefix(best.source, "/dev/") {
		return ""
	}
	dev, err := filepath.EvalSymlinks(best.source) // /dev/mapper/x -> /dev/dm-2
	if err != nil {
		dev = best.source
	}
	return filepath.Base(dev)
}

// readDisk reads /sys/class/block/DEV/stat.
func (s *Sampler) readDisk(dev string) (diskStat, bool) {
	raw, err := os.ReadFile(filepath.Join(s.opt.SysRoot, "class", "block", dev, "stat")) //nolint:gosec // G304: a /sys file of a device name from mountinfo
	if err != nil {
		return diskStat{}, false
	}
	f := strings.Fields(string(raw))
	if len(f) < 10 {
		return diskStat{}, false
	}
	n := func(i int) uint64 { v, _ := strconv.ParseUint(f[i], 10, 64); return v }
	return diskStat{sectorsRead: n(2), sectorsWritten: n(6), ioTicksMS: n(9)}, true
}

// procUse is what the processes of one uid use.
type procUse struct {
	ticks   uint64 // utime+stime
	pss     uint64
	clients int
}

// readProcsByUID sums CPU ticks, PSS and client backends per process
// owner, in one pass over /proc.
func (s *Sampler) readProcsByUID() map[uint32]procUse {
	out := map[uint32]procUse{}
	entries, err := os.ReadDir(s.opt.ProcRoot)
	if err != nil {
		return out
	}
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		dir := filepath.Join(s.opt.ProcRoot, e.Name())
		info, err := os.Stat(dir)
		if err != nil {
			continue
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if !ok || st.Uid == 0 {
			continue
		}
		u := out[st.Uid]
		if raw, err := os.ReadFile(filepath.Join(dir, "stat")); err == nil { //nolint:gosec // G304: a /proc file

			str := string(raw)
			if f := strings.Fields(str[strings.LastIndexByte(str, ')')+1:]); len(f) > 12 {
				ut, _ := strconv.ParseUint(f[11], 10, 64)
				sy, _ := strconv.ParseUint(f[12], 10, 64)
				u.ticks += ut + sy
			}
		}
		u.pss += pss(filepath.Join(dir, "smaps_rollup"))
		if raw, err := os.ReadFile(filepath.Join(dir, "cmdline")); err == nil && clientBackend(raw) { //nolint:gosec // G304: a /proc file
			u.clients++
		}
		out[st.Uid] = u
	}
	return out
}

func pss(path string) uint64 {
	f, err := os.Open(path) //nolint:gosec // G304: a /proc file
	if err != nil {
		return 0
	}
	defer func() { _ = f.Close() }() // read-only
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := bytes.CutPrefix(sc.Bytes(), []byte("Pss:")); ok {
			kb, _ := strconv.ParseUint(string(bytes.TrimSpace(bytes.TrimSuffix(bytes.TrimSpace(v), []byte("kB")))), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// clientBackend tells a client backend's process title ("postgres: USER
// DB HOST(PORT) STATE" or "... [local] STATE") from a background
// process's ("postgres: checkpointer"). The title is the clone user's to
// change: the count only describes that clone.
func clientBackend(cmdline []byte) bool {
	title, ok := strings.CutPrefix(strings.TrimRight(string(cmdline), "\x00 "), "postgres: ")
	if !ok {
		return false
	}
	f := strings.Fields(title)
	return len(f) >= 3 && (f[2] == "[local]" || strings.HasSuffix(f[2], ")"))
}
