-- Notifications (issue 13): events worth telling people about, the
-- transactional outbox that delivers them (email, Slack, webhooks), the
-- in-app inbox, the organization's channels and everyone's preferences.
-- platform/notify writes an event, its inbox rows and its outbox rows in
-- one transaction; workers on every replica claim outbox rows with
-- FOR UPDATE SKIP LOCKED inside the transaction that records the result.

-- +goose Up
-- One thing that happened, named from the catalogue (platform/notify).
-- Repeats of the same name and target within the folding window add to
-- count instead of making a new event.
CREATE TABLE notification_events (
    id          bigserial PRIMARY KEY,
    org_id      text NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name        text NOT NULL,
    severity    text NOT NULL CHECK (severity IN ('info', 'warning', 'error')),
    agent_id    text NOT NULL DEFAULT '',
    target      text NOT NULL DEFAULT '',
    message     text NOT NULL DEFAULT '',
    count       integer NOT NULL DEFAULT 1 CHECK (count > 0),
    first_at    timestamptz NOT NULL,
    last_at     timestamptz NOT NULL
);
CREATE INDEX notification_events_fold_idx ON notification_events (org_id, name, agent_id, target, last_at DESC);

-- The source of every event and repeat (an agent's event ID, a tunnel
-- session), so that a source delivered again (the tunnel redelivers after
-- a lost ack) is neither a second event nor counted twice.
CREATE TABLE notification_sources (
    source_key text PRIMARY KEY,
    event_id   bigint NOT NULL REFERENCES notification_events (id) ON DELETE CASCADE
);

-- The in-app inbox: one row per (event, member).
CREATE TABLE notification_inbox (
    id         bigserial PRIMARY KEY,
    org_id     text NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    user_id    text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    event_id   bigint NOT NULL REFERENCES notification_events (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    read_at    timestamptz,
    UNIQUE (event_id, user_id)
);
CREATE INDEX notification_inbox_user_idx ON notification_inbox (org_id, user_id, read_at, id DESC);

-- An organization's Slack incoming webhooks and generic webhooks. The
-- webhook secret signs deliveries (HMAC-SHA256); it is shown once.
CREATE TABLE notification_channels (
    id         text PRIMARY KEY,
    org_id     text NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    kind       text NOT NULL CHECK (kind IN ('slack', 'webhook')),
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    url        text NOT NULL,
    secret     text NOT NULL DEFAULT '',
    created_by text REFERENCES users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, name)
);

-- Preferences: user_id '' is the organization's default, otherwise the
-- member's override; event '*' is every event; channel is email, inbox,
-- slack, webhook, or digest (low-severity email collected into a
-- periodic digest instead of one email each).
CREATE TABLE notification_preferences (
    org_id     text NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    user_id    text NOT NULL DEFAULT '',
    event      text NOT NULL,
    channel    text NOT NULL CHECK (channel IN ('email', 'inbox', 'slack', 'webhook', 'digest')),
    enabled    boolean NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, user_id, event, channel)
);

-- The outbox: one message per (event, recipient, channel). idempotency_key
-- is unique and sent with the message (webhooks: a header; email:
-- Message-ID). state: pending -> delivered, or after the last attempt
-- dead (shown to admins, who may retry it). A digest message waits in
-- pending until next_attempt_at, the digest's time. payload holds what
-- cannot be rebuilt from the event (an invitation's link), and is
-- emptied once the message is delivered or dead.
CREATE TABLE notification_outbox (
    id              bigserial PRIMARY KEY,
    org_id          text NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    event_id        bigint NOT NULL REFERENCES notification_events (id) ON DELETE CASCADE,
    channel         text NOT NULL CHECK (channel IN ('email', 'slack', 'webhook', 'digest')),
    user_id         text REFERENCES users (id) ON DELETE CASCADE,
    channel_id      text REFERENCES notification_channels (id) ON DELETE CASCADE,
    address         text NOT NULL DEFAULT '',
    idempotency_key text NOT NULL UNIQUE,
    payload         text NOT NULL DEFAULT '',
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz
);
CREATE INDEX notification_outbox_due_idx ON notification_outbox (next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX notification_outbox_dead_idx ON notification_outbox (org_id, id DESC) WHERE state = 'dead';

-- Protected clones with an end to their protection, as the agents'
-- clone.ready and clone.protected events report it (written in the
-- transaction that stores the events), so that members hear before the
-- protection ends. notified_till is the protection end already warned of.
CREATE TABLE clone_protections (
    agent_id      text NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    clone_id      text NOT NULL,
    org_id        text NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    till          timestamptz NOT NULL,
    notified_till timestamptz,
    PRIMARY KEY (agent_id, clone_id)
);
CREATE INDEX clone_protections_till_idx ON clone_protections (till);

-- +goose Down
DROP TABLE clone_protections;
DROP TABLE notification_outbox;
DROP TABLE notification_preferences;
DROP TABLE notification_channels;
DROP TABLE notification_inbox;
DROP TABLE notification_sources;
DROP TABLE notification_events;
