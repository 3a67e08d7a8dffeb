-- escalator schema, SQLite: mirrors migrations/postgres. Timestamps are TEXT in one fixed-width
-- UTC form, 2026-11-25T12:00:00.000000Z, so that text order is time order and range scans work;
-- the store always writes them through one formatter. JSON columns are TEXT holding JSON.

CREATE TABLE users (
    id           TEXT PRIMARY KEY CHECK (id <> ''),
    display_name TEXT NOT NULL,
    email        TEXT,
    phone        TEXT,
    slack        TEXT,
    manager_id   TEXT REFERENCES users (id),
    active       INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),
    updated_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),
    CHECK (manager_id IS NULL OR manager_id <> id)
);

CREATE TABLE calendars (
    id         TEXT PRIMARY KEY CHECK (id <> ''),
    timezone   TEXT NOT NULL,
    spec       TEXT NOT NULL CHECK (json_valid(spec)),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'))
);

CREATE TABLE escalation_policies (
    id          TEXT NOT NULL CHECK (id <> ''),
    version     INTEGER NOT NULL CHECK (version > 0),
    name        TEXT NOT NULL,
    calendar_id TEXT REFERENCES calendars (id),
    spec        TEXT NOT NULL CHECK (json_valid(spec)),
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),
    PRIMARY KEY (id, version)
);
CREATE TRIGGER escalation_policies_no_update BEFORE UPDATE ON escalation_policies
BEGIN SELECT RAISE(ABORT, 'escalation_policies is append-only: UPDATE refused'); END;
CREATE TRIGGER escalation_policies_no_delete BEFORE DELETE ON escalation_policies
BEGIN SELECT RAISE(ABORT, 'escalation_policies is append-only: DELETE refused'); END;

CREATE TABLE workflows (
    id                TEXT PRIMARY KEY,
    external_id       TEXT NOT NULL UNIQUE CHECK (external_id <> ''),
    title             TEXT NOT NULL,
    kind              TEXT NOT NULL,
    stage             TEXT NOT NULL,
    status            TEXT NOT NULL
        CHECK (status IN ('pending', 'escalated', 'on_hold', 'completed', 'cancelled')),
    policy_id         TEXT NOT NULL,
    policy_version    INTEGER NOT NULL,
    assignee          TEXT NOT NULL,
    initiator         TEXT NOT NULL,
    escalation_target TEXT,
    escalation_level  INTEGER NOT NULL DEFAULT 0 CHECK (escalation_level >= 0),
    cycle             INTEGER NOT NULL DEFAULT 1 CHECK (cycle >= 1),
    stage_started_at  TEXT NOT NULL,
    paused_at         TEXT,
    paused_seconds    INTEGER NOT NULL DEFAULT 0 CHECK (paused_seconds >= 0),
    warn_at           TEXT NOT NULL,
    due_at            TEXT NOT NULL,
    reminded_at       TEXT,
    escalated_at      TEXT,
    exhausted_at      TEXT,
    next_check_at     TEXT,
    metadata          TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    version           INTEGER NOT NULL DEFAULT 1,
    FOREIGN KEY (policy_id, policy_version) REFERENCES escalation_policies (id, version),
    CHECK ((status IN ('pending', 'escalated')) OR next_check_at IS NULL),
    CHECK ((status = 'on_hold') = (paused_at IS NOT NULL))
);
CREATE INDEX workflows_due ON workflows (next_check_at)
    WHERE status IN ('pending', 'escalated');
CREATE INDEX workflows_assignee ON workflows (assignee, status);
CREATE INDEX workflows_status_created ON workflows (status, created_at, id);

CREATE TABLE check_runs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    slot         TEXT UNIQUE,
    requested_by TEXT NOT NULL CHECK (requested_by IN ('beat', 'deadline', 'api', 'cli')),
    scope        TEXT NOT NULL DEFAULT 'all',
    as_of        TEXT NOT NULL,
    dry_run      INTEGER NOT NULL DEFAULT 0 CHECK (dry_run IN (0, 1)),
    status       TEXT NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    coalesced    INTEGER NOT NULL DEFAULT 1,
    batches      INTEGER NOT NULL DEFAULT 0,
    batches_done INTEGER NOT NULL DEFAULT 0,
    checked      INTEGER NOT NULL DEFAULT 0,
    reminded     INTEGER NOT NULL DEFAULT 0,
    escalated    INTEGER NOT NULL DEFAULT 0,
    failed       INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT NOT NULL,
    started_at   TEXT,
    finished_at  TEXT,
    error        TEXT
);
CREATE INDEX check_runs_created ON check_runs (created_at DESC);

