//! The batch transaction on SQLite: the write lock is taken at BEGIN, so a claim and its effects
//! are atomic and concurrent batches run one after the other, never on the same rows.

use std::borrow::Borrow;

use chrono::{DateTime, Utc};
use sqlx::{Row, Sqlite, Transaction};
use uuid::Uuid;

use super::workflows::insert_audits;
use super::{BEGIN_WRITE, SqliteStore, rows};
use crate::digest::{self, HeldRow};
use crate::effects::{Applied, BatchEffects, EffectInserts, HeldOutbox, NewOutbox, split_held};
use crate::error::{Result, StoreError};
use crate::model::{DueRange, DueWorkflow};
use crate::rows::WORKFLOW_COLUMNS;
use crate::time::{sqlite_opt, sqlite_ts};

/// An open batch transaction.
#[derive(Debug)]
pub struct SqliteBatch {
    tx: Transaction<'static, Sqlite>,
    /// Held until the transaction ends ([`crate::batch_slots`]).
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl SqliteStore {
    pub(crate) async fn begin_batch(&self) -> Result<SqliteBatch> {
        let slot = std::sync::Arc::clone(&self.batch_slots)
            .acquire_owned()
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        Ok(SqliteBatch {
            tx: self.pool.begin_with(BEGIN_WRITE).await?,
            _slot: slot,
        })
    }
}

/// The users with these ids, in one query (unknown ids are left out).
pub(crate) async fn users_by_id<'e>(
    db: impl sqlx::SqliteExecutor<'e>,
    ids: &[String],
) -> Result<Vec<crate::model::User>> {
    let ids = serde_json::to_string(ids).map_err(|source| StoreError::Json {
        context: "user ids",
        source,
    })?;
    let rows = sqlx::query(
        "SELECT id, display_name, email, phone, slack, manager_id, active, channels FROM users
         WHERE id IN (SELECT value FROM json_each(?1))",
    )
    .bind(ids)
    .fetch_all(db)
    .await?;
    rows.iter().map(rows::user).collect()
}

/// Open workflows due at ?1 in the range from (?3, ?5) to (?4, ?6) of `(next_check_at, id)`
/// ([`DueRange`]; a bound without its id is `''`, below every id), in that order, at most ?2:
/// row comparisons on the partial index workflows_due `(next_check_at, id)`. SQLite has no row
/// locks: a claim is exclusive because its transaction holds the write lock.
fn due_query() -> String {
    format!(
        "SELECT {WORKFLOW_COLUMNS}, m.id AS assignee_manager
         FROM workflows w LEFT JOIN users u ON u.id = w.assignee
              LEFT JOIN users m ON m.id = u.manager_id AND m.active
         WHERE {DUE_IN_RANGE}
         ORDER BY w.next_check_at, w.id LIMIT ?2"
    )
}

/// The conditions of [`due_query`].
const DUE_IN_RANGE: &str = "w.status IN ('pending', 'escalated') AND w.next_check_at <= ?1
           AND (w.next_check_at, w.id) >= (COALESCE(?3, ''), COALESCE(?5, ''))
           AND (w.next_check_at, w.id) < (COALESCE(?4, '~'), COALESCE(?6, ''))";

/// Workflow ?2 if it is open and due at ?1.
fn one_query() -> String {
    format!(
        "SELECT {WORKFLOW_COLUMNS}, m.id AS assignee_manager
         FROM workflows w LEFT JOIN users u ON u.id = w.assignee
              LEFT JOIN users m ON m.id = u.manager_id AND m.active
         WHERE w.id = ?2 AND w.status IN ('pending', 'escalated') AND w.next_check_at <= ?1"
    )
}

