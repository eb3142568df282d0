package reflink

import (
	"encoding/binary"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/thinlab/thinlab/agent/storage/spacecache"
)

// measured is measure, reusing a result younger than spacecache.TTL.
func (p *Pool) measured(dir string) (spacecache.Use, error) {
	if u, ok := p.sizes.Get(dir); ok {
		return u, nil
	}
	u, err := measure(dir)
	if err != nil {
		return u, err
	}
	p.sizes.Put(dir, u)
	return u, nil
}

// FIEMAP ABI (linux/fiemap.h).
const (
	fsIocFiemap        = 0xc020660b // _IOWR('f', 11, struct fiemap)
	fiemapHeaderSize   = 32
	fiemapExtentSize   = 56
	fiemapExtentLast   = 0x1
	fiemapExtentShared = 0x2000
	fiemapBatch        = 128
)

// measure walks dir and asks the filesystem, file by file, which extents
// are shared (FIEMAP_EXTENT_SHARED). It reads extent maps only, never
// data, but it is still one ioctl per file and batch of extents: a
// PostgreSQL data directory of a few thousand files takes milliseconds.
// Extents not yet allocated (delayed allocation) count as exclusive, which
// they will be. Directories and inodes themselves are not counted.
func measure(dir string) (spacecache.Use, error) {
	var total spacecache.Use
	buf := make([]byte, fiemapHeaderSize+fiemapBatch*fiemapExtentSize)
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil // removed while walking
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		u, err := fileExtents(path, buf)
		if err != nil {
			return nil // vanished or unsupported: counts as nothing
		}
		total.Referenced += u.Referenced
		total.Exclusive += u.Exclusive
		return nil
	})
	return total, err
}

func fileExtents(path string, buf []byte) (spacecache.Use, error) {
	f, err := os.Open(path) //nolint:gosec // G304: a file inside the configured pool, opened read-only for FIEMAP
	if err != nil {
		return spacecache.Use{}, err
	}
	defer func() { _ = f.Close() }() // opened read-only: Close cannot lose data
	var u spacecache.Use
	var start uint64
	ne := binary.NativeEndian
	for {
		clear(buf[:fiemapHeaderSize])
		ne.PutUint64(buf[0:], start)      // fm_start
		ne.PutUint64(buf[8:], ^uint64(0)) // fm_length: to the end
		ne.PutUint32(buf[24:], fiemapBatch)
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&buf[0]))); errno != 0 { //nolint:gosec // G103: the ioctl takes a pointer to its argument buffer
			return u, syscall.Errno(errno)
		}
		mapped := ne.Uint32(buf[20:])
		if mapped == 0 {
			return u, nil
		}
		var last bool
		for i := range mapped {
			e := buf[fiemapHeaderSize+int(i)*fiemapExtentSize:]
			logical, length, flags := ne.Uint64(e[0:]), ne.Uint64(e[16:]), ne.Uint32(e[40:])
			u.Referenced += length
			if flags&fiemapExtentShared == 0 {
				u.Exclusive += length
			}
			start = logical + length
			last = flags&fiemapExtentLast != 0
		}
		if last {
			return u, nil
		}
	}
}
