package pgcluster

import (
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/thinlab/thinlab/internal/testenv"
)

// TestAsUserNeverTakesTheMainThread: a goroutine that ends locked to the
// process's main thread does not end the thread (Go cannot), it parks it
// for good. Had AsUser dropped that thread's credentials, the process's
// leader would keep a clone's uid, and that clone's user could then kill
// the whole agent (kill -9 -1 from COPY ... TO PROGRAM reaches processes
// whose leader runs as the same uid). Thousands of calls, then the
// leader's credentials must still be root's.
func TestAsUserNeverTakesTheMainThread(t *testing.T) {
	testenv.NeedsRoot(t, "root (AsUser changes credentials)")
	const uid = 3999999
	var wg sync.WaitGroup
	for range 200 {
		for range 16 {
			wg.Go(func() {
				if err := AsUser(uid, uid, func() error { return nil }); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
	}
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(raw), "\n") {
		if strings.HasPrefix(line, "Uid:") || strings.HasPrefix(line, "Gid:") {
			if f := strings.Fields(line); len(f) != 5 || f[1] != "0" || f[2] != "0" || f[3] != "0" || f[4] != "0" {
				t.Fatalf("the process's main thread has %q after AsUser calls, want root's", line)
			}
		}
	}
}
