package billing_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/thinlab/thinlab/internal/stripemocktest"
	"github.com/thinlab/thinlab/platform/api"
	"github.com/thinlab/thinlab/platform/billing"
	"github.com/thinlab/thinlab/platform/platformtest"
	"github.com/thinlab/thinlab/platform/server"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/platform/usage"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

const (
	webhookSecret = "whsec_platform_test_secret"
	meterEvents   = "/v1/billing/meter_events"
)

// setup is a platform with billing on, pointed at stripe-mock through the
// recording proxy: a free plan (1 clone, 1 agent, 10 GiB) and a team plan
// (5 clones, 3 agents), a grace period of one hour.
type setup struct {
	env   *platformtest.Env
	mock  *stripemocktest.Mock
	bill  *billing.Billing
	org   *store.Organization
	owner *store.User
	token string
	now   time.Time
}

func newSetup(t *testing.T, enabled bool) *setup { return newSetupWith(t, enabled) }

// newSetupTB is newSetup for benchmarks (billing on).
func newSetupTB(b *testing.B) *setup { return newSetupWith(b, true) }

func newSetupWith(t testing.TB, enabled bool) *setup {
	t.Helper()
	mock := stripemocktest.Start(t)
	env := platformtest.New(t, platformtest.WithConfig(func(c *server.Config) {
		c.Billing = billing.Config{
			Enabled: &enabled, SecretKey: "sk_test_platformtest", WebhookSecret: webhookSecret, APIURL: mock.URL,
			GracePeriod: time.Hour,
			Plans: []billing.Plan{
				{Name: "free", Limits: billing.Limits{Clones: new(1), Agents: new(1), StorageGiB: new(10)}},
				{Name: "team", PriceID: "price_team", Limits: billing.Limits{Clones: new(5), Agents: new(3)}, CloneHourCents: 10, MonthlyCents: 2000},
			},
		}
	}))
	s := &setup{env: env, mock: mock, bill: env.Server.Billing(), now: time.Now().UTC()}
	s.bill.Now = func() time.Time { return s.now }
	s.owner = env.User("owner@acme.example")
	s.org = env.Org("acme", s.owner)
	s.token = env.Token(s.org, s.owner)
	return s
}

