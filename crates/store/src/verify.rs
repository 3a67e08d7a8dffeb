//! `escalator verify`: the invariants I1 to I5 checked over the whole database, in
//! portable SQL that runs unchanged on PostgreSQL and SQLite. Besides effects made twice or
//! without their audit, it names effects that are missing: a workflow the last complete check
//! of every workflow should have escalated or reminded, and left as it was.

use serde::Serialize;
use sqlx::Row;

use crate::error::Result;
use crate::{Store, rows::trusted};

/// One broken promise, with the workflow it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// I1 to I5.
    pub invariant: &'static str,
    /// What is wrong, in words.
    pub rule: &'static str,
    /// The workflow (or other row) concerned.
    pub subject: String,
}

/// At most this many rows are reported per rule.
const LIMIT: u32 = 100;

/// Open workflows, `w`, with the last complete check of every workflow (succeeded, not a dry
/// run, the latest instant), `r`, that nothing has touched since that check started (no audit
/// row since): each one due at its `as_of` must have been acted on by it. No row before the
/// first check.
macro_rules! untouched_since_last_full_check {
    () => {
        "SELECT CAST(w.id AS TEXT) AS subject FROM workflows w
         CROSS JOIN (SELECT as_of, started_at FROM check_runs
                     WHERE status = 'succeeded' AND scope = 'all' AND NOT dry_run
                       AND started_at IS NOT NULL
                     ORDER BY as_of DESC, id DESC LIMIT 1) r
         WHERE w.status IN ('pending', 'escalated') AND w.exhausted_at IS NULL
           AND NOT EXISTS (SELECT 1 FROM audit_logs a
                           WHERE a.workflow_id = w.id AND a.created_at >= r.started_at)"
    };
}

/// (invariant, rule, query returning one text column `subject`).
const RULES: &[(&str, &str, &str)] = &[
    (
        "I1",
        "past its deadline at the last complete check, yet neither escalated nor exhausted \
         (set aside as a failure, or passed over)",
        concat!(
            untouched_since_last_full_check!(),
            " AND w.due_at <= r.as_of"
        ),
    ),
    (
        "I2",
        "in its warning window at the last complete check, yet not reminded",
        concat!(
            untouched_since_last_full_check!(),
            " AND w.reminded_at IS NULL AND w.warn_at < w.due_at
              AND w.warn_at <= r.as_of AND r.as_of < w.due_at"
        ),
    ),
    (
        "I3",
        "a check run counts more batches done than it has (a batch counted twice)",
        "SELECT 'check_runs ' || CAST(id AS TEXT) AS subject FROM check_runs
         WHERE batches_done > batches",
    ),
    (
        "I1",
        "escalated twice at the same level of one SLA cycle",
        "SELECT CAST(workflow_id AS TEXT) AS subject FROM audit_logs WHERE action = 'escalate'
         GROUP BY workflow_id, cycle, level HAVING count(*) > 1",
    ),
    (
        "I1",
        "escalation level differs from the last escalation recorded in this cycle",
        "SELECT CAST(w.id AS TEXT) AS subject FROM workflows w
         LEFT JOIN (SELECT workflow_id, cycle, max(level) AS n FROM audit_logs
                    WHERE action = 'escalate' GROUP BY workflow_id, cycle) e
           ON e.workflow_id = w.id AND e.cycle = w.cycle
         WHERE w.escalation_level <> COALESCE(e.n, 0)",
    ),
    (
        "I2",
        "reminded twice at the same level of one SLA cycle",
        "SELECT CAST(workflow_id AS TEXT) AS subject FROM audit_logs WHERE action = 'remind'
         GROUP BY workflow_id, cycle, level HAVING count(*) > 1",
    ),
    (
        "I2",
        "marked reminded without a reminder in the audit log",
        "SELECT CAST(w.id AS TEXT) AS subject FROM workflows w
         WHERE w.reminded_at IS NOT NULL AND NOT EXISTS (
           SELECT 1 FROM audit_logs a WHERE a.workflow_id = w.id AND a.action = 'remind'
             AND a.cycle = w.cycle AND a.level = w.escalation_level)",
    ),
    (
        "I4",
        "reminded or escalated after it was completed or cancelled",
        "SELECT CAST(a.workflow_id AS TEXT) AS subject FROM audit_logs a
         JOIN audit_logs c ON c.workflow_id = a.workflow_id AND c.cycle = a.cycle
           AND c.action IN ('complete', 'cancel') AND a.id > c.id
         WHERE a.action IN ('remind', 'escalate')",
    ),
    (
        "I4",
        "closed or held but still scheduled for a check",
        "SELECT CAST(id AS TEXT) AS subject FROM workflows
         WHERE status NOT IN ('pending', 'escalated') AND next_check_at IS NOT NULL",
    ),
    (
        "I5",
        "no create row in the audit log",
        "SELECT CAST(w.id AS TEXT) AS subject FROM workflows w WHERE NOT EXISTS (
           SELECT 1 FROM audit_logs a WHERE a.workflow_id = w.id AND a.action = 'create')",
    ),
    (
        "I5",
        "notification without the audit row of its reminder or escalation",
        "SELECT CAST(n.id AS TEXT) AS subject FROM notifications n WHERE NOT EXISTS (
           SELECT 1 FROM audit_logs a WHERE a.workflow_id = n.workflow_id AND a.action =
             CASE n.kind WHEN 'reminder' THEN 'remind' WHEN 'escalation' THEN 'escalate'
                         ELSE 'exhausted' END)",
    ),
    (
        "I5",
        "audit row, notification or delivery naming a workflow that does not exist",
        "SELECT 'audit_logs ' || CAST(a.id AS TEXT) AS subject FROM audit_logs a
         WHERE NOT EXISTS (SELECT 1 FROM workflows w WHERE w.id = a.workflow_id)
         UNION ALL
         SELECT 'notifications ' || CAST(n.id AS TEXT) FROM notifications n
         WHERE NOT EXISTS (SELECT 1 FROM workflows w WHERE w.id = n.workflow_id)
         UNION ALL
         SELECT 'outbox ' || CAST(o.id AS TEXT) FROM outbox o
         WHERE o.workflow_id IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM workflows w WHERE w.id = o.workflow_id)",
    ),
    (
        "I5",
        "audit row or delivery naming a check run that does not exist",
        "SELECT 'audit_logs ' || CAST(a.id AS TEXT) AS subject FROM audit_logs a
         WHERE a.check_run_id IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM check_runs r WHERE r.id = a.check_run_id)
         UNION ALL
         SELECT 'outbox ' || CAST(o.id AS TEXT) FROM outbox o
         WHERE o.check_run_id IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM check_runs r WHERE r.id = o.check_run_id)",
    ),
    (
        "I5",
        "assignee differs from the last assignment recorded in the audit log",
        "SELECT CAST(w.id AS TEXT) AS subject FROM workflows w
         JOIN audit_logs a ON a.id = (SELECT max(x.id) FROM audit_logs x
                                      WHERE x.workflow_id = w.id AND x.to_assignee IS NOT NULL)
         WHERE a.to_assignee <> w.assignee",
    ),
];

