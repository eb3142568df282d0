-- Usage reports and billing (issue 13). Usage comes from the agents'
-- usage samples (agent/usage), one row per clone and per pool of each
-- sample; billing keeps a Stripe customer and subscription per
-- organization, the hourly metered reports sent to Stripe (kept until
-- sent, so none is lost or sent twice) and the webhook events applied.

-- +goose Up
-- One clone's use in one sample period [period_from, period_to). The key
-- is the agent's own sample ID: a sample sent again after a reconnect is
-- stored once. received_at decides which hourly billing report counts
-- it (a late sample is billed in the hour it arrives, never twice).
CREATE TABLE usage_clone_periods (
    agent_id        text NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    org_id          text NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    sample_id       text NOT NULL CHECK (length(sample_id) BETWEEN 1 AND 200),
    clone_id        text NOT NULL CHECK (length(clone_id) BETWEEN 1 AND 200),
    pool            text NOT NULL DEFAULT '',
    period_from     timestamptz NOT NULL,
    period_to       timestamptz NOT NULL CHECK (period_to >= period_from),
    seconds         double precision NOT NULL CHECK (seconds >= 0),
    diff_bytes      bigint NOT NULL DEFAULT 0 CHECK (diff_bytes >= 0),
    logical_bytes   bigint NOT NULL DEFAULT 0 CHECK (logical_bytes >= 0),
    cloning_seconds double precision NOT NULL DEFAULT 0 CHECK (cloning_seconds >= 0),
    destroyed       boolean NOT NULL DEFAULT false,
    received_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_id, sample_id, clone_id)
);
CREATE INDEX usage_clone_periods_org_idx ON usage_clone_periods (org_id, period_from);
CREATE INDEX usage_clone_periods_received_idx ON usage_clone_periods (received_at);

-- One pool's state in one sample period; snapshot_bytes is the space the
-- pool uses beyond its clones' own writes (the snapshots and main data).
CREATE TABLE usage_pool_periods (
    agent_id       text NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    org_id         text NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    sample_id      text NOT NULL CHECK (length(sample_id) BETWEEN 1 AND 200),
    pool           text NOT NULL,
    period_from    timestamptz NOT NULL,
    period_to      timestamptz NOT NULL CHECK (period_to >= period_from),
    seconds        double precision NOT NULL CHECK (seconds >= 0),
    used_bytes     bigint NOT NULL DEFAULT 0 CHECK (used_bytes >= 0),
    snapshot_bytes bigint NOT NULL DEFAULT 0 CHECK (snapshot_bytes >= 0),
    snapshots      integer NOT NULL DEFAULT 0,
    clones         integer NOT NULL DEFAULT 0,
    received_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_id, sample_id, pool)
);
CREATE INDEX usage_pool_periods_org_idx ON usage_pool_periods (org_id, period_from);
CREATE INDEX usage_pool_periods_received_idx ON usage_pool_periods (received_at);

-- Who created a clone through the platform (the engine proxy), for usage
-- per user. A clone ID reused on the same agent takes the newest owner.
CREATE TABLE usage_clone_owners (
    agent_id   text NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    org_id     text NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    clone_id   text NOT NULL,
    user_id    text REFERENCES users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_id, clone_id)
);

-- An organization's Stripe customer and subscription, as the webhooks
-- last reported them. plan is the plan whose limits apply; a failed
-- payment sets grace_until, after which the free plan's limits apply
-- (no data is deleted).
CREATE TABLE billing_accounts (
    org_id                 text PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
    stripe_customer_id     text UNIQUE,
    stripe_subscription_id text NOT NULL DEFAULT '',
    plan                   text NOT NULL DEFAULT '',
    subscription_status    text NOT NULL DEFAULT '',
    current_period_start   timestamptz,
    current_period_end     timestamptz,
    payment_failed_at      timestamptz,
    grace_until            timestamptz,
    updated_at             timestamptz NOT NULL DEFAULT now()
);

-- One metered quantity of one organization for one hour, frozen when
-- first computed. The idempotency key is derived from (org, hour, meter):
-- a retried report is the same Stripe request and never counts twice.
CREATE TABLE billing_usage_reports (
    id              bigserial PRIMARY KEY,
    org_id          text NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    period_start    timestamptz NOT NULL,
    meter           text NOT NULL,
    quantity        bigint NOT NULL CHECK (quantity >= 0),
    idempotency_key text NOT NULL UNIQUE,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'skipped')),
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text NOT NULL DEFAULT '',
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, period_start, meter)
);
CREATE INDEX billing_usage_reports_pending_idx ON billing_usage_reports (next_attempt_at) WHERE status = 'pending';

-- The hours whose reports have been computed (by any replica).
CREATE TABLE billing_report_hours (
    period_start timestamptz PRIMARY KEY,
    computed_at  timestamptz NOT NULL DEFAULT now()
);

-- Stripe webhook events applied, by Stripe's event ID: each once.
CREATE TABLE billing_webhook_events (
    event_id    text PRIMARY KEY,
    type        text NOT NULL,
    org_id      text NOT NULL DEFAULT '',
    received_at timestamptz NOT NULL DEFAULT now()
);

-- Invoices as Stripe's webhooks reported them, for the Billing page.
CREATE TABLE billing_invoices (
    stripe_invoice_id  text PRIMARY KEY,
    org_id             text NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    number             text NOT NULL DEFAULT '',
    status             text NOT NULL DEFAULT '',
    currency           text NOT NULL DEFAULT '',
    amount_due         bigint NOT NULL DEFAULT 0,
    amount_paid        bigint NOT NULL DEFAULT 0,
    hosted_invoice_url text NOT NULL DEFAULT '',
    period_start       timestamptz,
    period_end         timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX billing_invoices_org_idx ON billing_invoices (org_id, created_at DESC);

-- +goose Down
DROP TABLE billing_invoices;
DROP TABLE billing_webhook_events;
DROP TABLE billing_report_hours;
DROP TABLE billing_usage_reports;
DROP TABLE billing_accounts;
DROP TABLE usage_clone_owners;
DROP TABLE usage_pool_periods;
DROP TABLE usage_clone_periods;
