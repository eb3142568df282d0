package reflink

import (
	"encoding/binary"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// spaceUse is what one tree of reflink copies occupies.
type spaceUse struct {
	// referenced is the bytes its files' extents cover, shared or not:
	// the tree's logical size on disk.
	referenced uint64
	// exclusive is the bytes of extents no other file on the filesystem
	// shares: what deleting the tree would free. For a clone, that is what
	// it wrote since it was made; for a snapshot, what main changed since.
	exclusive uint64
}

// sizeTTL is how long a measurement is reused: the clone engine reads a
// snapshot on every clone it makes, and walking a large data directory
// each time would cost more than the clone itself.
const sizeTTL = 30 * time.Second

// sizeCache holds recent measurements by directory.
type sizeCache struct {
	mu sync.Mutex
	m  map[string]cachedUse
}

type cachedUse struct {
	use spaceUse
	at  time.Time
}

// measure is the package's measure, reusing a result younger than sizeTTL.
func (c *sizeCache) measure(dir string) (spaceUse, error) {
	c.mu.Lock()
	if e, ok := c.m[dir]; ok && time.Since(e.at) < sizeTTL {
		c.mu.Unlock()
		return e.use, nil
	}
	c.mu.Unlock()
	u, err := measure(dir)
	if err != nil {
		return u, err
	}
	c.mu.Lock()
	if c.m == nil {
		c.m = map[string]cachedUse{}
	}
	c.m[dir] = cachedUse{use: u, at: time.Now()}
	c.mu.Unlock()
	return u, nil
}

// forget drops the measurement of a removed tree, whose path a new one
// may reuse.
func (c *sizeCache) forget(dir string) {
	c.mu.Lock()
	delete(c.m, dir)
	c.mu.Unlock()
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
func measure(dir string) (spaceUse, error) {
	var total spaceUse
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
		total.referenced += u.referenced
		total.exclusive += u.exclusive
		return nil
	})
	return total, err
}

func fileExtents(path string, buf []byte) (spaceUse, error) {
	f, err := os.Open(path)
	if err != nil {
		return spaceUse{}, err
	}
	defer f.Close()
	var u spaceUse
	var start uint64
	ne := binary.NativeEndian
	for {
		clear(buf[:fiemapHeaderSize])
		ne.PutUint64(buf[0:], start)      // fm_start
		ne.PutUint64(buf[8:], ^uint64(0)) // fm_length: to the end
		ne.PutUint32(buf[24:], fiemapBatch)
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&buf[0]))); errno != 0 {
			return u, syscall.Errno(errno)
		}
		mapped := ne.Uint32(buf[20:])
		if mapped == 0 {
			return u, nil
		}
		var last bool
		for i := uint32(0); i < mapped; i++ {
			e := buf[fiemapHeaderSize+int(i)*fiemapExtentSize:]
			logical, length, flags := ne.Uint64(e[0:]), ne.Uint64(e[16:]), ne.Uint32(e[40:])
			u.referenced += length
			if flags&fiemapExtentShared == 0 {
				u.exclusive += length
			}
			start = logical + length
			last = flags&fiemapExtentLast != 0
		}
		if last {
			return u, nil
		}
	}
}
