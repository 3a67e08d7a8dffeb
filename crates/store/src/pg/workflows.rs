//! Workflows on PostgreSQL: idempotent create, reads, filtered listing and transitions, each
//! write with its audit row in the same transaction.

use chrono::{DateTime, Utc};
use escalator_policy::SlaStatus;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::{PgStore, get_calendar, get_policy, rows};
use crate::effects::NewAudit;
use crate::error::{Result, StoreError};
use crate::logic;
use crate::model::{
    AuditEntry, AuditPosition, Created, DoneUnderKey, NewWorkflow, Transition, TransitionContext,
    Workflow, WorkflowFilter,
};
use crate::rows::{AUDIT_COLUMNS, WORKFLOW_COLUMNS};

impl PgStore {
    pub(crate) async fn create_workflow(
        &self,
        new: &NewWorkflow,
        now: DateTime<Utc>,
    ) -> Result<Created> {
        let mut tx = self.pool.begin().await?;
        if let Some(existing) = find_by_external_id(&mut tx, &new.external_id).await? {
            return same_or_conflict(&mut tx, new, existing).await;
        }
        let policy = get_policy(
            &mut *tx,
            new.policy_id.as_deref().unwrap_or("default"),
            None,
        )
        .await?;
        let calendar = match &policy.policy.spec().calendar_id {
            Some(id) => Some(get_calendar(&mut *tx, id).await?),
            None => None,
        };
        let (workflow, audit) = logic::plan_create(new, &policy, calendar.as_ref(), now)?;
        if !insert_workflow(&mut tx, &workflow).await? {
            // Lost a race with a concurrent create of the same external_id: theirs stands.
            drop(tx);
            let existing = self.get_workflow_by_external_id(&new.external_id).await?;
            let mut conn = self.pool.acquire().await?;
            return same_or_conflict(&mut conn, new, existing).await;
        }
        insert_audits(&mut tx, &[audit], now).await?;
        tx.commit().await?;
        Ok(Created {
            workflow,
            created: true,
        })
    }

    pub(crate) async fn get_workflow(&self, id: Uuid) -> Result<Workflow> {
        let sql = format!("SELECT {WORKFLOW_COLUMNS} FROM workflows w WHERE w.id = $1");
        let row = sqlx::query(crate::rows::trusted(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map(rows::workflow)
            .transpose()?
            .ok_or(StoreError::NotFound {
                entity: "workflow",
                id: id.to_string(),
            })
    }

    pub(crate) async fn get_workflow_by_external_id(&self, external_id: &str) -> Result<Workflow> {
        let mut conn = self.pool.acquire().await?;
        find_by_external_id(&mut conn, external_id)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                entity: "workflow",
                id: external_id.to_owned(),
            })
    }

