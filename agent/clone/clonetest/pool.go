// Package clonetest gives clone and retrieval tests a real copy-on-write
// pool (btrfs on a loop file unless asked otherwise), removed at cleanup,
// and Fill to put data and a snapshot into it.
package clonetest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/runtime"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/storagetest"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

// NewPool makes a 4 GiB btrfs pool on a fresh loop file and removes
// everything at cleanup.
func NewPool(t testing.TB) storage.Pool {
	t.Helper()
	return NewPoolSize(t, "4G")
}

// NewPoolSize is NewPool with a loop file of size (truncate -s syntax such
// as "8G" or "512M"; sparse).
func NewPoolSize(t testing.TB, size string) storage.Pool {
	t.Helper()
	return NewPoolMode(t, storage.ModeBtrfs, size)
}

// NewPoolMode is NewPoolSize for another backend: btrfs, reflink or zfs.
func NewPoolMode(t testing.TB, mode, size string) storage.Pool {
	t.Helper()
	n, err := parseSize(size)
	if err != nil {
		t.Fatal(err)
	}
	return storagetest.NewLoopPoolSize(t, mode, n)
}

// parseSize reads a byte count with an optional K, M, G or T suffix
// (powers of 1024).
func parseSize(s string) (int64, error) {
	mult := int64(1)
	num := strings.TrimSpace(s)
	if num != "" {
		switch strings.ToUpper(num[len(num)-1:]) {
		case "K":
			mult = 1 << 10
		case "M":
			mult = 1 << 20
		case "G":
			mult = 1 << 30
		case "T":
			mult = 1 << 40
		}
		if mult > 1 {
			num = num[:len(num)-1]
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("pool size %q: want a positive number with an optional K, M, G or T suffix", s)
	}
	return n * mult, nil
}

// KillClones stops every postgres running in p's clones and destroys the
// clones: test cleanup that leaves nothing behind even when the test
// failed half-way (the pool's own cleanup destroys the pool).
func KillClones(p storage.Pool) {
	procs, _ := runtime.Postmasters()
	clones, _ := p.Clones(context.Background())
	owner, _ := pgcluster.LookupUser("postgres")
	for _, c := range clones {
		for _, pr := range procs {
			if strings.HasPrefix(pr.DataDir, c.Mountpoint+"/") {
				// The process runs in this pool's clone: its uid is a
				// clone's own (or the pool owner's). Without limits New
				// cannot fail.
				if rt, err := runtime.New(runtime.Options{User: owner, CloneUIDFrom: pr.UID, CloneUIDTo: pr.UID}); err == nil {
					rt.KillPID(pr)
				}
			}
		}
		// Best effort, as everything here: the pool's own cleanup fails on
		// what is left mounted.
		_ = runtime.Unmount(c.Mountpoint)
		_ = p.DestroyClone(context.Background(), c.Name)
	}
}

// Config is an agent configuration for tests on p: p as the only pool, a
// state directory removed at cleanup, and a range of ports clone ports.
// The range is random, so that parallel test packages do not collide,
// and below Linux's ephemeral range (32768+), where outgoing connections
// and kernel-chosen test ports would collide with the clones'. The caller
// adds what its test needs and validates it.
func Config(t testing.TB, p storage.Pool, ports int) *config.Config {
	cfg := config.Default()
	cfg.Pools = []config.Pool{{Name: p.Name(), Mode: p.Mode(), Path: p.MainDir()}}
	// Any start in 20000-32699, not slots of 100: two test packages'
	// small ranges overlap far less often.
	from := 20000 + rand.IntN(12700-ports)
	cfg.Provision.PortPool = config.PortPool{From: from, To: from + ports - 1}
	cfg.StateDir = t.TempDir()
	// The agent refuses to serve without a token (issue 8).
	cfg.Server.VerificationToken = config.GenerateToken()
	// Clone uids are random too: parallel test agents on one host must
	// not hand the same uid to two clones.
	uidFrom := 300000 + rand.Uint32N(100000)*100
	cfg.Provision.CloneUIDs = config.IDRange{From: uidFrom, To: uidFrom + 99}
	t.Cleanup(func() {
		if err := os.RemoveAll(runtime.RunDirFor(cfg.StateDir)); err != nil {
			t.Errorf("remove the run directory: %v", err)
		}
	})
	return cfg
}
