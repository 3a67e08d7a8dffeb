-- Per-user channel preferences: a JSON array of channel names ("email", "sms", "slack",
-- "webhook"); NULL means the default, email. In-app notifications are always written.
ALTER TABLE users ADD COLUMN channels TEXT
    CHECK (channels IS NULL OR (json_valid(channels) AND json_type(channels) = 'array'));

-- Deliveries held back until their check run finishes (see the PostgreSQL migration).
CREATE TABLE outbox_held (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    check_run_id    INTEGER NOT NULL REFERENCES check_runs (id),
    group_key       TEXT NOT NULL,
    threshold       INTEGER NOT NULL CHECK (threshold >= 0),
    item            TEXT NOT NULL CHECK (json_valid(item)),
    idempotency_key TEXT NOT NULL UNIQUE,
    created_at      TEXT NOT NULL
);
CREATE INDEX outbox_held_run ON outbox_held (check_run_id, id);
