//! The batch transaction on PostgreSQL: claim due rows with `FOR UPDATE SKIP LOCKED`, apply
//! every effect set-wise, commit. Concurrent batches never see the same rows; a duplicate batch
//! finds nothing due.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use super::workflows::insert_audits;
use super::{PgStore, rows};
use crate::effects::{Applied, BatchEffects};
use crate::error::Result;
use crate::model::DueWorkflow;
use crate::rows::WORKFLOW_COLUMNS;

/// An open batch transaction.
#[derive(Debug)]
pub struct PgBatch {
    tx: Transaction<'static, Postgres>,
}

impl PgStore {
    pub(crate) async fn begin_batch(&self) -> Result<PgBatch> {
        Ok(PgBatch {
            tx: self.pool.begin().await?,
        })
    }
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
        limit: u32,
    ) -> Result<Vec<DueWorkflow>> {
        // The predicate matches the partial index workflows_due exactly, so this is an index
        // range scan over the due rows only.
        let sql = format!(
            "SELECT {WORKFLOW_COLUMNS}, u.manager_id AS assignee_manager
             FROM workflows w LEFT JOIN users u ON u.id = w.assignee
             WHERE w.status IN ('pending', 'escalated') AND w.next_check_at <= $1
             ORDER BY w.next_check_at LIMIT $2
             FOR UPDATE OF w SKIP LOCKED"
        );
        let rows = sqlx::query(crate::rows::trusted(sql))
            .bind(as_of)
            .bind(i64::from(limit))
            .fetch_all(&mut *self.tx)
            .await?;
        rows.iter().map(due).collect()
    }

    pub(crate) async fn claim_one(
        &mut self,
        id: Uuid,
        as_of: DateTime<Utc>,
    ) -> Result<Option<DueWorkflow>> {
        let sql = format!(
            "SELECT {WORKFLOW_COLUMNS}, u.manager_id AS assignee_manager
             FROM workflows w LEFT JOIN users u ON u.id = w.assignee
             WHERE w.id = $2 AND w.status IN ('pending', 'escalated') AND w.next_check_at <= $1
             FOR UPDATE OF w"
        );
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
    ) -> Result<Applied> {
        let changed = self.apply_changes(effects, now).await?;
        let kept = effects.retain_applied(&changed);
        let audits = insert_audits(&mut self.tx, &kept.audits, now).await?;
        let notifications = self.insert_notifications(&kept, now).await?;
        let outbox = self.insert_outbox(&kept, now).await?;
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
            let c = kept.counts;
            let done = sqlx::query(
                "UPDATE check_runs SET checked = checked + $2, reminded = reminded + $3,
                     escalated = escalated + $4, failed = failed + $5,
                     batches_done = batches_done + $6,
                     status = CASE WHEN status = 'running' AND batches_done + $6 >= batches
                                   THEN 'succeeded' ELSE status END,
                     finished_at = CASE WHEN status = 'running' AND batches_done + $6 >= batches
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
            counts: kept.counts,
            run_completed,
        })
    }

    /// One UPDATE for every change; only rows still at the claimed version and still open are
    /// written (I4). Returns the ids written.
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
                    "id": c.id, "expected_version": c.expected_version,
                    "status": c.status.as_str(), "assignee": c.assignee, "level": c.level,
                    "warn_at": c.warn_at, "due_at": c.due_at, "paused_seconds": c.paused_seconds,
                    "reminded_at": c.reminded_at, "escalated_at": c.escalated_at,
                    "exhausted_at": c.exhausted_at, "next_check_at": c.next_check_at,
                })
            })
            .collect();
        let done = sqlx::query(
            "UPDATE workflows w SET status = c.status, assignee = c.assignee,
                 escalation_level = c.level, warn_at = c.warn_at, due_at = c.due_at,
                 paused_seconds = c.paused_seconds, reminded_at = c.reminded_at,
                 escalated_at = c.escalated_at, exhausted_at = c.exhausted_at,
                 next_check_at = c.next_check_at, updated_at = $2, version = w.version + 1
             FROM jsonb_to_recordset($1) AS c(id uuid, expected_version int, status text,
                 assignee text, level int, warn_at timestamptz, due_at timestamptz,
                 paused_seconds bigint, reminded_at timestamptz, escalated_at timestamptz,
                 exhausted_at timestamptz, next_check_at timestamptz)
             WHERE w.id = c.id AND w.version = c.expected_version
               AND w.status IN ('pending', 'escalated')
             RETURNING w.id",
        )
        .bind(serde_json::Value::Array(rows))
        .bind(now)
        .fetch_all(&mut *self.tx)
        .await?;
        done.iter().map(|r| Ok(r.try_get("id")?)).collect()
    }

    async fn insert_notifications(
        &mut self,
        kept: &BatchEffects,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        if kept.notifications.is_empty() {
            return Ok(0);
        }
        let rows: Vec<serde_json::Value> = kept
            .notifications
            .iter()
            .map(|n| {
                serde_json::json!({
                    "recipient": n.recipient, "workflow_id": n.workflow_id, "kind": n.kind,
                    "role": n.role, "subject": n.subject, "body": n.body, "dedup_key": n.dedup_key,
                })
            })
            .collect();
        let done = sqlx::query(
            "INSERT INTO notifications (recipient, workflow_id, kind, role, subject, body,
                 dedup_key, created_at)
             SELECT recipient, workflow_id, kind, role, subject, body, dedup_key, $2
             FROM jsonb_to_recordset($1) AS n(recipient text, workflow_id uuid, kind text,
                 role text, subject text, body text, dedup_key text)
             ON CONFLICT (dedup_key) DO NOTHING",
        )
        .bind(serde_json::Value::Array(rows))
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(done.rows_affected())
    }

    async fn insert_outbox(&mut self, kept: &BatchEffects, now: DateTime<Utc>) -> Result<u64> {
        if kept.outbox.is_empty() {
            return Ok(0);
        }
        let rows: Vec<serde_json::Value> = kept
            .outbox
            .iter()
            .map(|o| {
                serde_json::json!({
                    "channel": o.channel, "recipient": o.recipient, "workflow_id": o.workflow_id,
                    "payload": o.payload, "idempotency_key": o.idempotency_key,
                })
            })
            .collect();
        let done = sqlx::query(
            "INSERT INTO outbox (channel, recipient, workflow_id, check_run_id, payload,
                 idempotency_key, next_attempt_at, created_at)
             SELECT channel, recipient, workflow_id, $2, payload, idempotency_key, $3, $3
             FROM jsonb_to_recordset($1) AS o(channel text, recipient text, workflow_id uuid,
                 payload jsonb, idempotency_key text)
             ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(serde_json::Value::Array(rows))
        .bind(kept.check_run_id)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(done.rows_affected())
    }

    pub(crate) async fn users(&mut self, ids: &[String]) -> Result<Vec<crate::model::User>> {
        let rows = sqlx::query(
            "SELECT id, display_name, email, phone, slack, manager_id, active FROM users
             WHERE id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(rows::user).collect()
    }

    pub(crate) async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}
