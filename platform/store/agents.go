package store

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/thinlab/thinlab/sdk/tunnel"
)

// AgentCredentialPrefix starts every agent credential.
const AgentCredentialPrefix = "thla_"

// Agent credential refusals; callers answer them alike and log which.
var (
	ErrAgentCredentialInvalid = errors.New("unknown agent credential")
	ErrAgentRevoked           = errors.New("agent revoked")
)

// MaxAgentName caps an agent's name (the database allows 100).
const MaxAgentName = 63

// Agent is an enrolled agent. Facts is the JSON of tunnel.AgentFacts as
// the agent last reported them; the Connected*/LastHeartbeat/
// DisconnectedSince columns belong to the tunnel hub.
type Agent struct {
	ID                string `gorm:"primaryKey"`
	OrgID             string
	Name              string
	CredentialHash    []byte
	EnrollmentTokenID *string
	Facts             string `gorm:"type:jsonb"`
	Version           string
	EnrolledAt        time.Time
	FactsUpdatedAt    time.Time
	RevokedAt         *time.Time
	ConnectedReplica  string
	ConnectedSince    *time.Time
	LastHeartbeatAt   *time.Time
	DisconnectedSince *time.Time
}

// TableName is the table of Agent.
func (Agent) TableName() string { return "agents" }

// AgentFacts decodes Facts; a row with unreadable facts reads as none.
func (a *Agent) AgentFacts() tunnel.AgentFacts {
	var f tunnel.AgentFacts
	_ = json.Unmarshal([]byte(a.Facts), &f) // written by this package from the same type
	return f
}

// Connected reports whether a replica holds the agent's tunnel, as far as
// the database knows (the hub clears it on disconnect; a replica that
// died without clearing leaves LastHeartbeatAt to age).
func (a *Agent) Connected() bool { return a.ConnectedSince != nil && a.DisconnectedSince == nil }

// AgentIdentity is what an authenticated agent credential stands for.
type AgentIdentity struct {
	AgentID string
	OrgID   string
	Name    string
}

// agentNameFrom makes a valid agent name from what the agent reported:
// trimmed, control characters dropped, at most MaxAgentName bytes, and
// "agent" when nothing is left.
func agentNameFrom(raw string) string {
	name := strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == utf8.RuneError {
			return -1
		}
		return r
	}, strings.TrimSpace(raw))
	for len(name) > MaxAgentName {
		_, size := utf8.DecodeLastRuneInString(name)
		name = name[:len(name)-size]
	}
	if name = strings.TrimSpace(name); name == "" {
		return "agent"
	}
	return name
}

// freeAgentName returns name, or name-2, name-3, ... whichever orgID has
// no agent of yet (a host that enrolls again after losing its state).
func freeAgentName(tx *gorm.DB, orgID, name string) (string, error) {
	var taken []string
	if err := tx.Model(&Agent{}).Where("org_id = ? AND (name = ? OR starts_with(name, ?))", orgID, name, name+"-").
		Pluck("name", &taken).Error; err != nil {
		return "", err
	}
	used := make(map[string]bool, len(taken))
	for _, n := range taken {
		used[n] = true
	}
	candidate := name
	for i := 2; used[candidate]; i++ {
		suffix := fmt.Sprintf("-%d", i)
		base := name
		for len(base)+len(suffix) > MaxAgentName {
			_, size := utf8.DecodeLastRuneInString(base)
			base = base[:len(base)-size]
		}
		candidate = base + suffix
	}
	return candidate, nil
}