    pub(crate) async fn list_workflows(&self, f: &WorkflowFilter) -> Result<Vec<Workflow>> {
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new(format!(
            "SELECT {WORKFLOW_COLUMNS} FROM workflows w WHERE true"
        ));
        if let Some(s) = f.status {
            q.push(" AND w.status = ").push_bind(s.as_str());
        }
        if let Some(a) = &f.assignee {
            q.push(" AND w.assignee = ").push_bind(a.clone());
        }
        if let Some((sla, as_of)) = f.sla_status {
            q.push(" AND w.status IN ('pending', 'escalated')");
            match sla {
                SlaStatus::Ok => q.push(" AND w.warn_at > ").push_bind(as_of),
                SlaStatus::Warning => q
                    .push(" AND w.warn_at <= ")
                    .push_bind(as_of)
                    .push(" AND w.due_at > ")
                    .push_bind(as_of),
                SlaStatus::Breached => q.push(" AND w.due_at <= ").push_bind(as_of),
            };
        }
        if let Some(t) = f.due_before {
            // a closed workflow is due no more, and a held one's due_at is stale while paused
            q.push(" AND w.status IN ('pending', 'escalated') AND w.due_at < ")
                .push_bind(t);
        }
        if let Some((created, id)) = f.after {
            q.push(" AND (w.created_at, w.id) > (")
                .push_bind(created)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        q.push(" ORDER BY w.created_at, w.id LIMIT ")
            .push_bind(i64::from(f.limit.clamp(1, 1000)));
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(rows::workflow).collect()
    }

    pub(crate) async fn transition(
        &self,
        id: Uuid,
        transition: &Transition,
        ctx: &TransitionContext,
    ) -> Result<Workflow> {
        let mut tx = self.pool.begin().await?;
        let sql = format!("SELECT {WORKFLOW_COLUMNS} FROM workflows w WHERE w.id = $1 FOR UPDATE");
        let row = sqlx::query(crate::rows::trusted(sql))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let current =
            row.as_ref()
                .map(rows::workflow)
                .transpose()?
                .ok_or(StoreError::NotFound {
                    entity: "workflow",
                    id: id.to_string(),
                })?;
        if let Some(key) = &ctx.idempotency_key {
            let done = sqlx::query(
                "SELECT action, to_assignee, details->>'stage' AS stage FROM audit_logs
                 WHERE workflow_id = $1 AND details->>'idempotency_key' = $2
                 ORDER BY id DESC LIMIT 1",
            )
            .bind(id)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = done {
                let done = DoneUnderKey {
                    action: row.try_get("action")?,
                    to_assignee: row.try_get("to_assignee")?,
                    stage: row.try_get("stage")?,
                };
                return logic::replay(current, transition, &done);
            }
        }
        let policy = get_policy(&mut *tx, &current.policy_id, Some(current.policy_version)).await?;
        let calendar = match &policy.policy.spec().calendar_id {
            Some(c) => Some(get_calendar(&mut *tx, c).await?),
            None => None,
        };
        let (next, audit) =
            logic::plan_transition(&current, transition, ctx, &policy.policy, calendar.as_ref())?;
        sqlx::query(
            "UPDATE workflows SET stage = $3, status = $4, assignee = $5, escalation_level = $6,
                 cycle = $7, stage_started_at = $8, paused_at = $9, paused_seconds = $10,
                 warn_at = $11, due_at = $12, reminded_at = $13, escalated_at = $14,
                 exhausted_at = $15, next_check_at = $16, updated_at = $17, version = $18
             WHERE id = $1 AND version = $2",
        )
        .bind(id)
        .bind(current.version)
        .bind(&next.stage)
        .bind(next.status.as_str())
        .bind(&next.assignee)
        .bind(next.escalation_level)
        .bind(next.cycle)
        .bind(next.stage_started_at)
        .bind(next.paused_at)
        .bind(next.paused_seconds)
        .bind(next.warn_at)
        .bind(next.due_at)
        .bind(next.reminded_at)
        .bind(next.escalated_at)
        .bind(next.exhausted_at)
        .bind(next.next_check_at)
        .bind(next.updated_at)
        .bind(next.version)
        .execute(&mut *tx)
        .await?;
        // the planned instant (no earlier than the workflow's last change), not the caller's
        insert_audits(&mut tx, &[audit], next.updated_at).await?;
        tx.commit().await?;
        Ok(next)
    }

    pub(crate) async fn workflow_audit_page(
        &self,
        id: Uuid,
        page: crate::TrailPage,
        limit: u32,
    ) -> Result<Vec<AuditEntry>> {
        let rows = match page {
            crate::TrailPage::After(after) => {
                let sql = format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit_logs WHERE workflow_id = $1 AND id > $2
                     ORDER BY id LIMIT $3"
                );
                sqlx::query(crate::rows::trusted(sql))
                    .bind(id)
                    .bind(after)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?
            }
            crate::TrailPage::Newest => {
                let sql = format!(
                    "SELECT {AUDIT_COLUMNS} FROM (SELECT {AUDIT_COLUMNS} FROM audit_logs
                     WHERE workflow_id = $1 ORDER BY id DESC LIMIT $2) t ORDER BY id"
                );
                sqlx::query(crate::rows::trusted(sql))
                    .bind(id)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(rows::audit).collect()
    }

    pub(crate) async fn list_audit(
        &self,
        after: Option<AuditPosition>,
        limit: u32,
    ) -> Result<(Vec<AuditEntry>, Option<AuditPosition>)> {
        // (transaction, id) order, up to the oldest transaction still running: every row of
        // an older one is visible now, and every later row sorts after them
        let sql = format!(
            "SELECT {AUDIT_COLUMNS}, COALESCE(xact_id, '0'::xid8)::text::bigint AS xact
             FROM audit_logs
             WHERE (COALESCE(xact_id, '0'::xid8), id) > ($1::bigint::text::xid8, $2)
               AND COALESCE(xact_id, '0'::xid8) < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY COALESCE(xact_id, '0'::xid8), id LIMIT $3"
        );
        let after = after.unwrap_or_default();
        let rows = sqlx::query(crate::rows::trusted(sql))
            .bind(after.xact)
            .bind(after.id)
            .bind(i64::from(limit.clamp(1, 1000)))
            .fetch_all(&self.pool)
            .await?;
        let items = rows.iter().map(rows::audit).collect::<Result<Vec<_>>>()?;
        let last = match (rows.last(), items.last()) {
            (Some(row), Some(item)) => Some(AuditPosition {
                xact: row.try_get("xact")?,
                id: item.id,
            }),
            _ => None,
        };
        Ok((items, last))
    }
}

async fn same_or_conflict(
    conn: &mut PgConnection,
    new: &NewWorkflow,
    existing: Workflow,
) -> Result<Created> {
    let created: Option<(Option<String>, String)> = sqlx::query_as(
        "SELECT to_assignee, details::text FROM audit_logs WHERE workflow_id = $1 AND action = 'create'
         ORDER BY id LIMIT 1",
    )
    .bind(existing.id)
    .fetch_optional(conn)
    .await?;
    logic::same_or_conflict(new, existing, &logic::CreatedWith::from_audit(created))
}

async fn find_by_external_id(
    conn: &mut PgConnection,
    external_id: &str,
) -> Result<Option<Workflow>> {
    let sql = format!("SELECT {WORKFLOW_COLUMNS} FROM workflows w WHERE w.external_id = $1");
    let row = sqlx::query(crate::rows::trusted(sql))
        .bind(external_id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(rows::workflow).transpose()
}

/// Inserts one workflow; false if its external_id is taken.
async fn insert_workflow(conn: &mut PgConnection, w: &Workflow) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO workflows (id, external_id, title, kind, stage, status, policy_id,
             policy_version, assignee, initiator, escalation_target, escalation_level, cycle,
             stage_started_at, paused_at, paused_seconds, warn_at, due_at, reminded_at,
             escalated_at, exhausted_at, next_check_at, metadata, created_at, updated_at, version)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
             $19, $20, $21, $22, $23, $24, $25, $26)
         ON CONFLICT (external_id) DO NOTHING",
    )
    .bind(w.id)
    .bind(&w.external_id)
    .bind(&w.title)
    .bind(&w.kind)
    .bind(&w.stage)
    .bind(w.status.as_str())
    .bind(&w.policy_id)
    .bind(w.policy_version)
    .bind(&w.assignee)
    .bind(&w.initiator)
    .bind(&w.escalation_target)
    .bind(w.escalation_level)
    .bind(w.cycle)
    .bind(w.stage_started_at)
    .bind(w.paused_at)
    .bind(w.paused_seconds)
    .bind(w.warn_at)
    .bind(w.due_at)
    .bind(w.reminded_at)
    .bind(w.escalated_at)
    .bind(w.exhausted_at)
    .bind(w.next_check_at)
    .bind(&w.metadata)
    .bind(w.created_at)
    .bind(w.updated_at)
    .bind(w.version)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Inserts audit rows in one statement (typed arrays through UNNEST).
