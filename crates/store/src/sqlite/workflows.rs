//! Workflows on SQLite: idempotent create, reads, filtered listing and transitions, each write
//! with its audit row in the same transaction.

use chrono::{DateTime, Utc};
use escalator_policy::SlaStatus;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use uuid::Uuid;

use super::{BEGIN_WRITE, SqliteStore, get_calendar, get_policy, rows};
use crate::effects::NewAudit;
use crate::error::{Result, StoreError};
use crate::logic;
use crate::model::{
    AuditEntry, AuditPosition, Created, DoneUnderKey, NewWorkflow, Transition, TransitionContext,
    Workflow, WorkflowFilter,
};
use crate::rows::{AUDIT_COLUMNS, WORKFLOW_COLUMNS};
use crate::time::{sqlite_opt, sqlite_ts};

impl SqliteStore {
    pub(crate) async fn create_workflow(
        &self,
        new: &NewWorkflow,
        now: DateTime<Utc>,
    ) -> Result<Created> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
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
        insert_workflow(&mut tx, &workflow).await?;
        insert_audits(&mut tx, &[audit], now).await?;
        tx.commit().await?;
        Ok(Created {
            workflow,
            created: true,
        })
    }

    pub(crate) async fn get_workflow(&self, id: Uuid) -> Result<Workflow> {
        let sql = format!("SELECT {WORKFLOW_COLUMNS} FROM workflows w WHERE w.id = ?1");
        let row = sqlx::query(crate::rows::trusted(sql))
            .bind(id.to_string())
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
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
            "SELECT {WORKFLOW_COLUMNS} FROM workflows w WHERE 1"
        ));
        if let Some(s) = f.status {
            q.push(" AND w.status = ").push_bind(s.as_str());
        }
        if let Some(a) = &f.assignee {
            q.push(" AND w.assignee = ").push_bind(a.clone());
        }
        if let Some((sla, as_of)) = f.sla_status {
            let t = sqlite_ts(as_of);
            q.push(" AND w.status IN ('pending', 'escalated')");
            match sla {
                SlaStatus::Ok => q.push(" AND w.warn_at > ").push_bind(t),
                SlaStatus::Warning => q
                    .push(" AND w.warn_at <= ")
                    .push_bind(t.clone())
                    .push(" AND w.due_at > ")
                    .push_bind(t),
                SlaStatus::Breached => q.push(" AND w.due_at <= ").push_bind(t),
            };
        }
        if let Some(t) = f.due_before {
            // a closed workflow is due no more, and a held one's due_at is stale while paused
            q.push(" AND w.status IN ('pending', 'escalated') AND w.due_at < ")
                .push_bind(sqlite_ts(t));
        }
        if let Some((created, id)) = f.after {
            q.push(" AND (w.created_at, w.id) > (")
                .push_bind(sqlite_ts(created))
                .push(", ")
                .push_bind(id.to_string())
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
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let sql = format!("SELECT {WORKFLOW_COLUMNS} FROM workflows w WHERE w.id = ?1");
        let row = sqlx::query(crate::rows::trusted(sql))
            .bind(id.to_string())
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
                "SELECT action, to_assignee, json_extract(details, '$.stage') AS stage FROM audit_logs
                 WHERE workflow_id = ?1 AND json_extract(details, '$.idempotency_key') = ?2
                 ORDER BY id DESC LIMIT 1",
            )
            .bind(id.to_string())
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
            "UPDATE workflows SET stage = ?3, status = ?4, assignee = ?5, escalation_level = ?6,
                 cycle = ?7, stage_started_at = ?8, paused_at = ?9, paused_seconds = ?10,
                 warn_at = ?11, due_at = ?12, reminded_at = ?13, escalated_at = ?14,
                 exhausted_at = ?15, next_check_at = ?16, updated_at = ?17, version = ?18
             WHERE id = ?1 AND version = ?2",
        )
        .bind(id.to_string())
        .bind(current.version)
        .bind(&next.stage)
        .bind(next.status.as_str())
        .bind(&next.assignee)
        .bind(next.escalation_level)
        .bind(next.cycle)
        .bind(sqlite_ts(next.stage_started_at))
        .bind(sqlite_opt(next.paused_at))
        .bind(next.paused_seconds)
        .bind(sqlite_ts(next.warn_at))
        .bind(sqlite_ts(next.due_at))
        .bind(sqlite_opt(next.reminded_at))
        .bind(sqlite_opt(next.escalated_at))
        .bind(sqlite_opt(next.exhausted_at))
        .bind(sqlite_opt(next.next_check_at))
        .bind(sqlite_ts(next.updated_at))
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
                    "SELECT {AUDIT_COLUMNS} FROM audit_logs WHERE workflow_id = ?1 AND id > ?2
                     ORDER BY id LIMIT ?3"
                );
                sqlx::query(crate::rows::trusted(sql))
                    .bind(id.to_string())
                    .bind(after)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?
            }
            crate::TrailPage::Newest => {
                let sql = format!(
                    "SELECT {AUDIT_COLUMNS} FROM (SELECT {AUDIT_COLUMNS} FROM audit_logs
                     WHERE workflow_id = ?1 ORDER BY id DESC LIMIT ?2) t ORDER BY id"
                );
                sqlx::query(crate::rows::trusted(sql))
                    .bind(id.to_string())
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
        // one writer at a time: ids become visible in their own order
        let sql =
            format!("SELECT {AUDIT_COLUMNS} FROM audit_logs WHERE id > ?1 ORDER BY id LIMIT ?2");
        let rows = sqlx::query(crate::rows::trusted(sql))
            .bind(after.map_or(0, |a| a.id))
            .bind(i64::from(limit.clamp(1, 1000)))
            .fetch_all(&self.pool)
            .await?;
        let items = rows.iter().map(rows::audit).collect::<Result<Vec<_>>>()?;
        let last = items.last().map(|a| AuditPosition { xact: 0, id: a.id });
        Ok((items, last))
    }
}

