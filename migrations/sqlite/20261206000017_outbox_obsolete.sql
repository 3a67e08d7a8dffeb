-- A delivery whose workflow moved on before it went out (completed or cancelled; for a
-- reminder, also escalated since) is not sent: the sender marks it `obsolete` (I4).
-- SQLite cannot alter a CHECK constraint: the table is rebuilt, ids and their sequence kept.
CREATE TABLE outbox_new (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    channel         TEXT NOT NULL CHECK (channel IN ('email', 'sms', 'slack', 'webhook', 'event')),
    recipient       TEXT NOT NULL,
    workflow_id     TEXT REFERENCES workflows (id),
    check_run_id    INTEGER REFERENCES check_runs (id),
    payload         TEXT NOT NULL CHECK (json_valid(payload)),
    idempotency_key TEXT NOT NULL UNIQUE,
    status          TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'sent', 'failed', 'dead', 'obsolete')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_error      TEXT,
    sent_at         TEXT,
    created_at      TEXT NOT NULL
);
INSERT INTO outbox_new (id, channel, recipient, workflow_id, check_run_id, payload,
                        idempotency_key, status, attempts, next_attempt_at, last_error, sent_at,
                        created_at)
SELECT id, channel, recipient, workflow_id, check_run_id, payload, idempotency_key, status,
       attempts, next_attempt_at, last_error, sent_at, created_at
FROM outbox;
DELETE FROM sqlite_sequence WHERE name = 'outbox_new';
INSERT INTO sqlite_sequence (name, seq) SELECT 'outbox_new', seq FROM sqlite_sequence WHERE name = 'outbox';
DROP TABLE outbox;
ALTER TABLE outbox_new RENAME TO outbox;
CREATE INDEX outbox_pending ON outbox (next_attempt_at) WHERE status IN ('pending', 'failed');
CREATE INDEX outbox_workflow ON outbox (workflow_id);
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE status = 'sent';
