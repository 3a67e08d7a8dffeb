//! The batch transaction on PostgreSQL: claim due rows with `FOR UPDATE SKIP LOCKED`, apply
//! every effect set-wise, commit. Concurrent batches never see the same rows; a duplicate batch
//! finds nothing due.

use std::borrow::Borrow;

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use super::workflows::insert_audits;
use super::{PgStore, rows};
use crate::digest::{self, HeldRow};
use crate::effects::{Applied, BatchEffects, EffectInserts, HeldOutbox, NewOutbox, split_held};
use crate::error::{Result, StoreError};
use crate::model::{DueRange, DueWorkflow};
use crate::rows::WORKFLOW_COLUMNS;

/// An open batch transaction.
#[derive(Debug)]
pub struct PgBatch {
    tx: Transaction<'static, Postgres>,
    /// Held until the transaction ends ([`crate::batch_slots`]).
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl PgStore {
    pub(crate) async fn begin_batch(&self) -> Result<PgBatch> {
        let slot = std::sync::Arc::clone(&self.batch_slots)
            .acquire_owned()
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let mut tx = self.pool.begin().await?;
        // A user write (exclusive, `upsert_users`) re-arms the workflows exhausted in its own
        // snapshot. A round that had read "no manager" and exhausted a workflow after that
        // write looked left it unscheduled for good: rounds and user writes are serialized, a
        // user write waiting for the rounds in flight and later rounds seeing its users.
        sqlx::query(USER_WRITES_SHARED).execute(&mut *tx).await?;
        Ok(PgBatch { tx, _slot: slot })
    }
}

/// The shared side of the user writes' lock ([`super::USER_WRITES_LOCK`]).
const USER_WRITES_SHARED: &str =
    "SELECT pg_advisory_xact_lock_shared(hashtext('escalator:users:managers'))";

/// What a claim adds to its query: the rows stay locked, and rows another transaction holds
/// are passed over.
const DUE_LOCKED: &str = "FOR UPDATE OF w SKIP LOCKED";

/// Open workflows due at $1 in the range from ($3, $5) to ($4, $6) of `(next_check_at, id)`
/// ([`DueRange`]; a bound without its id is the nil uuid, below every id), in that order, at
/// most $2; `lock` ends the query (empty: a read that locks nothing). The bounds are row
/// comparisons on the partial index workflows_due `(next_check_at, id)`, so this is an index
/// range scan over the rows of the slice only, even inside a crowd of workflows sharing one
/// instant.
///
/// The rows are locked in a subquery and the assignee's manager joined outside it: a lock that
/// finds a row changed since the statement began (a reassign committed meanwhile) rereads that
/// row, but rejoined the other tables' rows of the old one, so the claim read the new assignee
/// with no manager, and exhausted the workflow for want of one.
fn due_query(lock: &str) -> String {
    with_manager(&format!(
        "SELECT {WORKFLOW_COLUMNS} FROM workflows w WHERE {}
         ORDER BY w.next_check_at, w.id LIMIT $2 {lock}",
        due_in_range()
    ))
}

/// The rows of `locked` (a query over `workflows w`) with their assignee's active manager, in
/// `(next_check_at, id)` order.
fn with_manager(locked: &str) -> String {
    format!(
        "SELECT w.*, m.id AS assignee_manager
         FROM ({locked}) w LEFT JOIN users u ON u.id = w.assignee
              LEFT JOIN users m ON m.id = u.manager_id AND m.active
         ORDER BY w.next_check_at, w.id"
    )
}

/// The rows of [`due_query`], counted up to $2 (an index scan of the slice, no join).
fn due_count_query() -> String {
    format!(
        "SELECT count(*) FROM (SELECT 1 FROM workflows w WHERE {} LIMIT $2) t",
        due_in_range()
    )
}

/// The conditions of [`due_query`].
fn due_in_range() -> String {
    format!(
        "w.status IN ('pending', 'escalated') AND w.next_check_at <= $1
           AND (w.next_check_at, w.id) >= (COALESCE($3, '-infinity'::timestamptz),
                                           COALESCE($5, '{NIL}'::uuid))
           AND (w.next_check_at, w.id) < (COALESCE($4, 'infinity'::timestamptz),
                                          COALESCE($6, '{NIL}'::uuid))"
    )
}

/// The lowest uuid: a range bound without an id takes in (or leaves out) a whole instant.
const NIL: &str = "00000000-0000-0000-0000-000000000000";

/// Workflow $2 if it is open and due at $1; `lock` as in [`due_query`].
fn one_query(lock: &str) -> String {
    with_manager(&format!(
        "SELECT {WORKFLOW_COLUMNS} FROM workflows w
         WHERE w.id = $2 AND w.status IN ('pending', 'escalated') AND w.next_check_at <= $1
         {lock}"
    ))
}

impl PgStore {
    /// The workflows a claim would take, read without locking them: a dry run must not make a
    /// concurrent batch's `SKIP LOCKED` claim pass them over.
    pub(crate) async fn peek_due(
        &self,
        as_of: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<DueWorkflow>> {
        let rows = sqlx::query(crate::rows::trusted(due_query("")))
            .bind(as_of)
            .bind(i64::from(limit))
            .bind(None::<DateTime<Utc>>)
            .bind(None::<DateTime<Utc>>)
            .bind(None::<Uuid>)
            .bind(None::<Uuid>)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(due).collect()
    }

    /// [`PgStore::peek_due`] for one workflow.
    pub(crate) async fn peek_one(
        &self,
        id: Uuid,
        as_of: DateTime<Utc>,
    ) -> Result<Option<DueWorkflow>> {
        let row = sqlx::query(crate::rows::trusted(one_query("")))
            .bind(as_of)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(due).transpose()
    }
}

/// The users with these ids, in one query (unknown ids are left out).
pub(crate) async fn users_by_id<'e>(
    db: impl sqlx::PgExecutor<'e>,
    ids: &[String],
) -> Result<Vec<crate::model::User>> {
    let rows = sqlx::query(
        "SELECT id, display_name, email, phone, slack, manager_id, active, channels FROM users
         WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(db)
    .await?;
    rows.iter().map(rows::user).collect()
}

fn due(row: &sqlx::postgres::PgRow) -> Result<DueWorkflow> {
    Ok(DueWorkflow {
        workflow: rows::workflow(row)?,
        assignee_manager: row.try_get("assignee_manager")?,
    })
}

impl PgBatch {
    pub(crate) async fn claim_due(
        &mut self,
        as_of: DateTime<Utc>,
        range: &DueRange,
        limit: u32,
    ) -> Result<Vec<DueWorkflow>> {
        self.claim_due_with(DUE_LOCKED, as_of, range, limit).await
    }

    /// [`PgBatch::claim_due`] that waits for the rows other transactions hold instead of
    /// passing them over, then takes those still due once they commit (or all, if they roll
    /// back); None when they are held longer than `patience` (a transaction left open: the
    /// transaction goes on as if the wait had not been). Only for a transaction that holds no
    /// workflow yet: one holding rows could wait on a transaction waiting on it.
    pub(crate) async fn claim_due_waiting(
        &mut self,
        as_of: DateTime<Utc>,
        range: &DueRange,
        limit: u32,
        patience: std::time::Duration,
    ) -> Result<Option<Vec<DueWorkflow>>> {
        // the wait's own lock_timeout, in a savepoint: its error would otherwise abort the
        // whole transaction, and the setting would outlive the claim
        sqlx::query("SAVEPOINT claim_waiting")
            .execute(&mut *self.tx)
            .await?;
        sqlx::query(crate::rows::trusted(format!(
            "SET LOCAL lock_timeout = {}",
            patience.as_millis().max(1)
        )))
        .execute(&mut *self.tx)
        .await?;
        match self
            .claim_due_with("FOR UPDATE OF w", as_of, range, limit)
            .await
        {
            Ok(due) => {
                sqlx::query("SET LOCAL lock_timeout = DEFAULT")
                    .execute(&mut *self.tx)
                    .await?;
                sqlx::query("RELEASE SAVEPOINT claim_waiting")
                    .execute(&mut *self.tx)
                    .await?;
                Ok(Some(due))
            }
            Err(StoreError::Database(sqlx::Error::Database(e)))
                if e.code().as_deref() == Some("55P03") =>
            {
                for sql in [
                    "ROLLBACK TO SAVEPOINT claim_waiting",
                    "RELEASE SAVEPOINT claim_waiting",
                ] {
                    sqlx::query(sql).execute(&mut *self.tx).await?;
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether the range holds due workflows besides the `claimed` this transaction took: the
    /// rows a claim passed over because another transaction holds them (another copy of the
    /// same batch, a transition) still read as due until that transaction commits.
    pub(crate) async fn others_due(
        &mut self,
        as_of: DateTime<Utc>,
        range: &DueRange,
        claimed: usize,
    ) -> Result<bool> {
        let sql = due_count_query();
        let wanted = i64::try_from(claimed).unwrap_or(i64::MAX - 1) + 1;
        let found: i64 = sqlx::query_scalar(crate::rows::trusted(sql))
            .bind(as_of)
            .bind(wanted)
            .bind(range.from)
            .bind(range.until)
            .bind(range.from_id)
            .bind(range.until_id)
            .fetch_one(&mut *self.tx)
            .await?;
        Ok(found >= wanted)
    }

    async fn claim_due_with(
        &mut self,
        lock: &str,
        as_of: DateTime<Utc>,
        range: &DueRange,
        limit: u32,
    ) -> Result<Vec<DueWorkflow>> {
        let sql = due_query(lock);
        let rows = sqlx::query(crate::rows::trusted(sql))
            .bind(as_of)
            .bind(i64::from(limit))
            .bind(range.from)
            .bind(range.until)
            .bind(range.from_id)
            .bind(range.until_id)
            .fetch_all(&mut *self.tx)
            .await?;
        rows.iter().map(due).collect()
    }

    pub(crate) async fn claim_one(
        &mut self,
        id: Uuid,
        as_of: DateTime<Utc>,
    ) -> Result<Option<DueWorkflow>> {
        let sql = one_query("FOR UPDATE OF w");
        let row = sqlx::query(crate::rows::trusted(sql))
            .bind(as_of)
            .bind(id)
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
                    "INSERT INTO check_run_batches (check_run_id, batch_index) VALUES ($1, $2)
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
                "UPDATE check_runs SET checked = checked + $2, reminded = reminded + $3,
                     escalated = escalated + $4, failed = failed + $5,
                     exhausted = exhausted + $8, renotified = renotified + $9,
                     batches_done = batches_done + $6, progress_at = $7,
                     status = CASE WHEN (status = 'running' OR (status = 'failed' AND $6 = 1
                                                 AND started_at IS NOT NULL))
                                        AND batches_done + $6 >= batches
                                   THEN 'succeeded' ELSE status END,
                     error = CASE WHEN status = 'failed' AND $6 = 1 AND started_at IS NOT NULL
                                       AND batches_done + $6 >= batches
                                  THEN NULL ELSE error END,
                     finished_at = CASE WHEN (status = 'running' OR (status = 'failed' AND $6 = 1
                                                 AND started_at IS NOT NULL))
                                        AND batches_done + $6 >= batches
                                   THEN $7 ELSE finished_at END
                 WHERE id = $1
                 RETURNING status = 'succeeded' AND finished_at = $7 AS completed",
            )
            .bind(run)
            .bind(c.checked)
            .bind(c.reminded)
            .bind(c.escalated)
            .bind(c.failed)
            .bind(i32::from(first == 1))
            .bind(now)
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

    /// One UPDATE for every change; only rows still at the claimed version and still open are
    /// written (I4). Returns the ids written. Rows travel as typed arrays (UNNEST): no
    /// per-row statements and no JSON to parse.
    async fn apply_changes(
        &mut self,
        effects: &BatchEffects,
        now: DateTime<Utc>,
    ) -> Result<Vec<Uuid>> {
        let c = &effects.changes;
        if c.is_empty() {
            return Ok(Vec::new());
        }
        let done = sqlx::query(
            "UPDATE workflows w SET status = c.status, assignee = c.assignee,
                 escalation_level = c.level, warn_at = c.warn_at, due_at = c.due_at,
                 paused_seconds = c.paused_seconds, reminded_at = c.reminded_at,
                 escalated_at = c.escalated_at, exhausted_at = c.exhausted_at,
                 next_check_at = c.next_check_at, updated_at = $13, version = w.version + 1
             FROM UNNEST($1::uuid[], $2::int[], $3::text[], $4::text[], $5::int[],
                 $6::timestamptz[], $7::timestamptz[], $8::bigint[], $9::timestamptz[],
                 $10::timestamptz[], $11::timestamptz[], $12::timestamptz[])
               AS c(id, expected_version, status, assignee, level, warn_at, due_at,
                    paused_seconds, reminded_at, escalated_at, exhausted_at, next_check_at)
             WHERE w.id = c.id AND w.version = c.expected_version
               AND w.status IN ('pending', 'escalated')
             RETURNING w.id",
        )
        .bind(c.iter().map(|x| x.id).collect::<Vec<_>>())
        .bind(c.iter().map(|x| x.expected_version).collect::<Vec<_>>())
        .bind(c.iter().map(|x| x.status.as_str()).collect::<Vec<_>>())
        .bind(c.iter().map(|x| x.assignee.as_str()).collect::<Vec<_>>())
        .bind(c.iter().map(|x| x.level).collect::<Vec<_>>())
        .bind(c.iter().map(|x| x.warn_at).collect::<Vec<_>>())
        .bind(c.iter().map(|x| x.due_at).collect::<Vec<_>>())
        .bind(c.iter().map(|x| x.paused_seconds).collect::<Vec<_>>())
        .bind(c.iter().map(|x| x.reminded_at).collect::<Vec<_>>())
        .bind(c.iter().map(|x| x.escalated_at).collect::<Vec<_>>())
        .bind(c.iter().map(|x| x.exhausted_at).collect::<Vec<_>>())
        .bind(c.iter().map(|x| x.next_check_at).collect::<Vec<_>>())
        .bind(now)
        .fetch_all(&mut *self.tx)
        .await?;
        done.iter().map(|r| Ok(r.try_get("id")?)).collect()
    }

    async fn insert_notifications(
        &mut self,
        kept: &BatchEffects,
        now: DateTime<Utc>,
        inserts: EffectInserts,
    ) -> Result<u64> {
        let n = &kept.notifications;
        if n.is_empty() {
            return Ok(0);
        }
        let done = sqlx::query(crate::rows::trusted(format!(
            "INSERT INTO notifications (recipient, workflow_id, kind, role, subject, body,
                 dedup_key, created_at)
             SELECT recipient, workflow_id, kind, role, subject, body, dedup_key, $8
             FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],
                 $7::text[]) AS n(recipient, workflow_id, kind, role, subject, body, dedup_key){}",
            inserts.on_conflict("workflow_id, dedup_key")
        )))
        .bind(n.iter().map(|x| x.recipient.as_str()).collect::<Vec<_>>())
        .bind(n.iter().map(|x| x.workflow_id).collect::<Vec<_>>())
        .bind(n.iter().map(|x| x.kind).collect::<Vec<_>>())
        .bind(n.iter().map(|x| x.role).collect::<Vec<_>>())
        .bind(n.iter().map(|x| x.subject.as_str()).collect::<Vec<_>>())
        .bind(n.iter().map(|x| x.body.as_str()).collect::<Vec<_>>())
        .bind(n.iter().map(|x| x.dedup_key.as_str()).collect::<Vec<_>>())
        .bind(now)
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
        let o: Vec<&NewOutbox> = rows.iter().map(Borrow::borrow).collect();
        if o.is_empty() {
            return Ok(0);
        }
        let done = sqlx::query(crate::rows::trusted(format!(
            "INSERT INTO outbox (channel, recipient, workflow_id, check_run_id, payload,
                 idempotency_key, next_attempt_at, created_at)
             SELECT channel, recipient, workflow_id, $6, payload, idempotency_key, $7, $7
             FROM UNNEST($1::text[], $2::text[], $3::uuid[], $4::jsonb[], $5::text[])
               AS o(channel, recipient, workflow_id, payload, idempotency_key){}",
            inserts.on_conflict("workflow_id, idempotency_key")
        )))
        .bind(o.iter().map(|x| x.channel).collect::<Vec<_>>())
        .bind(o.iter().map(|x| x.recipient.as_str()).collect::<Vec<_>>())
        .bind(o.iter().map(|x| x.workflow_id).collect::<Vec<_>>())
        .bind(o.iter().map(|x| &x.payload).collect::<Vec<_>>())
        .bind(
            o.iter()
                .map(|x| x.idempotency_key.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(run)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(done.rows_affected())
    }

    /// Holds deliveries for the run's digest decision; without a run they go straight out.
    async fn insert_held(
        &mut self,
        run: Option<i64>,
        h: &[HeldOutbox<'_>],
        now: DateTime<Utc>,
        inserts: EffectInserts,
    ) -> Result<u64> {
        let Some(run) = run.filter(|_| !h.is_empty()) else {
            return Ok(0);
        };
        let done = sqlx::query(crate::rows::trusted(format!(
            "INSERT INTO outbox_held (check_run_id, group_key, threshold, item, idempotency_key,
                 created_at)
             SELECT $1, g, t, i, k, $6
             FROM UNNEST($2::text[], $3::int[], $4::jsonb[], $5::text[]) AS h(g, t, i, k){}",
            inserts.on_conflict("idempotency_key")
        )))
        .bind(run)
        .bind(h.iter().map(|x| x.group_key.as_str()).collect::<Vec<_>>())
        .bind(
            h.iter()
                .map(|x| i32::try_from(x.threshold).unwrap_or(i32::MAX))
                .collect::<Vec<_>>(),
        )
        .bind(
            h.iter()
                .map(|x| sqlx::types::Json(digest::item(x.outbox)))
                .collect::<Vec<_>>(),
        )
        .bind(
            h.iter()
                .map(|x| x.outbox.idempotency_key.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(done.rows_affected())
    }

    /// Takes the held deliveries of `groups` of run `run` out (DELETE … RETURNING: a
    /// concurrent release waits on the row locks and then finds nothing) and writes what they
    /// become. Returns the outbox rows written.
    pub(crate) async fn release_held(
        &mut self,
        run: i64,
        groups: &[String],
        limit: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let rows = sqlx::query(
            "DELETE FROM outbox_held h WHERE check_run_id = $1 AND group_key = ANY($2)
               AND ($3::bigint IS NULL OR id IN (
                   SELECT id FROM outbox_held WHERE check_run_id = $1 AND group_key = ANY($2)
                   ORDER BY id LIMIT $3))
             RETURNING id, group_key, threshold, item,
                 EXISTS (SELECT 1 FROM workflows w
                         WHERE w.id = (h.item->>'workflow_id')::uuid
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
                Ok(HeldRow {
                    id: r.try_get("id")?,
                    group_key: r.try_get("group_key")?,
                    threshold: r.try_get("threshold")?,
                    item: r.try_get("item")?,
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