async fn same_or_conflict(
    conn: &mut SqliteConnection,
    new: &NewWorkflow,
    existing: Workflow,
) -> Result<Created> {
    let created: Option<(Option<String>, String)> = sqlx::query_as(
        "SELECT to_assignee, details FROM audit_logs WHERE workflow_id = ?1 AND action = 'create'
         ORDER BY id LIMIT 1",
    )
    .bind(existing.id.to_string())
    .fetch_optional(conn)
    .await?;
    logic::same_or_conflict(new, existing, &logic::CreatedWith::from_audit(created))
}

async fn find_by_external_id(
    conn: &mut SqliteConnection,
    external_id: &str,
) -> Result<Option<Workflow>> {
    let sql = format!("SELECT {WORKFLOW_COLUMNS} FROM workflows w WHERE w.external_id = ?1");
    let row = sqlx::query(crate::rows::trusted(sql))
        .bind(external_id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(rows::workflow).transpose()
}

/// The JSON form of a workflow row for `json_each` inserts (SQLite's timestamp form).
pub(crate) fn workflow_json(w: &Workflow) -> serde_json::Value {
    serde_json::json!({
        "id": w.id.to_string(), "external_id": w.external_id, "title": w.title, "kind": w.kind,
        "stage": w.stage, "status": w.status.as_str(), "policy_id": w.policy_id,
        "policy_version": w.policy_version, "assignee": w.assignee, "initiator": w.initiator,
        "escalation_target": w.escalation_target, "escalation_level": w.escalation_level,
        "cycle": w.cycle, "stage_started_at": sqlite_ts(w.stage_started_at),
        "paused_at": sqlite_opt(w.paused_at), "paused_seconds": w.paused_seconds,
        "warn_at": sqlite_ts(w.warn_at), "due_at": sqlite_ts(w.due_at),
        "reminded_at": sqlite_opt(w.reminded_at), "escalated_at": sqlite_opt(w.escalated_at),
        "exhausted_at": sqlite_opt(w.exhausted_at), "next_check_at": sqlite_opt(w.next_check_at),
        "metadata": w.metadata.to_string(), "created_at": sqlite_ts(w.created_at),
        "updated_at": sqlite_ts(w.updated_at), "version": w.version,
    })
}

/// Inserts workflows given as a JSON array of [`workflow_json`] objects, in one statement.
pub(crate) async fn insert_workflows_json(
    conn: &mut SqliteConnection,
    rows: &serde_json::Value,
) -> Result<u64> {
    let done = sqlx::query(
        "INSERT INTO workflows (id, external_id, title, kind, stage, status, policy_id,
             policy_version, assignee, initiator, escalation_target, escalation_level, cycle,
             stage_started_at, paused_at, paused_seconds, warn_at, due_at, reminded_at,
             escalated_at, exhausted_at, next_check_at, metadata, created_at, updated_at, version)
         SELECT value->>'id', value->>'external_id', value->>'title', value->>'kind',
             value->>'stage', value->>'status', value->>'policy_id', value->>'policy_version',
             value->>'assignee', value->>'initiator', value->>'escalation_target',
             value->>'escalation_level', value->>'cycle', value->>'stage_started_at',
             value->>'paused_at', value->>'paused_seconds', value->>'warn_at', value->>'due_at',
             value->>'reminded_at', value->>'escalated_at', value->>'exhausted_at',
             value->>'next_check_at', value->>'metadata', value->>'created_at',
             value->>'updated_at', value->>'version'
         FROM json_each(?1)",
    )
    .bind(rows.to_string())
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

async fn insert_workflow(conn: &mut SqliteConnection, w: &Workflow) -> Result<()> {
    insert_workflows_json(conn, &serde_json::Value::Array(vec![workflow_json(w)])).await?;
    Ok(())
}

/// Inserts audit rows in one statement.
pub(crate) async fn insert_audits(
    conn: &mut SqliteConnection,
    audits: &[NewAudit],
    now: DateTime<Utc>,
) -> Result<u64> {
    if audits.is_empty() {
        return Ok(0);
    }
    let rows: Vec<serde_json::Value> = audits
        .iter()
        .map(|a| {
            serde_json::json!({
                "workflow_id": a.workflow_id.to_string(), "action": a.action, "reason": a.reason,
                "actor": a.actor, "from_assignee": a.from_assignee, "to_assignee": a.to_assignee,
                "level": a.level, "cycle": a.cycle, "policy_version": a.policy_version,
                "elapsed_seconds": a.elapsed_seconds, "check_run_id": a.check_run_id,
                "details": a.details.to_string(),
            })
        })
        .collect();
    let done = sqlx::query(
        "INSERT INTO audit_logs (workflow_id, action, reason, actor, from_assignee, to_assignee,
             level, cycle, policy_version, elapsed_seconds, check_run_id, details, created_at)
         SELECT value->>'workflow_id', value->>'action', value->>'reason', value->>'actor',
             value->>'from_assignee', value->>'to_assignee', value->>'level', value->>'cycle',
             value->>'policy_version', value->>'elapsed_seconds', value->>'check_run_id',
             value->>'details', ?2
         FROM json_each(?1)",
    )
    .bind(serde_json::Value::Array(rows).to_string())
    .bind(sqlite_ts(now))
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
