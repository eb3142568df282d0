// Package notify tells people about what happens in their organization:
// the catalogue of events (stable names, severities), routing by
// preferences into the in-app inbox and a transactional outbox (written
// in the producer's transaction), and the workers that deliver the
// outbox by email (SMTP), Slack and signed webhooks, once per message
// and channel across restarts and replicas (docs/notifications.md).
package notify

import (
	"slices"

	"github.com/thinlab/thinlab/sdk/tunnel"
)

// Severities, lowest first. Info events may go to the email digest.
const (
	Info    = "info"
	Warning = "warning"
	Error   = "error"
)

// Kind is one event of the catalogue.
type Kind struct {
	// Name is stable: preferences, webhooks and the API match on it.
	Name     string
	Severity string
	// Description is what people read (email subjects, the inbox).
	Description string
	// Email: the event is emailed to members unless a preference says
	// otherwise. The inbox, Slack and webhooks get every event by default.
	Email bool
	// Members: the event goes to the organization's members (inbox,
	// email); false for events with their own recipient (invitations).
	Members bool
}

// The catalogue's names.
const (
	SnapshotCreated   = "snapshot.created"
	SnapshotDeleted   = "snapshot.deleted"
	RetrievalStarted  = "retrieval.started"
	RetrievalFinished = "retrieval.finished"
	RetrievalFailed   = "retrieval.failed"
	RefreshStarted    = "refresh.started"
	RefreshFinished   = "refresh.finished"
	RefreshSkipped    = "refresh.skipped"
	LagHigh           = "replication.lag_high"
	CloneFailed       = "clone.failed"
	// CloneProtectionExpiring is raised by the platform ahead of the end
	// of a clone's protection (notifications.protectionWarning).
	CloneProtectionExpiring = "clone.protection_expiring"
	AgentUnhealthy          = "agent.unhealthy"
	AgentDisconnected       = "agent.disconnected"
	AgentReconnected        = "agent.reconnected"
	InvitationSent          = "invitation.sent"
	// CloneRefreshDeadline: the pool of a clone will be refreshed anyway
	// (retrieval.busyPool), at the time the message names.
	CloneRefreshDeadline = "clone.refresh_deadline"
	// Saturation, from the agents' resource samples (saturation.go).
	HostCPUSaturated   = "host.cpu_saturated"
	PoolSpaceLow       = "pool.space_low"
	PoolDiskSaturated  = "pool.disk_saturated"
	PoolOutOfSpaceRisk = "pool.out_of_space_risk"
	// Billing (platform/billing).
	BillingPaymentFailed = "billing.payment_failed"
	BillingLimitReached  = "billing.limit_reached"
)

// Catalogue is every event, in the order pages show them.
var Catalogue = []Kind{
	{Name: SnapshotCreated, Severity: Info, Members: true, Description: "Snapshot created"},
	{Name: SnapshotDeleted, Severity: Info, Members: true, Description: "Snapshot deleted"},
	{Name: RetrievalStarted, Severity: Info, Members: true, Description: "Initial data retrieval started"},
	{Name: RetrievalFinished, Severity: Info, Members: true, Description: "Initial data retrieval finished"},
	{Name: RetrievalFailed, Severity: Error, Members: true, Email: true, Description: "Data retrieval or refresh failed"},
	{Name: RefreshStarted, Severity: Info, Members: true, Description: "Full refresh started"},
	{Name: RefreshFinished, Severity: Info, Members: true, Description: "Full refresh finished"},
	{Name: RefreshSkipped, Severity: Warning, Members: true, Email: true, Description: "Refresh impossible: all pools are busy and the policy forbids forcing it"},
	{Name: LagHigh, Severity: Warning, Members: true, Email: true, Description: "Replication lag too high"},
	{Name: CloneFailed, Severity: Error, Members: true, Email: true, Description: "Clone failed"},
	{Name: CloneProtectionExpiring, Severity: Warning, Members: true, Email: true, Description: "Clone protection about to expire"},
	{Name: AgentUnhealthy, Severity: Warning, Members: true, Email: true, Description: "Agent reports a problem"},
	{Name: AgentDisconnected, Severity: Warning, Members: true, Email: true, Description: "Agent disconnected"},
	{Name: AgentReconnected, Severity: Info, Members: true, Description: "Agent reconnected"},
	{Name: InvitationSent, Severity: Info, Email: true, Description: "Invitation to join the organization (emailed to the invited address)"},
	{Name: CloneRefreshDeadline, Severity: Warning, Members: true, Email: true, Description: "A clone's pool will be refreshed anyway at a deadline"},
	{Name: HostCPUSaturated, Severity: Warning, Members: true, Email: true, Description: "Agent host CPU saturated"},
	{Name: PoolSpaceLow, Severity: Warning, Members: true, Email: true, Description: "Pool running out of disk space"},
	{Name: PoolDiskSaturated, Severity: Warning, Members: true, Description: "Pool disk IO saturated"},
	{Name: PoolOutOfSpaceRisk, Severity: Warning, Members: true, Email: true, Description: "Pool projected to run out of space within a day"},
	{Name: BillingPaymentFailed, Severity: Error, Members: true, Email: true, Description: "Payment failed"},
	{Name: BillingLimitReached, Severity: Warning, Members: true, Email: true, Description: "A creation was refused: the plan's limit is reached"},
}

// Lookup returns the catalogue's entry for name.
func Lookup(name string) (Kind, bool) {
	i := slices.IndexFunc(Catalogue, func(k Kind) bool { return k.Name == name })
	if i < 0 {
		return Kind{}, false
	}
	return Catalogue[i], true
}

// Channels a preference can name. Digest collects info events' emails.
var Channels = []string{"email", "inbox", "slack", "webhook", "digest"}

// fromAgent maps an agent event (agent/events kinds, on the wire as
// sdk/tunnel.Event) to the catalogue: its name, severity and target, or
// ok=false for events nobody is notified of (clone lifecycle, usage
// samples, healthy health reports).
func fromAgent(e tunnel.Event) (name, severity, target string, ok bool) {
	switch e.Kind {
	case "snapshot.created", "snapshot.deleted":
		return e.Kind, Info, e.Snapshot, true
	case "retrieval.started", "retrieval.finished", "refresh.started", "refresh.finished":
		return e.Kind, Info, e.Pool, true
	case "retrieval.failed":
		return RetrievalFailed, Error, e.Pool, true
	case "refresh.skipped":
		return RefreshSkipped, Warning, e.Pool, true
	case "replication.lag_high":
		return LagHigh, Warning, e.Pool, true
	case "clone.failed":
		return CloneFailed, Error, e.Clone, true
	case "clone.refresh_deadline":
		return CloneRefreshDeadline, Warning, e.Clone, true
	case "agent.health":
		// A periodic summary: only a problem is news (folded while it lasts).
		switch e.Severity {
		case Warning, Error:
			return AgentUnhealthy, e.Severity, "", true
		}
	}
	return "", "", "", false
}
