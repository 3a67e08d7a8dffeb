-- escalator schema, PostgreSQL. Timestamps are timestamptz in UTC.

CREATE TABLE users (
    id           text PRIMARY KEY CHECK (id <> ''),
    display_name text NOT NULL,
    email        text,
    phone        text,
    slack        text,
    manager_id   text REFERENCES users (id),
    active       boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (manager_id IS NULL OR manager_id <> id)
);

CREATE TABLE calendars (
    id         text PRIMARY KEY CHECK (id <> ''),
    timezone   text NOT NULL,
    -- the validated escalator_policy::CalendarSpec (windows, holidays) as JSON
    spec       jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Policy versions are immutable: a workflow pins the version it started with.
CREATE TABLE escalation_policies (
    id          text NOT NULL CHECK (id <> ''),
    version     integer NOT NULL CHECK (version > 0),
    name        text NOT NULL,
    calendar_id text REFERENCES calendars (id),
    -- the validated escalator_policy::PolicySpec as JSON
    spec        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, version)
);

CREATE FUNCTION escalator_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER escalation_policies_immutable
    BEFORE UPDATE OR DELETE ON escalation_policies
    FOR EACH ROW EXECUTE FUNCTION escalator_refuse_change();

CREATE TABLE workflows (
    id                uuid PRIMARY KEY,
    external_id       text NOT NULL UNIQUE CHECK (external_id <> ''),
    title             text NOT NULL,
    kind              text NOT NULL,
    stage             text NOT NULL,
    status            text NOT NULL
        CHECK (status IN ('pending', 'escalated', 'on_hold', 'completed', 'cancelled')),
    policy_id         text NOT NULL,
    policy_version    integer NOT NULL,
    assignee          text NOT NULL,
    initiator         text NOT NULL,
    escalation_target text,
    escalation_level  integer NOT NULL DEFAULT 0 CHECK (escalation_level >= 0),
    cycle             integer NOT NULL DEFAULT 1 CHECK (cycle >= 1),
    stage_started_at  timestamptz NOT NULL,
    paused_at         timestamptz,
    paused_seconds    bigint NOT NULL DEFAULT 0 CHECK (paused_seconds >= 0),
    warn_at           timestamptz NOT NULL,
    due_at            timestamptz NOT NULL,
    reminded_at       timestamptz,
    escalated_at      timestamptz,
    exhausted_at      timestamptz,
    next_check_at     timestamptz,
    metadata          jsonb NOT NULL DEFAULT '{}',
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    version           integer NOT NULL DEFAULT 1,
    FOREIGN KEY (policy_id, policy_version) REFERENCES escalation_policies (id, version),
    -- open workflows are always scheduled, closed and held ones never are
    CHECK ((status IN ('pending', 'escalated')) OR next_check_at IS NULL),
    CHECK ((status = 'on_hold') = (paused_at IS NOT NULL))
);

-- "What is due now" is a range scan over open workflows only: a sweep costs the number of
-- due workflows, not the number of open ones.
CREATE INDEX workflows_due ON workflows (next_check_at)
    WHERE status IN ('pending', 'escalated');
CREATE INDEX workflows_assignee ON workflows (assignee, status);
CREATE INDEX workflows_status_created ON workflows (status, created_at, id);

CREATE TABLE check_runs (
    id           bigserial PRIMARY KEY,
    -- scheduled cron slot; UNIQUE so that one slot produces exactly one run (I3)
    slot         timestamptz UNIQUE,
    requested_by text NOT NULL CHECK (requested_by IN ('beat', 'deadline', 'api', 'cli')),
    scope        text NOT NULL DEFAULT 'all',
    as_of        timestamptz NOT NULL,
    dry_run      boolean NOT NULL DEFAULT false,
    status       text NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    coalesced    integer NOT NULL DEFAULT 1,
    batches      integer NOT NULL DEFAULT 0,
    batches_done integer NOT NULL DEFAULT 0,
    checked      integer NOT NULL DEFAULT 0,
    reminded     integer NOT NULL DEFAULT 0,
    escalated    integer NOT NULL DEFAULT 0,
    failed       integer NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz,
    error        text
);
CREATE INDEX check_runs_created ON check_runs (created_at DESC);