// Enroll exchanges an enrollment token for a new agent and its credential,
// in one transaction: the token row is locked, so that of concurrent
// enrollments with a single-use token exactly one succeeds. Refusals are
// ErrEnrollmentInvalid, -Expired, -Revoked and -UsedUp; for the last three
// the token is returned too, so that the caller can audit into its
// organization.
//
// With caps, each is asked inside the transaction, with the
// organization's row locked (concurrent enrollments into it are counted
// one after the other), whether one more agent is allowed; a refusal is
// an *AgentCapError, returned with the token.
func (s *Store) Enroll(ctx context.Context, secret string, facts tunnel.AgentFacts, caps ...AgentCap) (*Agent, string, *EnrollmentToken, error) {
	if !strings.HasPrefix(secret, EnrollmentTokenPrefix) {
		return nil, "", nil, ErrEnrollmentInvalid
	}
	rawFacts, err := json.Marshal(facts)
	if err != nil {
		return nil, "", nil, err
	}
	credential := AgentCredentialPrefix + randomString(43) // ~256 bits
	var agent *Agent
	var tok EnrollmentToken
	// Two enrollments racing for the same name: the loser's insert hits
	// the unique index; it tries again and takes the next free name.
	for attempt := 0; ; attempt++ {
		err = s.conn(ctx).Transaction(func(tx *gorm.DB) error {
			if err := tx.Clauses(clause.Locking{Strength: "UPDATE"}).Where("hash = ?", hashSecret(secret)).Take(&tok).Error; err != nil {
				if errors.Is(notFound(err), ErrNotFound) {
					return ErrEnrollmentInvalid
				}
				return err
			}
			now := s.now()
			if err := tok.refusal(now); err != nil {
				return err
			}
			if len(caps) > 0 {
				if err := tx.Exec("SELECT id FROM organizations WHERE id = ? FOR UPDATE", tok.OrgID).Error; err != nil {
					return err
				}
				var count int64
				if err := tx.Model(&Agent{}).Where("org_id = ? AND revoked_at IS NULL", tok.OrgID).Count(&count).Error; err != nil {
					return err
				}
				for _, c := range caps {
					if err := c(tok.OrgID, count); err != nil {
						return &AgentCapError{Err: err}
					}
				}
			}
			name, err := freeAgentName(tx, tok.OrgID, agentNameFrom(facts.Name))
			if err != nil {
				return err
			}
			tokID := tok.ID
			agent = &Agent{
				ID: newID("agt"), OrgID: tok.OrgID, Name: name, CredentialHash: hashSecret(credential),
				EnrollmentTokenID: &tokID, Facts: string(rawFacts), Version: facts.Version,
				EnrolledAt: now, FactsUpdatedAt: now,
			}
			if err := tx.Create(agent).Error; err != nil {
				return err
			}
			return tx.Model(&EnrollmentToken{}).Where("id = ?", tok.ID).Update("uses", gorm.Expr("uses + 1")).Error
		})
		if err == nil || !uniqueViolation(err) || attempt >= 5 {
			break
		}
	}
	switch {
	case err == nil:
		return agent, credential, &tok, nil
	case errors.Is(err, ErrEnrollmentInvalid):
		return nil, "", nil, err
	case errors.Is(err, ErrEnrollmentExpired), errors.Is(err, ErrEnrollmentRevoked), errors.Is(err, ErrEnrollmentUsedUp):
		return nil, "", &tok, err
	case errors.As(err, new(*AgentCapError)):
		return nil, "", &tok, err
	}
	return nil, "", nil, fmt.Errorf("enroll an agent: %w", err)
}

// AgentCap refuses one more agent of orgID, which has count agents that
// are not revoked (a plan limit); nil allows it.
type AgentCap func(orgID string, count int64) error

// AgentCapError is an enrollment an AgentCap refused.
type AgentCapError struct{ Err error }

func (e *AgentCapError) Error() string { return e.Err.Error() }
func (e *AgentCapError) Unwrap() error { return e.Err }

// AuthenticateAgent resolves an agent credential to its agent, refusing
// unknown credentials (ErrAgentCredentialInvalid) and revoked agents
// (ErrAgentRevoked).
func (s *Store) AuthenticateAgent(ctx context.Context, credential string) (*AgentIdentity, error) {
	if !strings.HasPrefix(credential, AgentCredentialPrefix) {
		return nil, ErrAgentCredentialInvalid
	}
	want := hashSecret(credential)
	var a Agent
	if err := s.conn(ctx).Select("id", "org_id", "name", "credential_hash", "revoked_at").
		Where("credential_hash = ?", want).Take(&a).Error; err != nil {
		if errors.Is(notFound(err), ErrNotFound) {
			return nil, ErrAgentCredentialInvalid
		}
		return nil, err
	}
	// The index lookup found it by hash already; comparing again in
	// constant time keeps the decision itself free of timing differences.
	if subtle.ConstantTimeCompare(a.CredentialHash, want) != 1 {
		return nil, ErrAgentCredentialInvalid
	}
	if a.RevokedAt != nil {
		return nil, ErrAgentRevoked
	}
	return &AgentIdentity{AgentID: a.ID, OrgID: a.OrgID, Name: a.Name}, nil
}

// ListAgents lists orgID's agents by name, revoked ones included.
func (s *Store) ListAgents(ctx context.Context, orgID string) ([]Agent, error) {
	var out []Agent
	err := s.conn(ctx).Where("org_id = ?", orgID).Order("revoked_at IS NOT NULL, name, id").Find(&out).Error
	return out, err
}

// AgentByID returns one of orgID's agents.
func (s *Store) AgentByID(ctx context.Context, orgID, id string) (*Agent, error) {
	var a Agent
	if err := s.conn(ctx).Where("org_id = ? AND id = ?", orgID, id).Take(&a).Error; err != nil {
		return nil, notFound(err)
	}
	return &a, nil
}

