package store

import (
	"context"
	"fmt"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// UsageClonePeriod is one clone's use in one usage sample period.
type UsageClonePeriod struct {
	AgentID        string `gorm:"primaryKey"`
	OrgID          string
	SampleID       string `gorm:"primaryKey"`
	CloneID        string `gorm:"primaryKey"`
	Pool           string
	PeriodFrom     time.Time
	PeriodTo       time.Time
	Seconds        float64
	DiffBytes      int64
	LogicalBytes   int64
	CloningSeconds float64
	Destroyed      bool
	ReceivedAt     time.Time
}

// TableName is the table of UsageClonePeriod.
func (UsageClonePeriod) TableName() string { return "usage_clone_periods" }

// UsagePoolPeriod is one pool's state in one usage sample period.
type UsagePoolPeriod struct {
	AgentID       string `gorm:"primaryKey"`
	OrgID         string
	SampleID      string `gorm:"primaryKey"`
	Pool          string `gorm:"primaryKey"`
	PeriodFrom    time.Time
	PeriodTo      time.Time
	Seconds       float64
	UsedBytes     int64
	SnapshotBytes int64
	Snapshots     int
	Clones        int
	ReceivedAt    time.Time
}

// TableName is the table of UsagePoolPeriod.
func (UsagePoolPeriod) TableName() string { return "usage_pool_periods" }

// InsertUsage stores the usage periods of agentID's samples, each once:
// rows whose (agent, sample, clone or pool) the store holds already are
// skipped, so a sample sent again after a reconnect counts once. The
// organization is the agent's (never a field of the rows). It returns how
// many clone rows were new.
func (s *Store) InsertUsage(ctx context.Context, agentID string, clones []UsageClonePeriod, pools []UsagePoolPeriod) (int64, error) {
	return s.InsertAgentEventsWithUsage(ctx, agentID, nil, clones, pools)
}

// InsertAgentEventsWithUsage stores a batch of agentID's events (as
// InsertAgentEvents) and the usage rows of its samples (as InsertUsage)
// in one transaction, with one lookup of the agent: the hub's ingestion
// of a batch. It returns how many clone rows were new.
func (s *Store) InsertAgentEventsWithUsage(ctx context.Context, agentID string, events []NewAgentEvent, clones []UsageClonePeriod, pools []UsagePoolPeriod) (int64, error) {
	if len(events) == 0 && len(clones) == 0 && len(pools) == 0 {
		return 0, nil
	}
	var a Agent
	if err := s.conn(ctx).Select("id", "org_id").Where("id = ?", agentID).Take(&a).Error; err != nil {
		return 0, notFound(err)
	}
	now := s.now()
	evRows, err := agentEventRows(a, events, now)
	if err != nil {
		return 0, err
	}
	for i := range clones {
		clones[i].AgentID, clones[i].OrgID, clones[i].ReceivedAt = a.ID, a.OrgID, now
	}
	for i := range pools {
		pools[i].AgentID, pools[i].OrgID, pools[i].ReceivedAt = a.ID, a.OrgID, now
	}
	var n int64
	err = s.conn(ctx).Transaction(func(tx *gorm.DB) error {
		if len(evRows) > 0 {
			if err := tx.Clauses(clause.OnConflict{
				Columns: []clause.Column{{Name: "agent_id"}, {Name: "event_id"}}, DoNothing: true,
			}).Create(&evRows).Error; err != nil {
				return err
			}
		}
		if len(clones) > 0 {
			res := tx.Clauses(clause.OnConflict{DoNothing: true}).CreateInBatches(&clones, 500)
			if res.Error != nil {
				return res.Error
			}
			n = res.RowsAffected
		}
		if len(pools) > 0 {
			return tx.Clauses(clause.OnConflict{DoNothing: true}).CreateInBatches(&pools, 500).Error
		}
		return nil
	})
	return n, err
}

// RecordCloneOwner records that userID created cloneID on agentID of
// orgID through the platform (usage per user).
func (s *Store) RecordCloneOwner(ctx context.Context, orgID, agentID, cloneID, userID string) error {
	return s.conn(ctx).Exec(`INSERT INTO usage_clone_owners (agent_id, org_id, clone_id, user_id, created_at)
		SELECT id, org_id, ?, ?, ? FROM agents WHERE id = ? AND org_id = ?
		ON CONFLICT (agent_id, clone_id) DO UPDATE SET user_id = excluded.user_id, created_at = excluded.created_at`,
		cloneID, userID, s.now(), agentID, orgID).Error
}

// UsageGrouping says how usage rows are grouped.
type UsageGrouping struct {
	// Period is "day" or "month" (UTC).
	Period string
	// By is "org", "agent", "user" or "clone".
	By string
}

// UsageTotals is one bucket's use for one key. Byte-seconds are bytes
// times seconds (GiB-hours = byte-seconds / 2^30 / 3600).
type UsageTotals struct {
	Bucket                 time.Time
	Key                    string
	Name                   string
	CloneSeconds           float64
	Clones                 int64
	CloneByteSeconds       float64
	SnapshotByteSeconds    float64
	Snapshots              int64
	LogicalByteSeconds     float64
	LogicalBytesOfClones   float64 // the sum of each clone's largest logical size
	CloningSecondsOfClones float64 // the sum of each clone's cloning time
}

// usageKeys are the SQL expressions of each grouping's key and name (for
// clone periods u, their owner o and agent ag), fixed here: never from
// input.
var usageKeys = map[string]struct{ cloneKey, cloneName, poolKey string }{
	"org":   {"''", "''", "''"},
	"agent": {"u.agent_id", "ag.name", "p.agent_id"},
	"user":  {"coalesce(o.user_id, '')", "coalesce(us.email, '')", "NULL"},
	"clone": {"u.agent_id || '/' || u.clone_id", "ag.name || '/' || u.clone_id", "NULL"},
}

// UsageByPeriod sums orgID's usage of the periods that start in [from,
// to), per bucket and key, ordered by bucket and key.
func (s *Store) UsageByPeriod(ctx context.Context, orgID string, from, to time.Time, g UsageGrouping) ([]UsageTotals, error) {
	keys, ok := usageKeys[g.By]
	if !ok {
		return nil, fmt.Errorf("usage grouping by %q: use org, agent, user or clone", g.By)
	}
	if g.Period != "day" && g.Period != "month" {
		return nil, fmt.Errorf("usage period %q: use day or month", g.Period)
	}
	// Pool storage belongs to agents, not to users or clones: those
	// groupings carry none (the key is NULL and matches no row).
	q := `
WITH c AS (
	SELECT date_trunc('` + g.Period + `', u.period_from, 'UTC') AS bucket, ` + keys.cloneKey + ` AS key, max(` + keys.cloneName + `) AS name,
		sum(u.seconds) AS clone_seconds, count(DISTINCT (u.agent_id, u.clone_id)) AS clones,
		sum(u.seconds * u.diff_bytes) AS clone_byte_seconds, sum(u.seconds * u.logical_bytes) AS logical_byte_seconds
	FROM usage_clone_periods u
	JOIN agents ag ON ag.id = u.agent_id
	LEFT JOIN usage_clone_owners o ON o.agent_id = u.agent_id AND o.clone_id = u.clone_id
	LEFT JOIN users us ON us.id = o.user_id
	WHERE u.org_id = @org AND u.period_from >= @from AND u.period_from < @to
	GROUP BY 1, 2
), p AS (
	SELECT date_trunc('` + g.Period + `', p.period_from, 'UTC') AS bucket, ` + keys.poolKey + ` AS key,
		sum(p.seconds * p.snapshot_bytes) AS snapshot_byte_seconds, max(p.snapshots) AS snapshots
	FROM usage_pool_periods p
	WHERE p.org_id = @org AND p.period_from >= @from AND p.period_from < @to
	GROUP BY 1, 2
)
SELECT coalesce(c.bucket, p.bucket) AS bucket, coalesce(c.key, p.key, '') AS key, coalesce(c.name, '') AS name,
	coalesce(c.clone_seconds, 0) AS clone_seconds, coalesce(c.clones, 0) AS clones,
	coalesce(c.clone_byte_seconds, 0) AS clone_byte_seconds, coalesce(c.logical_byte_seconds, 0) AS logical_byte_seconds,
	coalesce(p.snapshot_byte_seconds, 0) AS snapshot_byte_seconds, coalesce(p.snapshots, 0) AS snapshots
FROM c FULL JOIN p ON c.bucket = p.bucket AND c.key = p.key
ORDER BY 1, 2`
	var rows []UsageTotals
	err := s.conn(ctx).Raw(q, map[string]any{"org": orgID, "from": from.UTC(), "to": to.UTC()}).Scan(&rows).Error
	if g.By == "agent" {
		// Agents with pool storage only (no clones) get their names too.
		names := map[string]string{}
		for _, r := range rows {
			if r.Name != "" {
				names[r.Key] = r.Name
			}
		}
		var missing bool
		for _, r := range rows {
			missing = missing || r.Name == ""
		}
		if missing {
			var ags []Agent
			if err := s.conn(ctx).Select("id", "name").Where("org_id = ?", orgID).Find(&ags).Error; err != nil {
				return nil, err
			}
			for _, a := range ags {
				names[a.ID] = a.Name
			}
			for i := range rows {
				rows[i].Name = names[rows[i].Key]
			}
		}
	}
	return rows, err
}

// SavingsByMonth sums, per UTC month of [from, to), orgID's clones: the
// clone rows of UsageTotals plus, per distinct clone, its largest
// logical size and cloning time (what making it took).
func (s *Store) SavingsByMonth(ctx context.Context, orgID string, from, to time.Time) ([]UsageTotals, error) {
	q := `
WITH per_clone AS (
	SELECT date_trunc('month', period_from, 'UTC') AS bucket, agent_id, clone_id,
		sum(seconds) AS seconds, sum(seconds * diff_bytes) AS byte_seconds, sum(seconds * logical_bytes) AS logical_byte_seconds,
		max(logical_bytes) AS logical_bytes, max(cloning_seconds) AS cloning_seconds
	FROM usage_clone_periods
	WHERE org_id = @org AND period_from >= @from AND period_from < @to
	GROUP BY 1, 2, 3
)
SELECT bucket, sum(seconds) AS clone_seconds, count(*) AS clones, sum(byte_seconds) AS clone_byte_seconds,
	sum(logical_byte_seconds) AS logical_byte_seconds, sum(logical_bytes) AS logical_bytes_of_clones,
	sum(cloning_seconds) AS cloning_seconds_of_clones
FROM per_clone GROUP BY 1 ORDER BY 1`
	var rows []UsageTotals
	err := s.conn(ctx).Raw(q, map[string]any{"org": orgID, "from": from.UTC(), "to": to.UTC()}).Scan(&rows).Error
	return rows, err
}

// MeteredUsage is one organization's metered use received in an hour.
type MeteredUsage struct {
	OrgID              string
	CloneSeconds       float64
	StorageByteSeconds float64 // clones' writes plus the pools' snapshot space
}

// MeteredUsageReceived sums, per organization, the usage received in
// [from, to): what the hourly billing report of that hour counts. A
// sample is received once (InsertUsage), so it is billed once.
func (s *Store) MeteredUsageReceived(ctx context.Context, from, to time.Time) ([]MeteredUsage, error) {
	q := `
SELECT org_id, sum(clone_seconds) AS clone_seconds, sum(storage_byte_seconds) AS storage_byte_seconds FROM (
	SELECT org_id, sum(seconds) AS clone_seconds, sum(seconds * diff_bytes) AS storage_byte_seconds
	FROM usage_clone_periods WHERE received_at >= @from AND received_at < @to GROUP BY org_id
	UNION ALL
	SELECT org_id, 0, sum(seconds * snapshot_bytes)
	FROM usage_pool_periods WHERE received_at >= @from AND received_at < @to GROUP BY org_id
) t GROUP BY org_id ORDER BY org_id`
	var rows []MeteredUsage
	err := s.conn(ctx).Raw(q, map[string]any{"from": from.UTC(), "to": to.UTC()}).Scan(&rows).Error
	return rows, err
}

// OrgMeteredUsage sums orgID's usage received in [from, to) (the Billing
// page's period so far).
func (s *Store) OrgMeteredUsage(ctx context.Context, orgID string, from, to time.Time) (MeteredUsage, error) {
	q := `
SELECT @org AS org_id,
	coalesce((SELECT sum(seconds) FROM usage_clone_periods WHERE org_id = @org AND received_at >= @from AND received_at < @to), 0) AS clone_seconds,
	coalesce((SELECT sum(seconds * diff_bytes) FROM usage_clone_periods WHERE org_id = @org AND received_at >= @from AND received_at < @to), 0)
	+ coalesce((SELECT sum(seconds * snapshot_bytes) FROM usage_pool_periods WHERE org_id = @org AND received_at >= @from AND received_at < @to), 0) AS storage_byte_seconds`
	var out MeteredUsage
	err := s.conn(ctx).Raw(q, map[string]any{"org": orgID, "from": from.UTC(), "to": to.UTC()}).Scan(&out).Error
	return out, err
}