// enroll makes an agent of the organization (through the store: no
// limit) with facts saying it holds clones clones.
func (s *setup) enroll(t *testing.T, name string, clones int) *store.Agent {
	t.Helper()
	ctx := t.Context()
	_, secret, err := s.env.Store.CreateEnrollmentToken(ctx, s.org.ID, s.owner.ID, name, time.Now().Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	ag, _, _, err := s.env.Store.Enroll(ctx, secret, tunnel.AgentFacts{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	f := tunnel.AgentFacts{Name: name, Pools: []tunnel.PoolFact{{Name: "p1", Clones: clones, UsedBytes: 1 << 30}}}
	if err := s.env.Store.UpdateAgentFacts(ctx, ag.ID, f); err != nil {
		t.Fatal(err)
	}
	return ag
}

// sample is a usage sample event of [to-period, to) with clones of
// seconds each writing diff bytes, on a pool using used bytes.
func sample(id string, to time.Time, period time.Duration, used uint64, clones map[string]float64, diff uint64) tunnel.Event {
	smp := tunnel.UsageSample{From: to.Add(-period), To: to, Pools: []tunnel.UsagePool{{Name: "p1", UsedBytes: used, Snapshots: 1, Clones: len(clones)}}}
	for c, secs := range clones {
		smp.Clones = append(smp.Clones, tunnel.UsageCloneSample{ID: c, Pool: "p1", Seconds: secs, DiffBytes: diff, LogicalBytes: 10 << 30, CloningSeconds: 0.1})
	}
	raw, _ := json.Marshal(smp)
	return tunnel.Event{ID: id, Time: to, Kind: tunnel.EventKindUsage, Data: raw}
}

// TestHourlyReportReachesStripeOnce: the usage received in an hour is
// frozen into one report per meter and sent to stripe-mock as meter
// events whose Idempotency-Key (and identifier) is derived from (org,
// hour, meter), with the right quantities; computing and sending the
// hour again sends nothing more.
func TestHourlyReportReachesStripeOnce(t *testing.T) {
	s := newSetup(t, true)
	ctx := t.Context()
	ag := s.enroll(t, "db1", 0)
	cust, err := s.bill.Customer(ctx, s.org.ID, s.org.Name)
	if err != nil || !strings.HasPrefix(cust, "cus_") {
		t.Fatalf("Stripe customer: %q %v", cust, err)
	}
	// Two clones (3600 s and 1800 s, 1 GiB written each) on a pool
	// using 3 GiB: 5400 clone-seconds; storage (1 GiB x 1 h) + (1 GiB x
	// 0.5 h) of clones + (3 - 2 GiB) x 1 h of snapshots = 2.5 GiB-h =
	// 2560 MiB-hours.
	ev := sample("usage-i1-1", s.now, time.Hour, 3<<30, map[string]float64{"c1": 3600, "c2": 1800}, 1<<30)
	if err := usage.Ingest(ctx, s.env.Store, ag.ID, []tunnel.Event{ev}); err != nil {
		t.Fatal(err)
	}
	hour := time.Now().UTC().Truncate(time.Hour) // received now
	if did, err := s.bill.ComputeHour(ctx, hour); err != nil || !did {
		t.Fatalf("ComputeHour: %v %v, want computed", did, err)
	}
	sent, failed, err := s.bill.SendDue(ctx)
	if err != nil || sent != 2 || failed != 0 {
		t.Fatalf("SendDue: sent %d failed %d err %v, want 2 sent", sent, failed, err)
	}
	want := map[string]string{billing.DefaultCloneMeter: "5400", billing.DefaultStorageMeter: "2560"}
	reqs := s.mock.Requests(meterEvents)
	if len(reqs) != 2 {
		t.Fatalf("%d meter event requests reached stripe-mock, want 2: %+v", len(reqs), reqs)
	}
	for _, r := range reqs {
		meter := r.Form.Get("event_name")
		key := billing.IdempotencyKey(s.org.ID, hour, meter)
		if r.Status != http.StatusOK || r.IdempotencyKey != key || r.Form.Get("identifier") != key {
			t.Errorf("meter event %s: status %d, Idempotency-Key %q, identifier %q; want 200 and %q", meter, r.Status, r.IdempotencyKey, r.Form.Get("identifier"), key)
		}
		if got := r.Form.Get("payload[value]"); got != want[meter] || r.Form.Get("payload[stripe_customer_id]") != cust {
			t.Errorf("meter event %s: value %q for %q, want %s for %s", meter, got, r.Form.Get("payload[stripe_customer_id]"), want[meter], cust)
		}
	}
	// The hour is frozen: computing it again adds nothing; nothing is due.
	if did, err := s.bill.ComputeHour(ctx, hour); err != nil || did {
		t.Fatalf("ComputeHour again: %v %v, want nothing done", did, err)
	}
	if sent, failed, err := s.bill.SendDue(ctx); sent != 0 || failed != 0 || err != nil {
		t.Fatalf("SendDue again: %d %d %v, want nothing", sent, failed, err)
	}
	if n := len(s.mock.Requests(meterEvents)); n != 2 {
		t.Fatalf("%d meter events after the repeat, want still 2", n)
	}
	reps, err := s.env.Store.ListUsageReports(ctx, s.org.ID, 10)
	if err != nil || len(reps) != 2 || reps[0].Status != store.ReportSent || reps[1].Status != store.ReportSent {
		t.Fatalf("reports %+v %v, want 2 sent", reps, err)
	}
}

// TestFailedReportIsRetried: Stripe failing (500 from the proxy) leaves
// the reports pending with the error; they are not sent again before
// their backoff, and then reach stripe-mock with the same idempotency
// keys.
func TestFailedReportIsRetried(t *testing.T) {
	s := newSetup(t, true)
	ctx := t.Context()
	ag := s.enroll(t, "db1", 0)
	if _, err := s.bill.Customer(ctx, s.org.ID, s.org.Name); err != nil {
		t.Fatal(err)
	}
	if err := usage.Ingest(ctx, s.env.Store, ag.ID, []tunnel.Event{sample("usage-i1-1", s.now, time.Minute, 1<<30, map[string]float64{"c1": 60}, 1<<30)}); err != nil {
		t.Fatal(err)
	}
	hour := time.Now().UTC().Truncate(time.Hour)
	if _, err := s.bill.ComputeHour(ctx, hour); err != nil {
		t.Fatal(err)
	}
	s.mock.FailNext(meterEvents, 2)
	if sent, failed, err := s.bill.SendDue(ctx); sent != 0 || failed != 2 || err != nil {
		t.Fatalf("SendDue with Stripe down: sent %d failed %d %v, want 2 failed", sent, failed, err)
	}
	reps, err := s.env.Store.ListUsageReports(ctx, s.org.ID, 10)
	if err != nil || len(reps) != 2 {
		t.Fatal(reps, err)
	}
	for _, r := range reps {
		if r.Status != store.ReportPending || r.Attempts != 1 || !strings.Contains(r.LastError, "injected failure") {
			t.Errorf("report after a failure: %+v, want pending, 1 attempt, the error kept", r)
		}
	}
	if sent, failed, _ := s.bill.SendDue(ctx); sent+failed != 0 {
		t.Fatalf("retried before the backoff: sent %d failed %d", sent, failed)
	}
	s.now = s.now.Add(2 * time.Minute)
	if sent, failed, err := s.bill.SendDue(ctx); sent != 2 || failed != 0 || err != nil {
		t.Fatalf("SendDue after the backoff: sent %d failed %d %v, want 2 sent", sent, failed, err)
	}
	reqs := s.mock.Requests(meterEvents)
	if len(reqs) != 4 {
		t.Fatalf("%d requests, want 2 failed and 2 retried", len(reqs))
	}
	for i := range 2 {
		failedReq := reqs[i]
		var retry *stripemocktest.Request
		for j := 2; j < 4; j++ {
			if reqs[j].Form.Get("event_name") == failedReq.Form.Get("event_name") {
				retry = &reqs[j]
			}
		}
		if retry == nil || retry.IdempotencyKey != failedReq.IdempotencyKey || retry.Status != http.StatusOK || retry.Form.Get("payload[value]") != failedReq.Form.Get("payload[value]") {
			t.Errorf("retry of %+v: %+v, want the same key and value, accepted", failedReq, retry)
		}
	}
}

// event is a Stripe event of typ about object, as Stripe would send it.
func event(id, typ string, created time.Time, object any) []byte {
	raw, _ := json.Marshal(object)
	ev := map[string]any{
		"id": id, "object": "event", "api_version": stripe.APIVersion, "created": created.Unix(), "type": typ,
		"data": map[string]any{"object": json.RawMessage(raw)},
	}
	b, _ := json.Marshal(ev)
	return b
}

func subscription(customer, status, price string, now time.Time) map[string]any {
	return map[string]any{
		"id": "sub_1", "object": "subscription", "customer": customer, "status": status,
		"current_period_start": now.Add(-24 * time.Hour).Unix(), "current_period_end": now.Add(29 * 24 * time.Hour).Unix(),
		"items": map[string]any{"object": "list", "data": []any{map[string]any{"id": "si_1", "object": "subscription_item", "price": map[string]any{"id": price, "object": "price"}}}},
	}
}

// post sends a webhook request signed with secret at ts.
func (s *setup) post(t *testing.T, body []byte, secret string, ts time.Time) platformtest.Response {
	t.Helper()
	sig := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: body, Secret: secret, Timestamp: ts})
	return s.env.DoWithHeader(http.MethodPost, api.StripeWebhookPath, "Stripe-Signature", sig.Header, string(body))
}

func (s *setup) plan(t *testing.T) billing.Effective {
	t.Helper()
	eff, err := s.bill.PlanOf(t.Context(), s.org.ID)
	if err != nil {
		t.Fatal(err)
	}
	return eff
}

// TestWebhooks: a wrong or stale signature is 400 and changes nothing;
// a subscription moves the organization to its plan; the same event
// again is applied once (an older event replayed after a newer one does
// not undo it); a failed payment keeps the plan through the grace period
// and then the free plan's limits apply, with no data deleted; a paid
// invoice restores the plan.
func TestWebhooks(t *testing.T) {
	s := newSetup(t, true)
	ctx := t.Context()
	ag := s.enroll(t, "db1", 0)
	if err := usage.Ingest(ctx, s.env.Store, ag.ID, []tunnel.Event{sample("usage-i1-1", s.now, time.Minute, 1<<30, map[string]float64{"c1": 60}, 1<<30)}); err != nil {
		t.Fatal(err)
	}
	cust, err := s.bill.Customer(ctx, s.org.ID, s.org.Name)
	if err != nil {
		t.Fatal(err)
	}
	webhookRows := func() string {
		return strings.Join(s.env.QueryStrings("SELECT count(*)::text FROM billing_webhook_events"), "")
	}
	now := time.Now()
	created := event("evt_sub_created", "customer.subscription.created", now, subscription(cust, "active", "price_team", now))

	sig := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: created, Secret: webhookSecret, Timestamp: now})
	tampered := strings.Replace(string(created), `"active"`, `"trialing"`, 1)
	for name, r := range map[string]platformtest.Response{
		"wrong secret":  s.post(t, created, "whsec_someone_else", now),
		"stale":         s.post(t, created, webhookSecret, now.Add(-10*time.Minute)),
		"no signature":  s.env.DoWithHeader(http.MethodPost, api.StripeWebhookPath, "X-Nothing", "", string(created)),
		"tampered body": s.env.DoWithHeader(http.MethodPost, api.StripeWebhookPath, "Stripe-Signature", sig.Header, tampered),
	} {
		if r.Status != http.StatusBadRequest {
			t.Errorf("%s: %d %s, want 400", name, r.Status, r.Body)
		}
	}
	if p := s.plan(t); p.Plan.Name != "free" || p.Subscribed != "" || webhookRows() != "0" {
		t.Fatalf("after refused webhooks: plan %s subscribed %q, %s events stored; want free, none", p.Plan.Name, p.Subscribed, webhookRows())
	}

	if r := s.post(t, created, webhookSecret, now); r.Status != http.StatusOK || !strings.Contains(string(r.Body), `"applied":true`) {
		t.Fatalf("subscription created: %d %s", r.Status, r.Body)
	}
	if p := s.plan(t); p.Plan.Name != "team" {
		t.Fatalf("plan after the subscription: %s, want team", p.Plan.Name)
	}
	if evs := s.env.AuditEvents(); len(evs) == 0 || evs[len(evs)-1].Action != "billing.webhook" || !strings.Contains(evs[len(evs)-1].Target, "evt_sub_created") {
		t.Fatalf("the applied event is not in the organization's audit log: %+v", evs)
	}
	canceled := event("evt_sub_deleted", "customer.subscription.deleted", now.Add(time.Second), subscription(cust, "canceled", "price_team", now))
	if r := s.post(t, canceled, webhookSecret, now); r.Status != http.StatusOK {
		t.Fatalf("subscription deleted: %d %s", r.Status, r.Body)
	}
	// The created event again (Stripe redelivers): acknowledged, not applied.
	if r := s.post(t, created, webhookSecret, now); r.Status != http.StatusOK || !strings.Contains(string(r.Body), `"applied":false`) {
		t.Fatalf("redelivered event: %d %s, want 200 not applied", r.Status, r.Body)
	}
	if p := s.plan(t); p.Plan.Name != "free" || webhookRows() != "2" {
		t.Fatalf("after the redelivery: plan %s, %s events; want free (canceled stays), 2", p.Plan.Name, webhookRows())
	}

	// Subscribe again, then a payment fails.
	again := event("evt_sub_updated", "customer.subscription.updated", now.Add(2*time.Second), subscription(cust, "active", "price_team", now))
	if r := s.post(t, again, webhookSecret, now); r.Status != http.StatusOK {
		t.Fatal(r.Status, string(r.Body))
	}
	failedAt := now.Add(3 * time.Second)
	invoice := map[string]any{"id": "in_1", "object": "invoice", "customer": cust, "status": "open", "number": "ACME-0001", "currency": "usd",
		"amount_due": 2540, "amount_paid": 0, "hosted_invoice_url": "https://invoice.stripe.com/i/acme", "created": failedAt.Unix()}
	if r := s.post(t, event("evt_pay_failed", "invoice.payment_failed", failedAt, invoice), webhookSecret, now); r.Status != http.StatusOK {
		t.Fatal(r.Status, string(r.Body))
	}
	p := s.plan(t)
	if p.Plan.Name != "team" || p.Account.GraceUntil == nil || !p.Account.GraceUntil.Equal(failedAt.Truncate(time.Second).Add(time.Hour)) {
		t.Fatalf("within the grace period: plan %s grace until %v, want team until %v", p.Plan.Name, p.Account.GraceUntil, failedAt.Add(time.Hour))
	}
	if err := s.bill.CheckClone(ctx, s.org.ID, 3, 0); err != nil {
		t.Fatalf("3 clones within the grace period of team (5): %v", err)
	}
	// A retried payment failing again does not extend the grace period.
	if r := s.post(t, event("evt_pay_failed_2", "invoice.payment_failed", failedAt.Add(30*time.Minute), invoice), webhookSecret, now); r.Status != http.StatusOK {
		t.Fatal(r.Status, string(r.Body))
	}
	s.now = failedAt.Add(time.Hour + time.Second)
	p = s.plan(t)
	if p.Plan.Name != "free" || p.Subscribed != "team" {
		t.Fatalf("after the grace period: plan %s (subscribed %s), want free limits", p.Plan.Name, p.Subscribed)
	}
	var le *billing.LimitError
	if err := s.bill.CheckClone(ctx, s.org.ID, 3, 0); !errors.As(err, &le) || le.Limit != "clones" || le.Plan != "free" {
		t.Fatalf("3 clones after the grace period: %v, want the free plan's clone limit", err)
	}
	// The organization was told, once each: the failed payment (two
	// failures of one invoice: the events differ, the invoice is the
	// target, so the second folds in) and the refused creation.
	for name, want := range map[string]string{"billing.payment_failed": "in_1", "billing.limit_reached": "clones"} {
		if got := s.env.QueryStrings("SELECT target FROM notification_events WHERE org_id = $1 AND name = $2", s.org.ID, name); len(got) != 1 || got[0] != want {
			t.Errorf("%s notifications: %v, want one for %s", name, got, want)
		}
	}
	// Nothing was deleted: the usage is all there.
	if n := s.env.QueryStrings("SELECT count(*)::text FROM usage_clone_periods WHERE org_id = $1", s.org.ID); len(n) != 1 || n[0] != "1" {
		t.Fatalf("usage rows after the downgrade: %v, want kept", n)
	}
	sum, err := s.bill.Summary(ctx, s.org.ID)
	if err != nil || len(sum.Invoices) != 1 || sum.Invoices[0].Number != "ACME-0001" || sum.GraceUntil == nil {
		t.Fatalf("billing summary: %+v %v", sum, err)
	}
	invoice["status"], invoice["amount_paid"] = "paid", 2540
	if r := s.post(t, event("evt_paid", "invoice.paid", s.now, invoice), webhookSecret, s.now); r.Status != http.StatusOK {
		t.Fatal(r.Status, string(r.Body))
	}
	if p := s.plan(t); p.Plan.Name != "team" || p.Account.GraceUntil != nil {
		t.Fatalf("after the invoice was paid: plan %s grace %v, want team", p.Plan.Name, p.Account.GraceUntil)
	}
}

