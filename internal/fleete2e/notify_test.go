package fleete2e

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent"
	"github.com/thinlab/thinlab/agent/storage"

	"github.com/thinlab/thinlab/internal/mailpittest"
	"github.com/thinlab/thinlab/platform/notify"
	"github.com/thinlab/thinlab/platform/platformtest"
	"github.com/thinlab/thinlab/platform/server"
	"github.com/thinlab/thinlab/sdk/agentapi"
	"github.com/thinlab/thinlab/sdk/platformapi"
)

// TestAgentEventsReachInboxAndEmail: a snapshot taken on a real agent
// (through the platform's engine proxy) comes back over the tunnel as
// the agent's snapshot.created event and reaches the owner's inbox and,
// as the organization turned that email on, their mailbox on a real
// SMTP server. A clone created protected for an hour raises
// clone.protection_expiring. An agent stopped for longer than the grace
// time raises agent.disconnected (a warning: emailed by default), its
// restart agent.reconnected, and a second stop folds into the first.
func TestAgentEventsReachInboxAndEmail(t *testing.T) {
	mp := mailpittest.Start(t)
	env, org, owner, ra, ag := enrolled(t, platformtest.WithConfig(func(c *server.Config) {
		c.Notifications = notify.Config{SMTP: notify.SMTPConfig{
			Host: mp.Host, Port: mp.Port, Username: mailpittest.Username, Password: mailpittest.Password,
			From: "thinlab@platform.example", CAFile: mp.CAFile,
		}, DisconnectGrace: 300 * time.Millisecond}
	}))
	tok := env.Token(org, owner)
	on := true
	r := env.Do(http.MethodPut, "/api/v1/orgs/acme/notifications/org-preferences", tok, platformapi.SetNotificationPreferencesRequest{
		Preferences: []platformapi.NotificationPreference{{Event: notify.SnapshotCreated, Channel: "email", Enabled: &on}},
	})
	if r.Status != http.StatusOK {
		t.Fatalf("turn snapshot emails on: %d %s", r.Status, r.Body)
	}
	snap, err := engineClient(env, "acme", ag.ID, tok).CreateSnapshot(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	inbox := func() platformapi.Inbox {
		var in platformapi.Inbox
		r := env.Do(http.MethodGet, "/api/v1/orgs/acme/notifications/inbox", tok, nil)
		if err := json.Unmarshal(r.Body, &in); err != nil || r.Status != http.StatusOK {
			t.Fatalf("inbox: %d %s", r.Status, r.Body)
		}
		return in
	}
	find := func(in platformapi.Inbox, event string) *platformapi.Notification {
		for i := range in.Items {
			if in.Items[i].Event == event {
				return &in.Items[i]
			}
		}
		return nil
	}
	var got *platformapi.Notification
	waitFor(t, "snapshot.created in the owner's inbox", func() bool {
		got = find(inbox(), notify.SnapshotCreated)
		return got != nil && got.Target == snap.ID
	})
	if got.AgentID != ag.ID || got.AgentName != "e2e-db" {
		t.Errorf("notification %+v, want agent %s named e2e-db", got, ag.ID)
	}
	waitFor(t, "the snapshot email", func() bool {
		for _, m := range mp.Messages() {
			if strings.Contains(m.Subject, "Snapshot created: "+snap.ID) && strings.Contains(m.Subject, "on agent e2e-db") {
				return len(m.To) == 1 && m.To[0].Address == owner.Email
			}
		}
		return false
	})

	// A clone created protected for an hour: its protection ends within
	// the warning time (24 h by default), so its organization is told.
	hour := uint(60)
	if _, err := engineClient(env, "acme", ag.ID, tok).CreateClone(t.Context(), agentapi.CreateCloneRequest{
		ID: "kept", Protected: true, ProtectionDurationMinutes: &hour, DB: &agentapi.DatabaseRequest{Username: "dev", Password: clonePassword},
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "clone.protection_expiring in the inbox and by email", func() bool {
		p := find(inbox(), notify.CloneProtectionExpiring)
		if p == nil || p.Target != "kept" || p.AgentName != "e2e-db" {
			return false
		}
		for _, m := range mp.Messages() {
			if strings.Contains(m.Subject, "Clone protection about to expire: kept") {
				return true
			}
		}
		return false
	})

	// The agent stops: once it has stayed away for the grace time its
	// organization hears of it (a warning: emailed by default); when it
	// is back, that too.
	ra.stop(t)
	waitFor(t, "agent.disconnected in the inbox and by email", func() bool {
		if find(inbox(), notify.AgentDisconnected) == nil {
			return false
		}
		for _, m := range mp.Messages() {
			if strings.Contains(m.Subject, "Agent disconnected on agent e2e-db") {
				return true
			}
		}
		return false
	})
	ra.restart(t)
	waitFor(t, "agent.reconnected in the inbox", func() bool { return find(inbox(), notify.AgentReconnected) != nil })
	// Gone again: the same problem, folded with a count.
	ra.stop(t)
	waitFor(t, "the second disconnection folded into the first", func() bool {
		d := find(inbox(), notify.AgentDisconnected)
		return d != nil && d.Count == 2
	})
}

// restart runs the stopped agent again on the same configuration, state
// and pool: it reconnects with the credential it keeps.
func (ra *runningAgent) restart(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background()) // ended by stop, at the latest at cleanup
	a, err := agent.NewWithOptions(ctx, agent.Options{Config: ra.cfg, Pools: []storage.Pool{ra.pool}, Logger: ra.logs.Logger(), Version: "e2e"})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	ra.agent, ra.cancel, ra.done = a, cancel, make(chan error, 1)
	go func() { ra.done <- a.Run(ctx) }()
}