impl SqliteStore {
    /// The workflows a claim would take, read outside any write transaction (a dry run).
    pub(crate) async fn peek_due(
        &self,
        as_of: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<DueWorkflow>> {
        let rows = sqlx::query(crate::rows::trusted(due_query()))
            .bind(sqlite_ts(as_of))
            .bind(i64::from(limit))
            .bind(None::<String>)
            .bind(None::<String>)
            .bind(None::<String>)
            .bind(None::<String>)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(due).collect()
    }

    /// [`SqliteStore::peek_due`] for one workflow.
    pub(crate) async fn peek_one(
        &self,
        id: Uuid,
        as_of: DateTime<Utc>,
    ) -> Result<Option<DueWorkflow>> {
        let row = sqlx::query(crate::rows::trusted(one_query()))
            .bind(sqlite_ts(as_of))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(due).transpose()
    }
}

fn due(row: &sqlx::sqlite::SqliteRow) -> Result<DueWorkflow> {
    Ok(DueWorkflow {
        workflow: rows::workflow(row)?,
        assignee_manager: row.try_get("assignee_manager")?,
    })
}

impl SqliteBatch {
    pub(crate) async fn claim_due(
        &mut self,
        as_of: DateTime<Utc>,
        range: &DueRange,
        limit: u32,
    ) -> Result<Vec<DueWorkflow>> {
        let sql = due_query();
        let rows = sqlx::query(crate::rows::trusted(sql))
            .bind(sqlite_ts(as_of))
            .bind(i64::from(limit))
            .bind(sqlite_opt(range.from))
            .bind(sqlite_opt(range.until))
            .bind(range.from_id.map(|id| id.to_string()))
            .bind(range.until_id.map(|id| id.to_string()))
            .fetch_all(&mut *self.tx)
            .await?;
        rows.iter().map(due).collect()
    }

    /// Whether the range holds due workflows besides the `claimed` this transaction took (as
    /// on PostgreSQL; the write lock taken at BEGIN keeps other writers out, so none hold any).
    pub(crate) async fn others_due(
        &mut self,
        as_of: DateTime<Utc>,
        range: &DueRange,
        claimed: usize,
    ) -> Result<bool> {
        let sql = format!(
            "SELECT count(*) FROM (SELECT 1 FROM workflows w WHERE {DUE_IN_RANGE} LIMIT ?2) t"
        );
        let wanted = i64::try_from(claimed).unwrap_or(i64::MAX - 1) + 1;
        let found: i64 = sqlx::query_scalar(crate::rows::trusted(sql))
            .bind(sqlite_ts(as_of))
            .bind(wanted)
            .bind(sqlite_opt(range.from))
            .bind(sqlite_opt(range.until))
            .bind(range.from_id.map(|id| id.to_string()))
            .bind(range.until_id.map(|id| id.to_string()))
            .fetch_one(&mut *self.tx)
            .await?;
        Ok(found >= wanted)
    }

    pub(crate) async fn claim_one(
        &mut self,
        id: Uuid,
        as_of: DateTime<Utc>,
    ) -> Result<Option<DueWorkflow>> {
        let sql = one_query();
        let row = sqlx::query(crate::rows::trusted(sql))
            .bind(sqlite_ts(as_of))
            .bind(id.to_string())
            .fetch_optional(&mut *self.tx)
            .await?;
        row.as_ref().map(due).transpose()
    }

