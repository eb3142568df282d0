package usage_test

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/thinlab/thinlab/platform/platformtest"
	"github.com/thinlab/thinlab/platform/server"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkUsageIngest measures usage samples stored per second by one
// platform replica from THINLAB_BENCH_AGENTS (1,000) simulated agents at
// once, each sending THINLAB_BENCH_SAMPLES (20) samples of 5 clones and
// one pool, one batch per sample as a real agent sends them. The agents
// are simulated: each is a goroutine calling the hub's ingestion function
// (server.StoreAgentEvents, what the hub's OnEvents runs for a batch
// read from the agent's events stream) on the real platform database,
// without a websocket per agent (the tunnel's own cost with 1,000 agents
// is BenchmarkFleet in internal/tunnele2e). It checks that every sample
// was stored.
func BenchmarkUsageIngest(b *testing.B) {
	nAgents, nSamples := envInt("THINLAB_BENCH_AGENTS", 1000), envInt("THINLAB_BENCH_SAMPLES", 20)
	const clonesPerSample = 5
	env := platformtest.New(b)
	ctx := b.Context()
	owner := env.User("bench@example.com")
	var agents []string
	for o := range (nAgents + 9) / 10 {
		org := env.Org(fmt.Sprintf("bench-%d", o), owner)
		_, secret, err := env.Store.CreateEnrollmentToken(ctx, org.ID, owner.ID, "fleet", time.Now().Add(time.Hour), nil)
		if err != nil {
			b.Fatal(err)
		}
		for a := 0; a < 10 && len(agents) < nAgents; a++ {
			ag, _, _, err := env.Store.Enroll(ctx, secret, tunnel.AgentFacts{Name: fmt.Sprintf("db-%d", a)})
			if err != nil {
				b.Fatal(err)
			}
			agents = append(agents, ag.ID)
		}
	}
	start := time.Now().UTC().Add(-time.Duration(nSamples) * time.Minute)
	batches := func(round, agent int) [][]tunnel.Event {
		out := make([][]tunnel.Event, nSamples)
		for i := range nSamples {
			from := start.Add(time.Duration(i) * time.Minute)
			smp := tunnel.UsageSample{From: from, To: from.Add(time.Minute), Pools: []tunnel.UsagePool{{Name: "pool1", UsedBytes: 10 << 30, Snapshots: 3, Clones: clonesPerSample}}}
			for c := range clonesPerSample {
				smp.Clones = append(smp.Clones, tunnel.UsageCloneSample{ID: fmt.Sprintf("clone-%d", c), Pool: "pool1", Seconds: 60, DiffBytes: 64 << 20, LogicalBytes: 10 << 30})
			}
			raw, _ := json.Marshal(smp)
			out[i] = []tunnel.Event{{ID: fmt.Sprintf("usage-r%d-a%d-%d", round, agent, from.UnixNano()), Time: smp.To, Kind: tunnel.EventKindUsage, Severity: "info", Data: raw}}
		}
		return out
	}
	var total float64
	var elapsed time.Duration
	b.ResetTimer()
	for round := range b.N {
		b.StopTimer()
		work := make([][][]tunnel.Event, len(agents))
		for i := range agents {
			work[i] = batches(round, i)
		}
		b.StartTimer()
		t0 := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, len(agents))
		for i, id := range agents {
			wg.Go(func() {
				for _, batch := range work[i] {
					if err := server.StoreAgentEvents(ctx, env.Store, nil, id, batch); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		elapsed += time.Since(t0)
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		total += float64(len(agents) * nSamples)
	}
	b.StopTimer()
	want := strconv.Itoa(b.N * len(agents) * nSamples * clonesPerSample)
	if got := env.QueryStrings("SELECT count(*)::text FROM usage_clone_periods"); got[0] != want {
		b.Fatalf("%s clone rows stored, want %s", got[0], want)
	}
	rate := total / elapsed.Seconds()
	b.ReportMetric(rate, "samples/s")
	fmt.Printf("BENCH usage_samples_per_s %.0f samples/s (%d agents x %d samples of %d clones, %.1f s)\n", rate, len(agents), nSamples, clonesPerSample, elapsed.Seconds())
}
