package btrfs

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/thinlab/thinlab/agent/storage/spacecache"
)

// spaceUse measures subvolumes. With quotas enabled (`btrfs quota enable`)
// it reads the qgroup of each subvolume: exact, but refreshed only when
// btrfs commits a transaction (every 30 s by default, or on sync), so a
// clone made a moment ago may show 16 KiB. Without quotas it runs one
// `btrfs filesystem du -s`, which walks the files' extent maps: Total is
// the referenced bytes and Exclusive the bytes of extents no other file in
// the filesystem shares; it costs a walk of every file, so it is only run
// on the subvolumes asked for. Either way the numbers count data btrfs has
// written out: what a clone wrote a moment ago sits in the page cache
// (delayed allocation) and shows up after the next commit (30 s by
// default) or sync. The pool does not sync to measure, which would stall
// every clone's writes. Quotas are not enabled by the pool: on large
// filesystems they slow down snapshot deletion, which is an
// administrator's call.
//
// Measurements are cached for spacecache.TTL (btrfs itself reports new
// writes only after its next commit, 30 s by default).
func (p *Pool) spaceUse(ctx context.Context, paths []string) (map[string]spacecache.Use, error) {
	out := make(map[string]spacecache.Use, len(paths))
	var missing []string
	for _, path := range paths {
		if u, ok := p.sizes.Get(path); ok {
			out[path] = u
		} else {
			missing = append(missing, path)
		}
	}
	if len(missing) == 0 {
		return out, nil
	}
	measured, err := p.measure(ctx, missing)
	if err != nil {
		return nil, err
	}
	for path, u := range measured {
		out[path] = u
		p.sizes.Put(path, u)
	}
	return out, nil
}

func (p *Pool) measure(ctx context.Context, paths []string) (map[string]spacecache.Use, error) {
	out := make(map[string]spacecache.Use, len(paths))
	if q, ok := p.qgroups(ctx); ok {
		complete := true
		for _, path := range paths {
			id, err := subvolumeID(path)
			if err != nil {
				complete = false
				break
			}
			u, ok := q[id]
			if !ok {
				complete = false
				break
			}
			out[path] = u
		}
		if complete {
			return out, nil
		}
	}
	args := append([]string{"filesystem", "du", "-s", "--raw", "--"}, paths...)
	var stdout []byte
	var err error
	var parsed map[string]spacecache.Use
	// du walks every file: while a clone's idmapped mount is attached or
	// its postgres starts, the walk can fail on files that come and go
	// ("cannot check space of ...: No such file or directory"). That is
	// transient, and a short pause gets the numbers.
	for attempt := range 3 {
		if attempt > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		stdout, err = p.cfg.Runner.Run(ctx, "btrfs", args...)
		parsed = parseDu(stdout)
		if err == nil || len(parsed) > 0 || ctx.Err() != nil {
			break
		}
	}
	for _, path := range paths {
		if u, ok := parsed[path]; ok {
			out[path] = u
		}
	}
	// A subvolume destroyed while du ran makes it fail for that path only;
	// the others' numbers are still right.
	if err != nil && len(parsed) == 0 {
		return nil, fmt.Errorf("btrfs pool %s: measure space: %w", p.cfg.Name, err)
	}
	return out, nil
}

// parseDu reads `btrfs filesystem du -s --raw` output:
//
//	   Total   Exclusive  Set shared  Filename
//	41943040        4096    41938944  /mnt/main
func parseDu(out []byte) map[string]spacecache.Use {
	res := map[string]spacecache.Use{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimLeft(sc.Text(), " ")
		var nums [3]uint64
		ok := true
		for i := range nums {
			end := strings.IndexByte(line, ' ')
			if end < 0 {
				ok = false
				break
			}
			n, err := strconv.ParseUint(line[:end], 10, 64)
			if err != nil {
				ok = false
				break
			}
			nums[i] = n
			line = strings.TrimLeft(line[end:], " ")
		}
		if ok && line != "" {
			res[line] = spacecache.Use{Referenced: nums[0], Exclusive: nums[1]}
		}
	}
	return res
}

// qgroups reads the level-0 qgroups (one per subvolume) by subvolume ID;
// ok is false when quotas are not enabled.
func (p *Pool) qgroups(ctx context.Context) (map[uint64]spacecache.Use, bool) {
	out, err := p.cfg.Runner.Run(ctx, "btrfs", "qgroup", "show", "--raw", p.cfg.Path)
	if err != nil {
		return nil, false
	}
	res := parseQgroups(out)
	return res, len(res) > 0
}

// parseQgroups reads `btrfs qgroup show --raw` lines such as
// "0/257   16384   16384   main" (the path column exists since
// btrfs-progs 6.x).
func parseQgroups(out []byte) map[uint64]spacecache.Use {
	res := map[uint64]spacecache.Use{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || !strings.HasPrefix(f[0], "0/") {
			continue
		}
		id, err1 := strconv.ParseUint(f[0][2:], 10, 64)
		rfer, err2 := strconv.ParseUint(f[1], 10, 64)
		excl, err3 := strconv.ParseUint(f[2], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil {
			continue
		}
		res[id] = spacecache.Use{Referenced: rfer, Exclusive: excl}
	}
	return res
}

// btrfsIocInoLookup is BTRFS_IOC_INO_LOOKUP, _IOWR(0x94, 18, struct
// btrfs_ioctl_ino_lookup_args): given objectid 256 (a subvolume's root
// directory) it returns the subvolume's tree ID, which is its qgroup.
const btrfsIocInoLookup = 0xd0009412

func subvolumeID(path string) (uint64, error) {
	f, err := os.Open(path) //nolint:gosec // G304: a subvolume inside the configured pool
	if err != nil {
		return 0, err
	}
	defer func() { _ = f.Close() }() // opened read-only: Close cannot lose data
	// struct btrfs_ioctl_ino_lookup_args { u64 treeid; u64 objectid; char name[4080]; }
	var args [4096]byte
	binary.NativeEndian.PutUint64(args[8:16], btrfsFirstFreeObjectID)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), btrfsIocInoLookup, uintptr(unsafe.Pointer(&args[0]))); errno != 0 { //nolint:gosec // G103: the ioctl takes a pointer to its argument buffer
		return 0, fmt.Errorf("subvolume id of %s: %w", path, errno)
	}
	return binary.NativeEndian.Uint64(args[0:8]), nil
}
