package notify_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/thinlab/thinlab/platform/notify"
	"github.com/thinlab/thinlab/platform/store"
)

// workerChildEnv carries the configuration of a worker process (JSON of
// workerChild): this test binary, run again, delivers the outbox until
// it is killed.
const workerChildEnv = "THINLAB_NOTIFY_WORKER_CHILD"

type workerChild struct {
	DSN     string
	Workers int
}

func runWorkerChild(raw string) int {
	var wc workerChild
	if err := json.Unmarshal([]byte(raw), &wc); err != nil {
		fmt.Fprintln(os.Stderr, "worker child:", err)
		return 2
	}
	st, err := store.Open(wc.DSN)
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker child:", err)
		return 2
	}
	cfg := testConfig(nil)
	cfg.Workers = wc.Workers
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	w, err := notify.NewWorker(st, notify.New(cfg, logger), "http://platform.invalid", logger)
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker child:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	w.Run(ctx)
	return 0
}

// startWorker runs a worker process on dsn; it is killed (by PID) at
// cleanup if still running.
func startWorker(t *testing.T, dsn string, workers int) *exec.Cmd {
	t.Helper()
	raw, _ := json.Marshal(workerChild{DSN: dsn, Workers: workers})
	cmd := exec.Command(os.Args[0], "-test.run=^$") //nolint:gosec // G702: os.Args[0] is this test binary, run again as a worker
	cmd.Env = append(os.Environ(), workerChildEnv+"="+string(raw))
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill() // by PID; it may be gone already
			_ = cmd.Wait()         // reaps it; a killed worker's status says nothing
		}
	})
	return cmd
}

// TestKilledWorkerAndTwoReplicasDeliverEachMessageOnce: 40 webhook
// messages wait in the outbox. A worker process takes one and hangs in
// the receiver; it is SIGKILLed there, with the rest undelivered. Two
// more worker processes (two replicas on one database) then deliver
// everything: every message arrives, each message that no dead worker
// had in hand exactly once, and the one the killed worker was sending
// once more with the same idempotency key, so the receiver, which
// dedupes on that key, processes each message exactly once.
func TestKilledWorkerAndTwoReplicasDeliverEachMessageOnce(t *testing.T) {
	cfg := testConfig(nil)
	cfg.PollInterval = time.Hour // the platform's own worker stays out of it
	env := platform(t, cfg)
	owner := env.User("owner@acme.example")
	org := env.Org("acme", owner)

	var mu sync.Mutex
	raw := map[string]int{}       // deliveries per idempotency key
	processed := map[string]int{} // after deduplication by key
	hang := make(chan struct{})
	var held string
	heldArrived := make(chan struct{})
	rcv := newReceiver(t, func(n int, d delivery) int {
		key := d.Header.Get(notify.HeaderIdempotencyKey)
		mu.Lock()
		raw[key]++
		if raw[key] == 1 {
			processed[key]++
		}
		first := held == ""
		if first {
			held = key
		}
		mu.Unlock()
		if first {
			close(heldArrived)
			<-hang // until the test has killed the sender
			return http.StatusServiceUnavailable
		}
		time.Sleep(5 * time.Millisecond) // long enough for the replicas to overlap
		return 0
	})
	t.Cleanup(func() {
		select {
		case <-hang:
		default:
			close(hang)
		}
	})
	ch, err := env.Store.CreateNotificationChannel(t.Context(), org.ID, store.ChannelWebhook, "hook", rcv.URL, "whsec_test", owner.ID)
	if err != nil {
		t.Fatal(err)
	}
	const messages = 40
	for i := range messages {
		if _, err := env.Server.Notifier().Record(t.Context(), env.Store, notify.Event{
			OrgID: org.ID, Name: notify.SnapshotCreated, Target: fmt.Sprintf("pool@s%d", i), SourceKey: fmt.Sprintf("k%d", i),
		}); err != nil {
			t.Fatal(err)
		}
	}

	first := startWorker(t, env.DSN, 1)
	select {
	case <-heldArrived:
	case <-time.After(30 * time.Second):
		t.Fatal("the first worker delivered nothing")
	}
	if err := first.Process.Kill(); err != nil { // SIGKILL mid-delivery
		t.Fatal(err)
	}
	_ = first.Wait() // killed: its exit status is the signal
	close(hang)
	if c, _ := env.Store.OutboxCounts(t.Context(), org.ID); c[store.OutboxPending] == 0 {
		t.Fatal("nothing was left undelivered at the kill; the test proves nothing")
	}

	startWorker(t, env.DSN, 2)
	startWorker(t, env.DSN, 2)
	outboxDone(t, env)

	mu.Lock()
	defer mu.Unlock()
	if len(processed) != messages {
		t.Fatalf("%d distinct messages arrived, want %d", len(processed), messages)
	}
	for key, n := range raw {
		want := 1
		if key == held {
			want = 2 // sent by the killed worker, then again by a replica
		}
		if n != want || processed[key] != 1 {
			t.Errorf("message %s: %d deliveries, %d processed; want %d and 1", key, n, processed[key], want)
		}
	}
	keys := env.QueryStrings(`SELECT idempotency_key FROM notification_outbox WHERE channel_id = $1 AND state = 'delivered'`, ch.ID)
	if len(keys) != messages || !strings.Contains(strings.Join(keys, " "), held) {
		t.Errorf("%d messages recorded delivered, want %d including the held one", len(keys), messages)
	}
}

