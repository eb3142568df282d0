-- Browser sessions (platform/auth). The cookie holds a random secret; the
-- table keeps only its SHA-256, so a database dump yields no live session.
-- Logout deletes the row, which ends the session on every replica at once.

-- +goose Up
CREATE TABLE web_sessions (
    id_hash    bytea PRIMARY KEY,
    user_id    text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    provider   text NOT NULL,
    csrf_token text NOT NULL,
    ip         text NOT NULL DEFAULT '',
    user_agent text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX web_sessions_user_idx ON web_sessions (user_id);
CREATE INDEX web_sessions_expires_idx ON web_sessions (expires_at);

-- +goose Down
DROP TABLE web_sessions;