/// The audit log's guard triggers, by backend: on PostgreSQL, against DELETE, TRUNCATE and
/// UPDATE (since migration 20 UPDATE has a trigger of its own, which clearing the restored
/// rows' transaction ids may pass; verify counted only the other two, so dropping it went
/// unnoticed).
const PG_TRIGGERS: &str = "SELECT count(*) AS n FROM pg_trigger
    WHERE tgname IN ('audit_logs_append_only', 'audit_logs_no_truncate',
                     'audit_logs_update_only_xact')
      AND tgrelid = 'audit_logs'::regclass AND NOT tgisinternal";
const PG_TRIGGERS_EXPECTED: i64 = 3;
const SQLITE_TRIGGERS: &str = "SELECT count(*) AS n FROM sqlite_master
    WHERE type = 'trigger' AND name IN ('audit_logs_no_update', 'audit_logs_no_delete')";
const SQLITE_TRIGGERS_EXPECTED: i64 = 2;

impl Store {
    /// Checks every rule; an empty list means the database keeps its promises.
    pub async fn verify(&self) -> Result<Vec<Violation>> {
        let mut found = Vec::new();
        for (invariant, rule, sql) in RULES {
            let sql = format!("{sql} LIMIT {LIMIT}");
            let subjects: Vec<String> = match self {
                Store::Postgres(s) => {
                    let rows = sqlx::query(trusted(sql)).fetch_all(s.pool()).await?;
                    rows.iter()
                        .map(|r| r.try_get("subject"))
                        .collect::<Result<_, _>>()?
                }
                Store::Sqlite(s) => {
                    let rows = sqlx::query(trusted(sql)).fetch_all(s.pool()).await?;
                    rows.iter()
                        .map(|r| r.try_get("subject"))
                        .collect::<Result<_, _>>()?
                }
            };
            found.extend(subjects.into_iter().map(|subject| Violation {
                invariant,
                rule,
                subject,
            }));
        }
        let (triggers, expected): (i64, i64) = match self {
            Store::Postgres(s) => (
                sqlx::query(PG_TRIGGERS)
                    .fetch_one(s.pool())
                    .await?
                    .try_get("n")?,
                PG_TRIGGERS_EXPECTED,
            ),
            Store::Sqlite(s) => (
                sqlx::query(SQLITE_TRIGGERS)
                    .fetch_one(s.pool())
                    .await?
                    .try_get("n")?,
                SQLITE_TRIGGERS_EXPECTED,
            ),
        };
        if triggers < expected {
            found.push(Violation {
                invariant: "I5",
                rule: "the audit log's append-only triggers are missing",
                subject: "audit_logs".into(),
            });
        }
        Ok(found)
    }
}
