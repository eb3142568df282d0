-- Resource samples agents send (agent/monitor: host CPU, memory, pools'
-- space and IO, clones' CPU, memory and connections), for the agent and
-- clone pages' charts. "raw" rows are the samples as sent (kept two
-- days); "hour" rows are their hourly aggregates (kept 90 days). A raw
-- row is identified by its agent and time, so a sample redelivered after
-- a reconnect is stored once.

-- +goose Up
CREATE TABLE agent_metrics (
    agent_id   text NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    org_id     text NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    resolution text NOT NULL CHECK (resolution IN ('raw', 'hour')),
    at         timestamptz NOT NULL,
    samples    integer NOT NULL DEFAULT 1 CHECK (samples > 0),
    data       jsonb NOT NULL,
    PRIMARY KEY (agent_id, resolution, at)
);
CREATE INDEX agent_metrics_org_idx ON agent_metrics (org_id);
CREATE INDEX agent_metrics_downsample_idx ON agent_metrics (resolution, at);

-- +goose Down
DROP TABLE agent_metrics;
