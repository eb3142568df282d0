package notify_test

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/thinlab/thinlab/internal/mailpittest"
	"github.com/thinlab/thinlab/platform/notify"
	"github.com/thinlab/thinlab/platform/platformtest"
	"github.com/thinlab/thinlab/platform/server"
)

// BenchmarkNotifyEmail measures event to delivered email: from the commit
// of an event's transaction (a warning, emailed to the organization's one
// member) to the time Mailpit, a real SMTP server on loopback with
// STARTTLS and AUTH, stored the message (its Created time, same host
// clock). Events go one at a time (each waits for its email), so the
// figure is the pipeline's latency, not queueing: the platform's worker
// is woken by the commit (notify.Notifier.Committed), claims the message
// (FOR UPDATE SKIP LOCKED), renders it and speaks SMTP with a new
// connection per message. THINLAB_BENCH_NOTIFY_EVENTS sets the count (200).
// Run with -benchtime 1x.
func BenchmarkNotifyEmail(b *testing.B) {
	events := 200
	if v, err := strconv.Atoi(os.Getenv("THINLAB_BENCH_NOTIFY_EVENTS")); err == nil && v > 0 {
		events = v
	}
	mp := mailpittest.Start(b)
	env := platformtest.New(b, platformtest.WithConfig(func(c *server.Config) { c.Notifications = testConfig(mp) }))
	owner := env.User("owner@bench.example")
	org := env.Org("bench", owner)
	n := env.Server.Notifier()
	for i := 0; i < b.N; i++ {
		var lat []time.Duration
		base := len(mp.Messages())
		for j := range events {
			start := time.Now()
			if _, err := n.Record(b.Context(), env.Store, notify.Event{
				OrgID: org.ID, Name: notify.RefreshSkipped, Target: fmt.Sprintf("pool-%d-%d", i, j), SourceKey: fmt.Sprintf("bench-%d-%d", i, j),
			}); err != nil {
				b.Fatal(err)
			}
			n.Committed()
			ms := mp.WaitFor(base + j + 1)
			lat = append(lat, ms[0].Created.Sub(start)) // newest first
		}
		slices.Sort(lat)
		p := func(q float64) float64 {
			return float64(lat[min(len(lat)-1, int(q*float64(len(lat))))].Microseconds()) / 1000
		}
		fmt.Printf("BENCH notify_email_p50 %.1f ms\n", p(0.50))
		fmt.Printf("BENCH notify_email_p99 %.1f ms\n", p(0.99))
		fmt.Printf("BENCH notify_email_max %.1f ms (%d events)\n", float64(lat[len(lat)-1].Microseconds())/1000, len(lat))
	}
}