// AgentByRef returns one of orgID's agents by its ID or, failing that,
// its name (unique in the organization), so that people and the CLI can
// say --agent NAME.
func (s *Store) AgentByRef(ctx context.Context, orgID, ref string) (*Agent, error) {
	a, err := s.AgentByID(ctx, orgID, ref)
	if !errors.Is(err, ErrNotFound) {
		return a, err
	}
	var byName Agent
	if err := s.conn(ctx).Where("org_id = ? AND name = ?", orgID, ref).Take(&byName).Error; err != nil {
		return nil, notFound(err)
	}
	return &byName, nil
}

// RenameAgent renames one of orgID's agents; ErrConflict when another
// agent of the organization has the name.
func (s *Store) RenameAgent(ctx context.Context, orgID, id, name string) error {
	res := s.conn(ctx).Model(&Agent{}).Where("org_id = ? AND id = ?", orgID, id).Update("name", name)
	switch {
	case res.Error != nil && uniqueViolation(res.Error):
		return ErrConflict
	case res.Error != nil:
		return res.Error
	case res.RowsAffected == 0:
		return ErrNotFound
	}
	return nil
}

// RevokeAgent revokes one of orgID's agents: its credential stops working
// and the hub must close its tunnel. Revoking twice is a no-op.
func (s *Store) RevokeAgent(ctx context.Context, orgID, id string) error {
	if _, err := s.AgentByID(ctx, orgID, id); err != nil {
		return err
	}
	return s.conn(ctx).Model(&Agent{}).
		Where("org_id = ? AND id = ? AND revoked_at IS NULL", orgID, id).
		Update("revoked_at", s.now()).Error
}

// UpdateAgentFacts stores what the agent reported on (re)connecting. The
// agent ID comes from AuthenticateAgent, which fixed the organization.
func (s *Store) UpdateAgentFacts(ctx context.Context, agentID string, facts tunnel.AgentFacts) error {
	raw, err := json.Marshal(facts)
	if err != nil {
		return err
	}
	return s.conn(ctx).Model(&Agent{}).Where("id = ?", agentID).Updates(map[string]any{
		"facts": string(raw), "version": facts.Version, "facts_updated_at": s.now(),
	}).Error
}

// MarkAgentConnected records that replicaID holds the agent's tunnel
// since since (which also counts as a heartbeat).
func (s *Store) MarkAgentConnected(ctx context.Context, agentID, replicaID string, since time.Time) error {
	return s.conn(ctx).Model(&Agent{}).Where("id = ?", agentID).Updates(map[string]any{
		"connected_replica": replicaID, "connected_since": since.UTC(),
		"last_heartbeat_at": since.UTC(), "disconnected_since": nil,
	}).Error
}

// AgentHeartbeat records a heartbeat seen by replicaID. It changes
// nothing when another replica holds the tunnel now (a late heartbeat of
// an old connection) and reports whether it did.
func (s *Store) AgentHeartbeat(ctx context.Context, agentID, replicaID string, at time.Time) (bool, error) {
	res := s.conn(ctx).Model(&Agent{}).
		Where("id = ? AND connected_replica = ? AND disconnected_since IS NULL", agentID, replicaID).
		Update("last_heartbeat_at", at.UTC())
	return res.RowsAffected > 0, res.Error
}

// MarkAgentDisconnected records that replicaID lost the agent's tunnel at
// at. It changes nothing when another replica took the tunnel over in the
// meantime, and reports whether it did.
func (s *Store) MarkAgentDisconnected(ctx context.Context, agentID, replicaID string, at time.Time) (bool, error) {
	res := s.conn(ctx).Model(&Agent{}).
		Where("id = ? AND connected_replica = ? AND disconnected_since IS NULL", agentID, replicaID).
		Updates(map[string]any{"disconnected_since": at.UTC()})
	return res.RowsAffected > 0, res.Error
}

// MarkReplicaAgentsDisconnected marks every agent replicaID held as
// disconnected at at (a replica starting up clears what its previous run
// left behind) and returns how many there were.
func (s *Store) MarkReplicaAgentsDisconnected(ctx context.Context, replicaID string, at time.Time) (int64, error) {
	res := s.conn(ctx).Model(&Agent{}).
		Where("connected_replica = ? AND disconnected_since IS NULL", replicaID).
		Updates(map[string]any{"disconnected_since": at.UTC()})
	return res.RowsAffected, res.Error
}

// AgentEvent is one event an agent sent, as stored.
type AgentEvent struct {
	ID         int64 `gorm:"primaryKey"`
	AgentID    string
	OrgID      string
	EventID    string
	Kind       string
	Severity   string
	Time       time.Time
	CloneID    string
	SnapshotID string
	Pool       string
	Message    string
	Data       *string `gorm:"type:jsonb"`
	ReceivedAt time.Time
}

