package billing_test

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/thinlab/thinlab/platform/billing"
	"github.com/thinlab/thinlab/platform/store"
)

// BenchmarkBillingReport measures the hourly billing report for
// THINLAB_BENCH_ORGS (10,000) organizations, each with a Stripe customer
// and usage received in the hour: computing the hour's reports (one
// query over the usage rows, 2 reports per organization) and sending all
// of them to stripe-mock (a local process behind the recording proxy) as
// meter events with their idempotency keys. The organizations, agents
// and usage rows are made with SQL; stripe-mock answers each request
// itself, so the figure is the platform's side plus a local Stripe.
func BenchmarkBillingReport(b *testing.B) {
	nOrgs := 10000
	if v, err := strconv.Atoi(os.Getenv("THINLAB_BENCH_ORGS")); err == nil && v > 0 {
		nOrgs = v
	}
	s := newSetupTB(b)
	hour := time.Now().UTC().Truncate(time.Hour).Add(-2 * time.Hour)
	for _, q := range []string{
		`INSERT INTO organizations (id, slug, name, created_at) SELECT 'borg_' || i, 'borg-' || i, 'Org ' || i, now() FROM generate_series(1, $1) i`,
		`INSERT INTO agents (id, org_id, name, credential_hash) SELECT 'bagt_' || i, 'borg_' || i, 'db', decode(md5('bench' || i), 'hex') FROM generate_series(1, $1) i`,
		`INSERT INTO billing_accounts (org_id, stripe_customer_id) SELECT 'borg_' || i, 'cus_bench' || i FROM generate_series(1, $1) i`,
	} {
		if err := s.env.Exec(q, nOrgs); err != nil {
			b.Fatal(err)
		}
	}
	for round := range b.N {
		h := hour.Add(-time.Duration(round) * time.Hour)
		if err := s.env.Exec(`INSERT INTO usage_clone_periods (agent_id, org_id, sample_id, clone_id, period_from, period_to, seconds, diff_bytes, received_at)
			SELECT 'bagt_' || i, 'borg_' || i, 's' || $2::int || '-' || c, 'c' || c, $3, $3::timestamptz + interval '1 minute', 60, 1073741824, $3::timestamptz + interval '10 minutes'
			FROM generate_series(1, $1) i, generate_series(1, 3) c`, nOrgs, round, h); err != nil {
			b.Fatal(err)
		}
	}
	var elapsed, computing time.Duration
	var sentTotal int
	b.ResetTimer()
	for round := range b.N {
		h := hour.Add(-time.Duration(round) * time.Hour)
		t0 := time.Now()
		if did, err := s.bill.ComputeHour(b.Context(), h); err != nil || !did {
			b.Fatalf("ComputeHour: %v %v", did, err)
		}
		computing += time.Since(t0)
		sent, failed, err := s.bill.SendDue(b.Context())
		elapsed += time.Since(t0)
		if err != nil || failed != 0 || sent != 2*nOrgs {
			b.Fatalf("SendDue: sent %d failed %d %v, want %d sent", sent, failed, err, 2*nOrgs)
		}
		sentTotal += sent
	}
	b.StopTimer()
	if n := len(s.mock.Requests(meterEvents)); n != sentTotal {
		b.Fatalf("%d meter events reached stripe-mock, want %d", n, sentTotal)
	}
	reps, err := s.env.Store.ListUsageReports(b.Context(), "borg_1", 10)
	if err != nil || len(reps) < 2 || reps[0].Status != store.ReportSent || reps[0].IdempotencyKey != billing.IdempotencyKey("borg_1", reps[0].PeriodStart, reps[0].Meter) {
		b.Fatalf("reports of borg_1: %+v %v", reps, err)
	}
	per := elapsed.Seconds() / float64(b.N)
	b.ReportMetric(per, "s/report")
	fmt.Printf("BENCH billing_report_s %.2f s (%d organizations, %d meter events to stripe-mock; computing the hour %.2f s, sending %.2f s)\n",
		per, nOrgs, 2*nOrgs, computing.Seconds()/float64(b.N), (elapsed-computing).Seconds()/float64(b.N))
}
