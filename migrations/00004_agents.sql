-- Agents (issue 10): enrollment tokens an organization hands to new agents,
-- the agents they enrolled, and the events agents send over the tunnel.
-- The runtime role gets its privileges from migrations.GrantRuntime, which
-- grants on every table of the schema: nothing to add here.

-- +goose Up
-- An enrollment token is exchanged once (or up to max_uses times) for an
-- agent credential. Only its SHA-256 is stored; prefix recognises it.
CREATE TABLE enrollment_tokens (
    id         text PRIMARY KEY,
    org_id     text NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name       text NOT NULL DEFAULT '',
    prefix     text NOT NULL,
    hash       bytea NOT NULL UNIQUE,
    -- NULL: unlimited uses until expiry or revocation; 1: single use.
    max_uses   integer CHECK (max_uses IS NULL OR max_uses > 0),
    uses       integer NOT NULL DEFAULT 0 CHECK (uses >= 0),
    created_by text REFERENCES users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz,
    CHECK (max_uses IS NULL OR uses <= max_uses)
);
CREATE INDEX enrollment_tokens_org_idx ON enrollment_tokens (org_id);

-- An agent is one enrolled engine. Its credential is shown once (in the
-- enrollment answer); the table keeps its SHA-256. The connection columns
-- are the hub's: which replica holds the tunnel, since when, the last
-- heartbeat, and since when the agent is gone.
CREATE TABLE agents (
    id                  text PRIMARY KEY,
    org_id              text NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name                text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    credential_hash     bytea NOT NULL UNIQUE,
    enrollment_token_id text REFERENCES enrollment_tokens (id) ON DELETE SET NULL,
    facts               jsonb NOT NULL DEFAULT '{}',
    version             text NOT NULL DEFAULT '',
    enrolled_at         timestamptz NOT NULL DEFAULT now(),
    facts_updated_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at          timestamptz,
    connected_replica   text NOT NULL DEFAULT '',
    connected_since     timestamptz,
    last_heartbeat_at   timestamptz,
    disconnected_since  timestamptz,
    UNIQUE (org_id, name)
);

-- Events an agent sent. The tunnel redelivers after a reconnect, so an
-- event is identified by the agent's own event_id and stored once.
CREATE TABLE agent_events (
    id          bigserial PRIMARY KEY,
    agent_id    text NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    org_id      text NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    event_id    text NOT NULL CHECK (length(event_id) BETWEEN 1 AND 200),
    kind        text NOT NULL,
    severity    text NOT NULL DEFAULT '',
    time        timestamptz NOT NULL,
    clone_id    text NOT NULL DEFAULT '',
    snapshot_id text NOT NULL DEFAULT '',
    pool        text NOT NULL DEFAULT '',
    message     text NOT NULL DEFAULT '',
    data        jsonb,
    received_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (agent_id, event_id)
);
CREATE INDEX agent_events_org_time_idx ON agent_events (org_id, time DESC, id DESC);

-- +goose Down
DROP TABLE agent_events;
DROP TABLE agents;
DROP TABLE enrollment_tokens;
