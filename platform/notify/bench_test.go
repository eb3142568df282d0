package notify_test

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
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
		starts := map[string]time.Time{}
		base := len(mp.Messages())
		for j := range events {
			start := time.Now()
			starts[fmt.Sprintf("pool-%d-%d", i, j)] = start
			if _, err := n.Record(b.Context(), env.Store, notify.Event{
				OrgID: org.ID, Name: notify.RefreshSkipped, Target: fmt.Sprintf("pool-%d-%d", i, j), SourceKey: fmt.Sprintf("bench-%d-%d", i, j),
			}); err != nil {
				b.Fatal(err)
			}
			n.Committed()
			ms := mp.WaitFor(base + j + 1)
			lat = append(lat, ms[0].Created.Sub(start)) // newest first
		}
		// The worker's side: the delivery recorded (after the server took
		// the message and QUIT), from the outbox.
		var sent []time.Duration
		for _, row := range env.QueryStrings(`SELECT e.target || ' ' || to_char(o.delivered_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
			FROM notification_outbox o JOIN notification_events e ON e.id = o.event_id WHERE o.channel = 'email' AND o.state = 'delivered'`) {
			target, at, _ := strings.Cut(row, " ")
			ts, err := time.Parse(time.RFC3339Nano, at)
			if start, ok := starts[target]; ok && err == nil {
				sent = append(sent, ts.Sub(start))
			}
		}
		p := func(ds []time.Duration, q float64) float64 {
			slices.Sort(ds)
			return float64(ds[min(len(ds)-1, int(q*float64(len(ds))))].Microseconds()) / 1000
		}
		fmt.Printf("BENCH notify_email_p50 %.1f ms\n", p(lat, 0.50))
		fmt.Printf("BENCH notify_email_p99 %.1f ms\n", p(lat, 0.99))
		fmt.Printf("BENCH notify_email_max %.1f ms (%d events)\n", p(lat, 1), len(lat))
		if len(sent) > 0 {
			fmt.Printf("BENCH notify_email_recorded_p50 %.1f ms\n", p(sent, 0.50))
			fmt.Printf("BENCH notify_email_recorded_p99 %.1f ms (%d)\n", p(sent, 0.99), len(sent))
		}
	}
}
