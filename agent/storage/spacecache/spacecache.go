// Package spacecache keeps recent measurements of the space a dataset
// occupies, for the backends that measure by walking files or asking the
// filesystem per dataset (btrfs, reflink): the clone engine reads a
// snapshot on every clone it makes, and measuring a large data directory
// each time would cost more than the clone itself.
package spacecache

import (
	"sync"
	"time"
)

// Use is what one dataset (a subvolume, a directory tree) occupies.
type Use struct {
	// Referenced is the data the dataset's files point at, shared or not:
	// its logical size.
	Referenced uint64
	// Exclusive is the data no other dataset points at: what deleting it
	// would free (for a clone, what it wrote since it was made; for a
	// snapshot, what main changed since).
	Exclusive uint64
}

// TTL is how long a measurement is reused.
const TTL = 30 * time.Second

// Cache holds measurements by path. The zero value is ready to use.
type Cache struct {
	mu sync.Mutex
	m  map[string]entry
}

type entry struct {
	use Use
	at  time.Time
}

// Get returns path's measurement if it is younger than TTL.
func (c *Cache) Get(path string) (Use, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[path]
	if !ok || time.Since(e.at) >= TTL {
		return Use{}, false
	}
	return e.use, true
}

// Put records a measurement of path taken now.
func (c *Cache) Put(path string, u Use) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]entry{}
	}
	c.m[path] = entry{use: u, at: time.Now()}
}

// Forget drops the measurement of a destroyed dataset, whose path a new
// one may reuse.
func (c *Cache) Forget(path string) {
	c.mu.Lock()
	delete(c.m, path)
	c.mu.Unlock()
}