// TableName is the table of AgentEvent.
func (AgentEvent) TableName() string { return "agent_events" }

// NewAgentEvent is an event as the hub received it. EventID is the
// agent's own ID of the event; Data is JSON or empty.
type NewAgentEvent struct {
	EventID  string
	Kind     string
	Severity string
	Time     time.Time
	Clone    string
	Snapshot string
	Pool     string
	Message  string
	Data     json.RawMessage
}

// InsertAgentEvents stores events of agentID, each once: an event whose
// EventID the agent sent before is skipped (the tunnel redelivers after a
// reconnect). It returns how many were new.
func (s *Store) InsertAgentEvents(ctx context.Context, agentID string, events []NewAgentEvent) (int64, error) {
	if len(events) == 0 {
		return 0, nil
	}
	var a Agent
	if err := s.conn(ctx).Select("id", "org_id").Where("id = ?", agentID).Take(&a).Error; err != nil {
		return 0, notFound(err)
	}
	rows, err := agentEventRows(a, events, s.now())
	if err != nil {
		return 0, err
	}
	res := s.conn(ctx).Clauses(clause.OnConflict{
		Columns: []clause.Column{{Name: "agent_id"}, {Name: "event_id"}}, DoNothing: true,
	}).Create(&rows)
	return res.RowsAffected, res.Error
}

// agentEventRows are the rows of events of agent a, received at now.
func agentEventRows(a Agent, events []NewAgentEvent, now time.Time) ([]AgentEvent, error) {
	rows := make([]AgentEvent, 0, len(events))
	for i, e := range events {
		if e.EventID == "" {
			return nil, fmt.Errorf("event %d of agent %s has no event ID: events are deduplicated by it", i, a.ID)
		}
		row := AgentEvent{
			AgentID: a.ID, OrgID: a.OrgID, EventID: e.EventID, Kind: e.Kind, Severity: e.Severity,
			Time: e.Time.UTC(), CloneID: e.Clone, SnapshotID: e.Snapshot, Pool: e.Pool,
			Message: e.Message, ReceivedAt: now,
		}
		if len(e.Data) > 0 {
			d := string(e.Data)
			row.Data = &d
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// ListAgentEvents lists orgID's newest events of agentID (all agents when
// agentID is empty), at most limit.
func (s *Store) ListAgentEvents(ctx context.Context, orgID, agentID string, limit int) ([]AgentEvent, error) {
	q := s.conn(ctx).Where("org_id = ?", orgID)
	if agentID != "" {
		q = q.Where("agent_id = ?", agentID)
	}
	var out []AgentEvent
	err := q.Order("time DESC, id DESC").Limit(limit).Find(&out).Error
	return out, err
}

// LatestAgentEvents returns, per agent of orgID, its newest event of kind
// (the agent's last health summary, say), keyed by agent ID.
func (s *Store) LatestAgentEvents(ctx context.Context, orgID, kind string) (map[string]AgentEvent, error) {
	var rows []AgentEvent
	err := s.conn(ctx).Raw(`SELECT DISTINCT ON (agent_id) * FROM agent_events
		WHERE org_id = ? AND kind = ? ORDER BY agent_id, time DESC, id DESC`, orgID, kind).Scan(&rows).Error
	out := make(map[string]AgentEvent, len(rows))
	for _, r := range rows {
		out[r.AgentID] = r
	}
	return out, err
}

// HubAgent returns agentID's row for the tunnel hub, whose caller was
// authenticated as that agent (its organization is in the row).
func (s *Store) HubAgent(ctx context.Context, agentID string) (*Agent, error) {
	var a Agent
	if err := s.conn(ctx).Where("id = ?", agentID).Take(&a).Error; err != nil {
		return nil, notFound(err)
	}
	return &a, nil
}

// AgentReplica returns the replica recorded as holding agentID's tunnel,
// or "" when none does (never connected, or disconnected). It is
// the hub's lookup for relaying between replicas: it reveals nothing but
// a replica's address, and only to the platform itself.
func (s *Store) AgentReplica(ctx context.Context, agentID string) (string, error) {
	var a Agent
	err := s.conn(ctx).Select("connected_replica", "disconnected_since", "revoked_at", "connected_since").
		Where("id = ?", agentID).Take(&a).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	// A revoked agent's holder is returned too: its tunnel must be closed
	// there (callers refuse revoked agents before relaying anything else).
	if a.DisconnectedSince != nil || a.ConnectedSince == nil {
		return "", nil
	}
	return a.ConnectedReplica, nil
}
