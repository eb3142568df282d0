package notify_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thinlab/thinlab/internal/mailpittest"
	"github.com/thinlab/thinlab/platform/notify"
	"github.com/thinlab/thinlab/platform/platformtest"
	"github.com/thinlab/thinlab/platform/server"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/platformapi"
)

// testConfig delivers quickly: short polls and backoff, three attempts,
// receivers on 127.0.0.1 allowed, mail through mp (nil: no SMTP).
func testConfig(mp *mailpittest.Server) notify.Config {
	c := notify.Config{
		PollInterval: 50 * time.Millisecond, MaxAttempts: 3, RetryBase: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond,
		Webhooks: notify.WebhookConfig{AllowAddresses: []string{"127.0.0.1/32"}},
	}
	if mp != nil {
		c.SMTP = notify.SMTPConfig{Host: mp.Host, Port: mp.Port, Username: mailpittest.Username, Password: mailpittest.Password,
			From: "thinlab@platform.example", CAFile: mp.CAFile}
	}
	return c
}

// platform starts a platform whose notifications use cfg.
func platform(t *testing.T, cfg notify.Config) *platformtest.Env {
	t.Helper()
	return platformtest.New(t, platformtest.WithConfig(func(c *server.Config) { c.Notifications = cfg }))
}

// record records an event and wakes the platform's worker, as producers do.
func record(t *testing.T, env *platformtest.Env, e notify.Event) store.Recorded {
	t.Helper()
	rec, err := env.Server.Notifier().Record(t.Context(), env.Store, e)
	if err != nil {
		t.Fatal(err)
	}
	env.Server.Notifier().Committed()
	return rec
}

// waitFor polls cond; the bound only keeps a broken test from hanging.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// outboxDone waits until env's outbox has no pending message left.
func outboxDone(t *testing.T, env *platformtest.Env) map[string]int64 {
	t.Helper()
	var counts map[string]int64
	waitFor(t, "the outbox to drain", func() bool {
		var err error
		counts, err = env.Store.OutboxCounts(t.Context(), "")
		if err != nil {
			t.Fatal(err)
		}
		return counts[store.OutboxPending] == 0
	})
	return counts
}

// mailTo returns mp's messages to addr.
func mailTo(mp *mailpittest.Server, addr string) []mailpittest.Message {
	var out []mailpittest.Message
	for _, m := range mp.Messages() {
		for _, to := range m.To {
			if strings.EqualFold(to.Address, addr) {
				out = append(out, m)
			}
		}
	}
	return out
}

// delivery is one request a receiver got.
type delivery struct {
	Header http.Header
	Body   []byte
}

// receiver is a Slack or webhook endpoint on 127.0.0.1 that records what
// it gets and answers with status (200 when status returns 0).
type receiver struct {
	*httptest.Server
	mu     sync.Mutex
	got    []delivery
	status func(n int, d delivery) int
}

func newReceiver(t *testing.T, status func(n int, d delivery) int) *receiver {
	t.Helper()
	r := &receiver{status: status}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		d := delivery{Header: req.Header.Clone(), Body: body}
		r.mu.Lock()
		r.got = append(r.got, d)
		n := len(r.got)
		r.mu.Unlock()
		code := http.StatusOK
		if r.status != nil {
			if c := r.status(n, d); c != 0 {
				code = c
			}
		}
		w.WriteHeader(code)
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *receiver) deliveries() []delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]delivery(nil), r.got...)
}

// createChannel adds a channel through the API and returns it (with a
// webhook's secret).
func createChannel(t *testing.T, env *platformtest.Env, org, token, kind, name, url string) platformapi.NotificationChannel {
	t.Helper()
	r := env.Do(http.MethodPost, "/api/v1/orgs/"+org+"/notifications/channels", token, platformapi.CreateNotificationChannelRequest{Kind: kind, Name: name, URL: url})
	var ch platformapi.NotificationChannel
	if r.Status != http.StatusCreated || json.Unmarshal(r.Body, &ch) != nil {
		t.Fatalf("create %s channel %s: %d %s", kind, url, r.Status, r.Body)
	}
	return ch
}
