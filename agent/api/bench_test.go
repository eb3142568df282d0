package api_test

import (
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"
)

// BenchmarkCloneReadyOverAPI measures, through the HTTP API and the SDK,
// the time from POST /clone to the clone answering queries with its user
// (GET /clone polled every 10ms), on a btrfs loop pool with a small
// database. Run: go test -run '^$' -bench CloneReadyOverAPI -benchtime 1x ./agent/api/
func BenchmarkCloneReadyOverAPI(b *testing.B) {
	e := newEnv(b, 12, []string{"CREATE TABLE t (v text)", "INSERT INTO t SELECT md5(g::text) FROM generate_series(1, 100000) g"})
	e.client.PollInterval = 10 * time.Millisecond
	const n = 10
	for i := 0; i < b.N; i++ {
		var took []time.Duration
		for j := range n {
			id := "bench" + strconv.Itoa(i) + "x" + strconv.Itoa(j)
			start := time.Now()
			e.createOK(e.createReq(id, ""))
			took = append(took, time.Since(start))
		}
		for j := range n {
			e.destroy("bench" + strconv.Itoa(i) + "x" + strconv.Itoa(j))
		}
		slices.Sort(took)
		fmt.Printf("BENCH api_clone_ready_p50 %.0f ms\n", float64(took[n/2].Microseconds())/1000)
		fmt.Printf("BENCH api_clone_ready_max %.0f ms\n", float64(took[n-1].Microseconds())/1000)
	}
}
