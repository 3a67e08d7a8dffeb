//! Row mapping shared by both backends. The SQL column lists are identical; only uuid
//! decoding differs (PostgreSQL has a uuid type, SQLite stores the hyphenated text), so each
//! backend supplies `uuid`/`opt_uuid` and instantiates the mappers with `row_mappers!`.

/// The workflow columns every query selects (alias `w`).
pub(crate) const WORKFLOW_COLUMNS: &str = "w.id, w.external_id, w.title, w.kind, w.stage, \
    w.status, w.policy_id, w.policy_version, w.assignee, w.initiator, w.escalation_target, \
    w.escalation_level, w.cycle, w.stage_started_at, w.paused_at, w.paused_seconds, w.warn_at, \
    w.due_at, w.reminded_at, w.escalated_at, w.exhausted_at, w.next_check_at, w.metadata, \
    w.created_at, w.updated_at, w.version";
pub(crate) const AUDIT_COLUMNS: &str = "id, workflow_id, action, reason, actor, from_assignee, \
    to_assignee, level, cycle, policy_version, elapsed_seconds, check_run_id, details, created_at";
pub(crate) const CHECK_RUN_COLUMNS: &str = "id, slot, requested_by, scope, as_of, dry_run, \
    status, coalesced, batches, batches_done, checked, reminded, escalated, exhausted, renotified, \
    failed, created_at, \
    started_at, finished_at, error";
pub(crate) const NOTIFICATION_COLUMNS: &str =
    "id, recipient, workflow_id, kind, role, subject, body, read_at, created_at";
pub(crate) const OUTBOX_COLUMNS: &str = "id, channel, recipient, workflow_id, check_run_id, \
    payload, idempotency_key, status, attempts, next_attempt_at, last_error, sent_at, created_at";

macro_rules! row_mappers {
    ($row:ty) => {
        pub(crate) fn status(value: &str) -> Result<Status> {
            value.parse().map_err(|_| StoreError::Decode {
                column: "workflows.status",
                value: value.to_owned(),
            })
        }

        pub(crate) fn workflow(row: &$row) -> Result<Workflow> {
            Ok(Workflow {
                id: uuid(row, "id")?,
                external_id: row.try_get("external_id")?,
                title: row.try_get("title")?,
                kind: row.try_get("kind")?,
                stage: row.try_get("stage")?,
                status: status(row.try_get("status")?)?,
                policy_id: row.try_get("policy_id")?,
                policy_version: row.try_get("policy_version")?,
                assignee: row.try_get("assignee")?,
                initiator: row.try_get("initiator")?,
                escalation_target: row.try_get("escalation_target")?,
                escalation_level: row.try_get("escalation_level")?,
                cycle: row.try_get("cycle")?,
                stage_started_at: row.try_get("stage_started_at")?,
                paused_at: row.try_get("paused_at")?,
                paused_seconds: row.try_get("paused_seconds")?,
                warn_at: row.try_get("warn_at")?,
                due_at: row.try_get("due_at")?,
                reminded_at: row.try_get("reminded_at")?,
                escalated_at: row.try_get("escalated_at")?,
                exhausted_at: row.try_get("exhausted_at")?,
                next_check_at: row.try_get("next_check_at")?,
                metadata: row.try_get("metadata")?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
                version: row.try_get("version")?,
            })
        }

        pub(crate) fn user(row: &$row) -> Result<User> {
            Ok(User {
                id: row.try_get("id")?,
                display_name: row.try_get("display_name")?,
                email: row.try_get("email")?,
                phone: row.try_get("phone")?,
                slack: row.try_get("slack")?,
                manager_id: row.try_get("manager_id")?,
                active: row.try_get("active")?,
                channels: crate::logic::channels_from_text(row.try_get("channels")?),
            })
        }

        pub(crate) fn policy(row: &$row) -> Result<PolicyRecord> {
            let id: String = row.try_get("id")?;
            let policy = crate::logic::policy_from_json(&id, row.try_get("spec")?)?;
            Ok(PolicyRecord {
                version: row.try_get("version")?,
                name: row.try_get("name")?,
                created_at: row.try_get("created_at")?,
                policy,
                id,
            })
        }

        pub(crate) fn audit(row: &$row) -> Result<AuditEntry> {
            Ok(AuditEntry {
                id: row.try_get("id")?,
                workflow_id: uuid(row, "workflow_id")?,
                action: row.try_get("action")?,
                reason: row.try_get("reason")?,
                actor: row.try_get("actor")?,
                from_assignee: row.try_get("from_assignee")?,
                to_assignee: row.try_get("to_assignee")?,
                level: row.try_get("level")?,
                cycle: row.try_get("cycle")?,
                policy_version: row.try_get("policy_version")?,
                elapsed_seconds: row.try_get("elapsed_seconds")?,
                check_run_id: row.try_get("check_run_id")?,
                details: row.try_get("details")?,
                created_at: row.try_get("created_at")?,
            })
        }

        pub(crate) fn check_run(row: &$row) -> Result<CheckRun> {
            Ok(CheckRun {
                id: row.try_get("id")?,
                slot: row.try_get("slot")?,
                requested_by: row.try_get("requested_by")?,
                scope: row.try_get("scope")?,
                as_of: row.try_get("as_of")?,
                dry_run: row.try_get("dry_run")?,
                status: row.try_get("status")?,
                coalesced: row.try_get("coalesced")?,
                batches: row.try_get("batches")?,
                batches_done: row.try_get("batches_done")?,
                checked: row.try_get("checked")?,
                reminded: row.try_get("reminded")?,
                escalated: row.try_get("escalated")?,
                exhausted: row.try_get("exhausted")?,
                renotified: row.try_get("renotified")?,
                failed: row.try_get("failed")?,
                created_at: row.try_get("created_at")?,
                started_at: row.try_get("started_at")?,
                finished_at: row.try_get("finished_at")?,
                error: row.try_get("error")?,
            })
        }

        pub(crate) fn notification(row: &$row) -> Result<Notification> {
            Ok(Notification {
                id: row.try_get("id")?,
                recipient: row.try_get("recipient")?,
                workflow_id: uuid(row, "workflow_id")?,
                kind: row.try_get("kind")?,
                role: row.try_get("role")?,
                subject: row.try_get("subject")?,
                body: row.try_get("body")?,
                read_at: row.try_get("read_at")?,
                created_at: row.try_get("created_at")?,
            })
        }

        pub(crate) fn outbox(row: &$row) -> Result<OutboxEntry> {
            Ok(OutboxEntry {
                id: row.try_get("id")?,
                channel: row.try_get("channel")?,
                recipient: row.try_get("recipient")?,
                workflow_id: opt_uuid(row, "workflow_id")?,
                check_run_id: row.try_get("check_run_id")?,
                payload: row.try_get("payload")?,
                idempotency_key: row.try_get("idempotency_key")?,
                status: row.try_get("status")?,
                attempts: row.try_get("attempts")?,
                next_attempt_at: row.try_get("next_attempt_at")?,
                last_error: row.try_get("last_error")?,
                sent_at: row.try_get("sent_at")?,
                created_at: row.try_get("created_at")?,
            })
        }
    };
}
pub(crate) use row_mappers;

/// Marks SQL that this crate assembled from its own constant column lists (never from input)
/// as safe for sqlx's dynamic-query check. Values always go through binds.
pub(crate) fn trusted(sql: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(sql)
}
