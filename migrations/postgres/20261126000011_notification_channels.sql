-- Per-user channel preferences: a JSON array of channel names ("email", "sms", "slack",
-- "webhook"); NULL means the default, email. In-app notifications are always written.
ALTER TABLE users ADD COLUMN channels text
    CHECK (channels IS NULL OR (channels::jsonb IS NOT NULL AND jsonb_typeof(channels::jsonb) = 'array'));

-- Deliveries held back until their check run finishes, so that a recipient of many
-- escalations in one run gets one digest per channel. The run's finishing transaction (or,
-- for a run that failed or got stuck, the delivery sweep) turns each (run, user, channel)
-- group into either its individual outbox rows or one digest row, and deletes the group —
-- in one transaction, under the run's row lock, so a group is decided exactly once.
CREATE TABLE outbox_held (
    id              bigserial PRIMARY KEY,
    check_run_id    bigint NOT NULL REFERENCES check_runs (id),
    -- "{user id}:{channel}": the digest's unit
    group_key       text NOT NULL,
    -- more than this many items in a group make a digest
    threshold       integer NOT NULL CHECK (threshold >= 0),
    -- the outbox row this item becomes when it is not digested:
    -- {channel, recipient, workflow_id, payload, idempotency_key}
    item            jsonb NOT NULL,
    idempotency_key text NOT NULL UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_held_run ON outbox_held (check_run_id, id);