    pub(crate) async fn apply(
        &mut self,
        effects: &BatchEffects,
        now: DateTime<Utc>,
        inserts: EffectInserts,
    ) -> Result<Applied> {
        let changed = self.apply_changes(effects, now).await?;
        let (kept, counts) = effects.retain_applied(&changed);
        let (direct, held) = split_held(&kept.outbox, kept.check_run_id);
        let audits = insert_audits(&mut self.tx, &kept.audits, now).await?;
        let notifications = self.insert_notifications(&kept, now, inserts).await?;
        let outbox = self
            .insert_outbox(&direct, kept.check_run_id, now, inserts)
            .await?;
        let held = self
            .insert_held(kept.check_run_id, &held, now, inserts)
            .await?;
        let mut run_completed = false;
        if let Some(run) = kept.check_run_id {
            let first = match kept.batch_index {
                None => 0,
                Some(index) => sqlx::query(
                    "INSERT INTO check_run_batches (check_run_id, batch_index) VALUES (?1, ?2)
                 ON CONFLICT DO NOTHING",
                )
                .bind(run)
                .bind(index)
                .execute(&mut *self.tx)
                .await?
                .rows_affected(),
            };
            let c = counts;
            let done = sqlx::query(
                "UPDATE check_runs SET checked = checked + ?2, reminded = reminded + ?3,
                     escalated = escalated + ?4, failed = failed + ?5,
                     exhausted = exhausted + ?8, renotified = renotified + ?9,
                     batches_done = batches_done + ?6, progress_at = ?7,
                     status = CASE WHEN (status = 'running' OR (status = 'failed' AND ?6 = 1
                                                 AND started_at IS NOT NULL))
                                        AND batches_done + ?6 >= batches
                                   THEN 'succeeded' ELSE status END,
                     error = CASE WHEN status = 'failed' AND ?6 = 1 AND started_at IS NOT NULL
                                       AND batches_done + ?6 >= batches
                                  THEN NULL ELSE error END,
                     finished_at = CASE WHEN (status = 'running' OR (status = 'failed' AND ?6 = 1
                                                 AND started_at IS NOT NULL))
                                        AND batches_done + ?6 >= batches
                                   THEN ?7 ELSE finished_at END
                 WHERE id = ?1
                 RETURNING status = 'succeeded' AND finished_at = ?7 AS completed",
            )
            .bind(run)
            .bind(c.checked)
            .bind(c.reminded)
            .bind(c.escalated)
            .bind(c.failed)
            .bind(i32::from(first == 1))
            .bind(sqlite_ts(now))
            .bind(c.exhausted)
            .bind(c.renotified)
            .fetch_optional(&mut *self.tx)
            .await?;
            run_completed = match done {
                Some(row) => row
                    .try_get::<Option<bool>, _>("completed")?
                    .unwrap_or(false),
                None => false,
            };
        }
        Ok(Applied {
            changed,
            audits,
            notifications,
            outbox,
            held,
            counts,
            run_completed,
        })
    }

    /// One UPDATE … FROM json_each for every change, conditional on version and open status.
    async fn apply_changes(
        &mut self,
        effects: &BatchEffects,
        now: DateTime<Utc>,
    ) -> Result<Vec<Uuid>> {
        if effects.changes.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<serde_json::Value> = effects
            .changes
            .iter()
            .map(|c| {
                serde_json::json!({
                    "id": c.id.to_string(), "expected_version": c.expected_version,
                    "status": c.status.as_str(), "assignee": c.assignee, "level": c.level,
                    "warn_at": sqlite_ts(c.warn_at), "due_at": sqlite_ts(c.due_at),
                    "paused_seconds": c.paused_seconds,
                    "reminded_at": sqlite_opt(c.reminded_at),
                    "escalated_at": sqlite_opt(c.escalated_at),
                    "exhausted_at": sqlite_opt(c.exhausted_at),
                    "next_check_at": sqlite_opt(c.next_check_at),
                })
            })
            .collect();
        let done = sqlx::query(
            "UPDATE workflows SET status = c.status, assignee = c.assignee,
                 escalation_level = c.level, warn_at = c.warn_at, due_at = c.due_at,
                 paused_seconds = c.paused_seconds, reminded_at = c.reminded_at,
                 escalated_at = c.escalated_at, exhausted_at = c.exhausted_at,
                 next_check_at = c.next_check_at, updated_at = ?2,
                 version = workflows.version + 1
             FROM (SELECT value->>'id' AS id, value->>'expected_version' AS expected_version,
                       value->>'status' AS status, value->>'assignee' AS assignee,
                       value->>'level' AS level, value->>'warn_at' AS warn_at,
                       value->>'due_at' AS due_at, value->>'paused_seconds' AS paused_seconds,
                       value->>'reminded_at' AS reminded_at,
                       value->>'escalated_at' AS escalated_at,
                       value->>'exhausted_at' AS exhausted_at,
                       value->>'next_check_at' AS next_check_at
                   FROM json_each(?1)) AS c
             WHERE workflows.id = c.id AND workflows.version = c.expected_version
               -- `+` keeps SQLite from driving the join from the status index (re-reading the
               -- JSON for each of thousands of open workflows: seconds per batch); the primary
               -- key lookup per changed row is what we want
               AND +workflows.status IN ('pending', 'escalated')
             RETURNING workflows.id AS id",
        )
        .bind(serde_json::Value::Array(rows).to_string())
        .bind(sqlite_ts(now))
        .fetch_all(&mut *self.tx)
        .await?;
        done.iter()
            .map(|r| {
                let text: String = r.try_get("id")?;
                Uuid::parse_str(&text).map_err(|_| StoreError::Decode {
                    column: "workflows.id",
                    value: text,
                })
            })
            .collect()
    }