-- Which batches of a run have committed: a batch job that runs twice (at-least-once delivery)
-- counts towards its run's completion only once.
CREATE TABLE check_run_batches (
    check_run_id INTEGER NOT NULL REFERENCES check_runs (id),
    batch_index  INTEGER NOT NULL,
    PRIMARY KEY (check_run_id, batch_index)
);

CREATE TABLE audit_logs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_id     TEXT NOT NULL REFERENCES workflows (id),
    action          TEXT NOT NULL CHECK (action IN ('create', 'remind', 'escalate', 'reassign',
        'complete', 'cancel', 'hold', 'resume', 'advance', 'notify', 'exhausted')),
    reason          TEXT NOT NULL CHECK (reason IN ('sla', 'manual', 'api')),
    actor           TEXT NOT NULL,
    from_assignee   TEXT,
    to_assignee     TEXT,
    level           INTEGER NOT NULL,
    cycle           INTEGER NOT NULL,
    policy_version  INTEGER NOT NULL,
    elapsed_seconds INTEGER,
    check_run_id    INTEGER REFERENCES check_runs (id),
    details         TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(details)),
    created_at      TEXT NOT NULL
);
CREATE INDEX audit_logs_workflow ON audit_logs (workflow_id, id);
CREATE INDEX audit_logs_check_run ON audit_logs (check_run_id) WHERE check_run_id IS NOT NULL;
CREATE UNIQUE INDEX audit_logs_one_sla_effect ON audit_logs (workflow_id, cycle, level, action)
    WHERE action IN ('remind', 'escalate', 'exhausted');
CREATE TRIGGER audit_logs_no_update BEFORE UPDATE ON audit_logs
BEGIN SELECT RAISE(ABORT, 'audit_logs is append-only: UPDATE refused'); END;
CREATE TRIGGER audit_logs_no_delete BEFORE DELETE ON audit_logs
BEGIN SELECT RAISE(ABORT, 'audit_logs is append-only: DELETE refused'); END;

CREATE TABLE notifications (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient   TEXT NOT NULL,
    workflow_id TEXT NOT NULL REFERENCES workflows (id),
    kind        TEXT NOT NULL CHECK (kind IN ('reminder', 'escalation', 'exhausted')),
    role        TEXT NOT NULL CHECK (role IN ('to', 'cc')),
    subject     TEXT NOT NULL,
    body        TEXT NOT NULL,
    dedup_key   TEXT NOT NULL UNIQUE,
    read_at     TEXT,
    created_at  TEXT NOT NULL
);
CREATE INDEX notifications_recipient ON notifications (recipient, id DESC);
CREATE INDEX notifications_workflow ON notifications (workflow_id);

CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    channel         TEXT NOT NULL CHECK (channel IN ('email', 'sms', 'slack', 'webhook', 'event')),
    recipient       TEXT NOT NULL,
    workflow_id     TEXT REFERENCES workflows (id),
    check_run_id    INTEGER REFERENCES check_runs (id),
    payload         TEXT NOT NULL CHECK (json_valid(payload)),
    idempotency_key TEXT NOT NULL UNIQUE,
    status          TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'sent', 'failed', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_error      TEXT,
    sent_at         TEXT,
    created_at      TEXT NOT NULL
);
CREATE INDEX outbox_pending ON outbox (next_attempt_at) WHERE status IN ('pending', 'failed');
CREATE INDEX outbox_workflow ON outbox (workflow_id);

-- The beat's leader lease. `epoch` is the fencing token: it grows on every takeover, and a
-- check run is only recorded by the holder of the current epoch while its lease is unexpired.
CREATE TABLE beat_leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    epoch      INTEGER NOT NULL,
    expires_at TEXT NOT NULL
);

INSERT INTO escalation_policies (id, version, name, calendar_id, spec) VALUES (
    'default', 1, 'Default: 24h SLA, reminder 2h before, escalate once', NULL,
    '{"sla_seconds": 86400, "warning": {"kind": "before", "seconds": 7200},
      "levels": [{"target": "manager", "sla_seconds": 86400}],
      "after_last": {"kind": "stop"}, "calendar_id": null}'
);