pub(crate) async fn insert_audits(
    conn: &mut PgConnection,
    audits: &[NewAudit],
    now: DateTime<Utc>,
) -> Result<u64> {
    let a = audits;
    if a.is_empty() {
        return Ok(0);
    }
    let done = sqlx::query(
        "INSERT INTO audit_logs (workflow_id, action, reason, actor, from_assignee, to_assignee,
             level, cycle, policy_version, elapsed_seconds, check_run_id, details, created_at)
         SELECT workflow_id, action, reason, actor, from_assignee, to_assignee, level, cycle,
             policy_version, elapsed_seconds, check_run_id, details, $13
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
             $7::int[], $8::int[], $9::int[], $10::bigint[], $11::bigint[], $12::jsonb[])
           AS a(workflow_id, action, reason, actor, from_assignee, to_assignee, level, cycle,
                policy_version, elapsed_seconds, check_run_id, details)",
    )
    .bind(a.iter().map(|x| x.workflow_id).collect::<Vec<_>>())
    .bind(a.iter().map(|x| x.action).collect::<Vec<_>>())
    .bind(a.iter().map(|x| x.reason).collect::<Vec<_>>())
    .bind(a.iter().map(|x| x.actor.as_str()).collect::<Vec<_>>())
    .bind(
        a.iter()
            .map(|x| x.from_assignee.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        a.iter()
            .map(|x| x.to_assignee.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(a.iter().map(|x| x.level).collect::<Vec<_>>())
    .bind(a.iter().map(|x| x.cycle).collect::<Vec<_>>())
    .bind(a.iter().map(|x| x.policy_version).collect::<Vec<_>>())
    .bind(a.iter().map(|x| x.elapsed_seconds).collect::<Vec<_>>())
    .bind(a.iter().map(|x| x.check_run_id).collect::<Vec<_>>())
    .bind(a.iter().map(|x| &x.details).collect::<Vec<_>>())
    .bind(now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