    async fn insert_notifications(
        &mut self,
        kept: &BatchEffects,
        now: DateTime<Utc>,
        inserts: EffectInserts,
    ) -> Result<u64> {
        if kept.notifications.is_empty() {
            return Ok(0);
        }
        let rows: Vec<serde_json::Value> = kept
            .notifications
            .iter()
            .map(|n| {
                serde_json::json!({
                    "recipient": n.recipient, "workflow_id": n.workflow_id.to_string(),
                    "kind": n.kind, "role": n.role, "subject": n.subject, "body": n.body,
                    "dedup_key": n.dedup_key,
                })
            })
            .collect();
        let done = sqlx::query(crate::rows::trusted(format!(
            "INSERT INTO notifications (recipient, workflow_id, kind, role, subject, body,
                 dedup_key, created_at)
             SELECT value->>'recipient', value->>'workflow_id', value->>'kind', value->>'role',
                 value->>'subject', value->>'body', value->>'dedup_key', ?2
             FROM json_each(?1) WHERE true{}",
            inserts.on_conflict("dedup_key")
        )))
        .bind(serde_json::Value::Array(rows).to_string())
        .bind(sqlite_ts(now))
        .execute(&mut *self.tx)
        .await?;
        Ok(done.rows_affected())
    }

    async fn insert_outbox<O: Borrow<NewOutbox>>(
        &mut self,
        rows: &[O],
        run: Option<i64>,
        now: DateTime<Utc>,
        inserts: EffectInserts,
    ) -> Result<u64> {
        if rows.is_empty() {
            return Ok(0);
        }
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(Borrow::borrow)
            .map(|o: &NewOutbox| {
                serde_json::json!({
                    "channel": o.channel, "recipient": o.recipient,
                    "workflow_id": o.workflow_id.map(|w| w.to_string()),
                    "payload": o.payload.to_string(), "idempotency_key": o.idempotency_key,
                })
            })
            .collect();
        let done = sqlx::query(crate::rows::trusted(format!(
            "INSERT INTO outbox (channel, recipient, workflow_id, check_run_id, payload,
                 idempotency_key, next_attempt_at, created_at)
             SELECT value->>'channel', value->>'recipient', value->>'workflow_id', ?2,
                 value->>'payload', value->>'idempotency_key', ?3, ?3
             FROM json_each(?1) WHERE true{}",
            inserts.on_conflict("idempotency_key")
        )))
        .bind(serde_json::Value::Array(rows).to_string())
        .bind(run)
        .bind(sqlite_ts(now))
        .execute(&mut *self.tx)
        .await?;
        Ok(done.rows_affected())
    }

    /// Holds deliveries for the run's digest decision; without a run they go straight out.
    async fn insert_held(
        &mut self,
        run: Option<i64>,
        held: &[HeldOutbox<'_>],
        now: DateTime<Utc>,
        inserts: EffectInserts,
    ) -> Result<u64> {
        let Some(run) = run.filter(|_| !held.is_empty()) else {
            return Ok(0);
        };
        let rows = held
            .iter()
            .map(|h| {
                Ok(serde_json::json!({
                    // clamped as on PostgreSQL: read back as an i32, a larger one failed
                    // the release of every group held beside it
                    "group_key": h.group_key,
                    "threshold": i32::try_from(h.threshold).unwrap_or(i32::MAX),
                    "item": serde_json::to_string(&digest::item(h.outbox))?,
                    "idempotency_key": h.outbox.idempotency_key,
                }))
            })
            .collect::<std::result::Result<Vec<_>, serde_json::Error>>()
            .map_err(|e| StoreError::Invalid {
                field: "outbox_held.item",
                message: e.to_string(),
            })?;
        let done = sqlx::query(crate::rows::trusted(format!(
            "INSERT INTO outbox_held (check_run_id, group_key, threshold, item, idempotency_key,
                 created_at)
             SELECT ?1, value->>'group_key', value->>'threshold', value->>'item',
                 value->>'idempotency_key', ?3
             FROM json_each(?2) WHERE true{}",
            inserts.on_conflict("idempotency_key")
        )))
        .bind(run)
        .bind(serde_json::Value::Array(rows).to_string())
        .bind(sqlite_ts(now))
        .execute(&mut *self.tx)
        .await?;
        Ok(done.rows_affected())
    }

    /// Takes the held deliveries of `groups` of run `run` out and writes what they become
    /// (the write lock taken at BEGIN serialises releases). Returns the outbox rows written.
    pub(crate) async fn release_held(
        &mut self,
        run: i64,
        groups: &[String],
        limit: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let groups = serde_json::to_string(groups).map_err(|source| StoreError::Json {
            context: "held groups",
            source,
        })?;
        let rows = sqlx::query(
            "DELETE FROM outbox_held WHERE check_run_id = ?1
               AND group_key IN (SELECT value FROM json_each(?2))
               AND (?3 IS NULL OR id IN (
                   SELECT id FROM outbox_held WHERE check_run_id = ?1
                     AND group_key IN (SELECT value FROM json_each(?2))
                   ORDER BY id LIMIT ?3))
             RETURNING id, group_key, threshold, item,
                 EXISTS (SELECT 1 FROM workflows w
                         WHERE w.id = json_extract(outbox_held.item, '$.workflow_id')
                           AND w.status IN ('completed', 'cancelled')) AS closed",
        )
        .bind(run)
        .bind(groups)
        .bind(limit)
        .fetch_all(&mut *self.tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let held = rows
            .iter()
            .map(|r| {
                let text: String = r.try_get("item")?;
                Ok(HeldRow {
                    id: r.try_get("id")?,
                    group_key: r.try_get("group_key")?,
                    threshold: r.try_get("threshold")?,
                    item: serde_json::from_str(&text).map_err(|source| StoreError::Json {
                        context: "outbox_held.item",
                        source,
                    })?,
                    closed: r.try_get("closed")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let out = digest::coalesce(run, &held, now)?;
        self.insert_outbox(&out, Some(run), now, EffectInserts::Idempotent)
            .await
    }

    pub(crate) async fn users(&mut self, ids: &[String]) -> Result<Vec<crate::model::User>> {
        users_by_id(&mut *self.tx, ids).await
    }

    pub(crate) async fn policy(
        &mut self,
        id: &str,
        version: i32,
    ) -> Result<crate::model::PolicyRecord> {
        super::get_policy(&mut *self.tx, id, Some(version)).await
    }

    pub(crate) async fn calendar(&mut self, id: &str) -> Result<escalator_policy::Calendar> {
        super::get_calendar(&mut *self.tx, id).await
    }

    pub(crate) async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn rollback(self) -> Result<()> {
        self.tx.rollback().await?;
        Ok(())
    }
}
