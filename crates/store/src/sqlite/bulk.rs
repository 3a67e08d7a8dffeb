//! Bulk loading on SQLite: multi-row inserts through `json_each`, thousands of rows per
//! statement, one transaction per chunk.

use super::workflows::{insert_workflows_json, workflow_json};
use super::{BEGIN_WRITE, SqliteStore};
use crate::error::Result;
use crate::model::Workflow;
use crate::time::sqlite_ts;

/// Rows per statement: large enough to amortise the statement, small enough for memory.
const ROWS_PER_STATEMENT: usize = 5_000;

impl SqliteStore {
    /// Loads `workflows` and one `create` audit row each in one transaction.
    pub(crate) async fn bulk_load(&self, workflows: &[Workflow]) -> Result<()> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        for chunk in workflows.chunks(ROWS_PER_STATEMENT) {
            let rows = serde_json::Value::Array(chunk.iter().map(workflow_json).collect());
            insert_workflows_json(&mut tx, &rows).await?;
            let audits: Vec<serde_json::Value> = chunk
                .iter()
                .map(|w| {
                    serde_json::json!({
                        "workflow_id": w.id.to_string(), "to_assignee": w.assignee,
                        "level": w.escalation_level, "cycle": w.cycle,
                        "policy_version": w.policy_version,
                        "details": serde_json::json!({
                            "stage": w.stage, "due_at": w.due_at, "seeded": true
                        }).to_string(),
                        "created_at": sqlite_ts(w.created_at),
                    })
                })
                .collect();
            sqlx::query(
                "INSERT INTO audit_logs (workflow_id, action, reason, actor, to_assignee, level,
                     cycle, policy_version, details, created_at)
                 SELECT value->>'workflow_id', 'create', 'manual', 'seed', value->>'to_assignee',
                     value->>'level', value->>'cycle', value->>'policy_version',
                     value->>'details', value->>'created_at'
                 FROM json_each(?1)",
            )
            .bind(serde_json::Value::Array(audits).to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