// TestLimitsRefuseCreationNamingTheLimit: on the free plan (1 clone, 1
// agent) a clone created through the platform's engine proxy beyond the
// limit is refused before the agent is asked, with 402 naming the limit
// and the plan, and so is a second agent's enrollment; with billing off
// nothing is limited.
func TestLimitsRefuseCreationNamingTheLimit(t *testing.T) {
	for _, enabled := range []bool{true, false} {
		t.Run(fmt.Sprintf("billing %v", enabled), func(t *testing.T) {
			s := newSetup(t, enabled)
			ag := s.enroll(t, "db1", 1) // its last facts: 1 clone
			r := s.env.Do(http.MethodPost, "/api/v1/orgs/acme/agents/"+ag.ID+"/engine/clone", s.token, `{"id":"two"}`)
			if enabled {
				if r.Status != http.StatusPaymentRequired || !strings.Contains(string(r.Body), "limit clones") || !strings.Contains(string(r.Body), "free plan allows 1 clones at once") {
					t.Fatalf("clone beyond the limit: %d %s, want 402 naming the clones limit and the free plan", r.Status, r.Body)
				}
			} else if r.Status != http.StatusServiceUnavailable {
				t.Fatalf("clone with billing off: %d %s, want it forwarded (503: the agent is not connected)", r.Status, r.Body)
			}
			// The Clones page's form checks the same limit.
			form := "agent=" + ag.ID + "&username=dev&password=Vx9-kq2%21Lm7%23pz4Rw8"
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, s.env.URL+"/o/acme/clones", strings.NewReader(form))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Authorization", "Bearer "+s.token)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			page, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if enabled && (resp.StatusCode != http.StatusPaymentRequired || !strings.Contains(string(page), "limit clones")) {
				t.Fatalf("clone form beyond the limit: %d, want 402 naming the limit\n%s", resp.StatusCode, page)
			}
			_, secret, err := s.env.Store.CreateEnrollmentToken(context.Background(), s.org.ID, s.owner.ID, "more", time.Now().Add(time.Hour), nil)
			if err != nil {
				t.Fatal(err)
			}
			r = s.env.Do(http.MethodPost, tunnel.EnrollPath, "", tunnel.EnrollRequest{Token: secret, Facts: tunnel.AgentFacts{Name: "db2"}})
			if enabled {
				if r.Status != http.StatusPaymentRequired || !strings.Contains(r.Error().Message, "limit agents") || !strings.Contains(r.Error().Message, "free plan allows 1 agents") {
					t.Fatalf("second agent: %d %s, want 402 naming the agents limit and the free plan", r.Status, r.Body)
				}
				n, _ := s.env.Store.CountActiveAgents(t.Context(), s.org.ID)
				if n != 1 {
					t.Fatalf("%d agents after the refusal, want 1", n)
				}
			} else if r.Status != http.StatusCreated {
				t.Fatalf("second agent with billing off: %d %s, want 201", r.Status, r.Body)
			}
		})
	}
}