-- Which batches of a run have committed: a batch job that runs twice (at-least-once delivery)
-- counts towards its run's completion only once.
CREATE TABLE check_run_batches (
    check_run_id bigint NOT NULL REFERENCES check_runs (id),
    batch_index  integer NOT NULL,
    PRIMARY KEY (check_run_id, batch_index)
);

CREATE TABLE audit_logs (
    id              bigserial PRIMARY KEY,
    workflow_id     uuid NOT NULL REFERENCES workflows (id),
    action          text NOT NULL CHECK (action IN ('create', 'remind', 'escalate', 'reassign',
        'complete', 'cancel', 'hold', 'resume', 'advance', 'notify', 'exhausted')),
    reason          text NOT NULL CHECK (reason IN ('sla', 'manual', 'api')),
    actor           text NOT NULL,
    from_assignee   text,
    to_assignee     text,
    level           integer NOT NULL,
    cycle           integer NOT NULL,
    policy_version  integer NOT NULL,
    elapsed_seconds bigint,
    check_run_id    bigint REFERENCES check_runs (id),
    details         jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_logs_workflow ON audit_logs (workflow_id, id);
CREATE INDEX audit_logs_check_run ON audit_logs (check_run_id) WHERE check_run_id IS NOT NULL;
-- The database itself refuses a second reminder or escalation for one (workflow, cycle, level):
-- a backstop behind the conditional UPDATE (I1, I2).
CREATE UNIQUE INDEX audit_logs_one_sla_effect ON audit_logs (workflow_id, cycle, level, action)
    WHERE action IN ('remind', 'escalate', 'exhausted');

-- I5: the audit trail is append-only.
CREATE TRIGGER audit_logs_append_only
    BEFORE UPDATE OR DELETE ON audit_logs
    FOR EACH ROW EXECUTE FUNCTION escalator_refuse_change();
CREATE TRIGGER audit_logs_no_truncate
    BEFORE TRUNCATE ON audit_logs
    FOR EACH STATEMENT EXECUTE FUNCTION escalator_refuse_change();

CREATE TABLE notifications (
    id          bigserial PRIMARY KEY,
    recipient   text NOT NULL,
    workflow_id uuid NOT NULL REFERENCES workflows (id),
    kind        text NOT NULL CHECK (kind IN ('reminder', 'escalation', 'exhausted')),
    role        text NOT NULL CHECK (role IN ('to', 'cc')),
    subject     text NOT NULL,
    body        text NOT NULL,
    -- one in-app row per (recipient, effect): a re-run cannot duplicate it
    dedup_key   text NOT NULL UNIQUE,
    read_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notifications_recipient ON notifications (recipient, id DESC);
CREATE INDEX notifications_workflow ON notifications (workflow_id);

CREATE TABLE outbox (
    id              bigserial PRIMARY KEY,
    channel         text NOT NULL CHECK (channel IN ('email', 'sms', 'slack', 'webhook', 'event')),
    recipient       text NOT NULL,
    workflow_id     uuid REFERENCES workflows (id),
    check_run_id    bigint REFERENCES check_runs (id),
    payload         jsonb NOT NULL,
    idempotency_key text NOT NULL UNIQUE,
    status          text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'sent', 'failed', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    sent_at         timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_pending ON outbox (next_attempt_at) WHERE status IN ('pending', 'failed');
CREATE INDEX outbox_workflow ON outbox (workflow_id);

-- The beat's leader lease. `epoch` is the fencing token: it grows on every takeover, and a
-- check run is only recorded by the holder of the current epoch while its lease is unexpired.
CREATE TABLE beat_leases (
    name       text PRIMARY KEY,
    holder     text NOT NULL,
    epoch      bigint NOT NULL,
    expires_at timestamptz NOT NULL
);

-- The seed's default policy: SLA 24h, warning 2h before, one level to the escalation target
-- (the workflow's escalation_target, else the assignee's manager).
INSERT INTO escalation_policies (id, version, name, calendar_id, spec) VALUES (
    'default', 1, 'Default: 24h SLA, reminder 2h before, escalate once', NULL,
    '{"sla_seconds": 86400, "warning": {"kind": "before", "seconds": 7200},
      "levels": [{"target": "manager", "sla_seconds": 86400}],
      "after_last": {"kind": "stop"}, "calendar_id": null}'
);