// TestStoppedWorkerLeavesMessagePending: a worker stopped (its context
// ended, as a replica's graceful shutdown does) while a delivery hangs
// leaves the message pending with no attempt counted; the next worker
// delivers it, with the same idempotency key.
func TestStoppedWorkerLeavesMessagePending(t *testing.T) {
	cfg := testConfig(nil)
	cfg.PollInterval = time.Hour
	env := platform(t, cfg)
	owner := env.User("owner@acme.example")
	org := env.Org("acme", owner)
	arrived, release := make(chan struct{}), make(chan struct{})
	rcv := newReceiver(t, func(n int, _ delivery) int {
		if n == 1 {
			close(arrived)
			<-release
		}
		return 0
	})
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	if _, err := env.Store.CreateNotificationChannel(t.Context(), org.ID, store.ChannelWebhook, "hook", rcv.URL, "whsec_x", owner.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Server.Notifier().Record(t.Context(), env.Store, notify.Event{OrgID: org.ID, Name: notify.LagHigh, Target: "p", SourceKey: "stop"}); err != nil {
		t.Fatal(err)
	}
	w, err := notify.NewWorker(env.Store, notify.New(cfg, nil), env.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	select {
	case <-arrived:
	case <-time.After(30 * time.Second):
		t.Fatal("the worker delivered nothing")
	}
	stop()
	<-done
	close(release)
	got := env.QueryStrings(`SELECT state || ' ' || attempts FROM notification_outbox`)
	if len(got) != 1 || got[0] != "pending 0" {
		t.Fatalf("after the stop: %q, want the message pending with no attempt counted", got)
	}
	w2, err := notify.NewWorker(env.Store, notify.New(cfg, nil), env.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := w2.DeliverDue(t.Context()); err != nil || n != 1 {
		t.Fatalf("next worker delivered %d %v, want 1", n, err)
	}
	ds := rcv.deliveries()
	if len(ds) != 2 || ds[0].Header.Get(notify.HeaderIdempotencyKey) != ds[1].Header.Get(notify.HeaderIdempotencyKey) {
		t.Fatalf("receiver got %d requests, want 2 with one idempotency key", len(ds))
	}
	if got := env.QueryStrings(`SELECT state FROM notification_outbox`); len(got) != 1 || got[0] != store.OutboxDelivered {
		t.Errorf("outbox %q, want delivered", got)
	}
}