// TestCheckoutAndPortal: the owner gets Stripe URLs (stripe-mock's) and
// the organization its Stripe customer, once.
func TestCheckoutAndPortal(t *testing.T) {
	s := newSetup(t, true)
	var link struct {
		URL string `json:"url"`
	}
	r := s.env.Do(http.MethodPost, "/api/v1/orgs/acme/billing/checkout", s.token, map[string]string{"plan": "team"})
	if err := json.Unmarshal(r.Body, &link); r.Status != http.StatusOK || err != nil || !strings.HasPrefix(link.URL, "https://") {
		t.Fatalf("checkout: %d %s", r.Status, r.Body)
	}
	if r := s.env.Do(http.MethodPost, "/api/v1/orgs/acme/billing/checkout", s.token, map[string]string{"plan": "free"}); r.Status != http.StatusBadRequest || r.Error().Field != "plan" {
		t.Fatalf("checkout of the free plan: %d %s, want 400 naming plan", r.Status, r.Body)
	}
	r = s.env.Do(http.MethodPost, "/api/v1/orgs/acme/billing/portal", s.token, nil)
	if err := json.Unmarshal(r.Body, &link); r.Status != http.StatusOK || err != nil || !strings.HasPrefix(link.URL, "https://") {
		t.Fatalf("portal: %d %s", r.Status, r.Body)
	}
	if n := len(s.mock.Requests("/v1/customers")); n != 1 {
		t.Fatalf("%d customers created, want 1", n)
	}
	if r := s.post(t, []byte(`{}`), "whsec_wrong", time.Now()); r.Status != http.StatusBadRequest {
		t.Fatalf("forged webhook: %d", r.Status)
	}
	r = s.env.Do(http.MethodGet, "/api/v1/orgs/acme/billing", s.token, nil)
	if r.Status != http.StatusOK || !strings.Contains(string(r.Body), `"plan":"free"`) {
		t.Fatalf("billing: %d %s", r.Status, r.Body)
	}
	// The Billing page: plan, limits, projection, the upgrade button.
	r = s.env.Do(http.MethodGet, "/o/acme/billing", s.token, nil)
	for _, want := range []string{`id="plan">free<`, "Clones at once", "10 GiB", `id="projected"`, "Subscribe to team", "No invoices yet"} {
		if r.Status != http.StatusOK || !strings.Contains(string(r.Body), want) {
			t.Fatalf("Billing page: %d, want %q in\n%s", r.Status, want, r.Body)
		}
	}
	// The Usage page (no usage yet) and its CSV export link.
	r = s.env.Do(http.MethodGet, "/o/acme/usage?period=month&by=agent", s.token, nil)
	for _, want := range []string{`id="usage"`, "No usage in this range", "format=csv", `id="savings"`} {
		if r.Status != http.StatusOK || !strings.Contains(string(r.Body), want) {
			t.Fatalf("Usage page: %d, want %q in\n%s", r.Status, want, r.Body)
		}
	}
}
