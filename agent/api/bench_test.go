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

// BenchmarkWarmCloneReadyOverAPI measures, through the HTTP API and the
// SDK, POST /clone until the clone is OK when a warm clone serves it
// (cloning.warm.count 2), over 20 clones on a btrfs loop pool with a
// small database. Before each create the benchmark waits (untimed) until
// the background refill is done (both warm clones ready, none starting):
// the time is that of a take on an agent that is not building a clone at
// the same moment. Each clone's answer is checked after the timing. Run: go test -run '^$'
// -bench WarmCloneReadyOverAPI -benchtime 1x ./agent/api/
func BenchmarkWarmCloneReadyOverAPI(b *testing.B) {
	e := newWarmEnv(b, 2, 26, []string{"CREATE TABLE t (v text)", "INSERT INTO t SELECT md5(g::text) FROM generate_series(1, 100000) g"})
	e.client.PollInterval = 10 * time.Millisecond
	const n = 20
	for i := 0; i < b.N; i++ {
		var took, inside []time.Duration
		var ids []string
		for j := range n {
			e.waitWarmFull(2)
			id := "warm" + strconv.Itoa(i) + "x" + strconv.Itoa(j)
			start := time.Now()
			c := e.createOK(e.createReq(id, ""))
			took = append(took, time.Since(start))
			inside = append(inside, time.Duration(c.Metadata.CloningTime*float64(time.Second)))
			ids = append(ids, id)
			if got := query(e.ctx, b, c, goodPassword, "SELECT count(*)::text FROM t"); got != "100000" {
				b.Fatalf("clone %s answered %s rows", id, got)
			}
		}
		st, err := e.client.Status(e.ctx)
		if err != nil {
			b.Fatal(err)
		}
		if st.Cloning.Warm == nil || st.Cloning.Warm.Taken != uint64(n*(i+1)) {
			b.Fatalf("warm clones taken: %+v, want %d", st.Cloning.Warm, n*(i+1))
		}
		for _, id := range ids {
			e.destroy(id)
		}
		slices.Sort(took)
		fmt.Printf("BENCH warm_clone_ready_p50 %.1f ms\n", float64(took[n/2-1].Microseconds())/1000)
		fmt.Printf("BENCH warm_clone_ready_p95 %.1f ms\n", float64(took[n*95/100-1].Microseconds())/1000)
		fmt.Printf("BENCH warm_clone_ready_max %.1f ms\n", float64(took[n-1].Microseconds())/1000)
		slices.Sort(inside)
		fmt.Printf("BENCH warm_clone_take_p50 %.1f ms   (the clone's cloningTime: inside the engine, without the HTTP request, branch and snapshot lookups)\n", float64(inside[n/2-1].Microseconds())/1000)
		e.waitWarmFull(2)
		if st, err = e.client.Status(e.ctx); err != nil {
			b.Fatal(err)
		}
		fmt.Printf("BENCH warm_clone_memory_mib %.1f MiB   (PSS of the %d warm clones' processes)\n", float64(st.Cloning.Warm.MemoryBytes)/(1<<20), st.Cloning.Warm.Ready)
	}
}
