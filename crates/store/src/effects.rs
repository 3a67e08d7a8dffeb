//! The effects of one batch, applied set-wise in one transaction: a handful of statements,
//! whatever the number of workflows.

use chrono::{DateTime, Utc};
use escalator_policy::Status;
use uuid::Uuid;

use crate::model::BatchCounts;

/// The new SLA state of one workflow. Applied only if the row is still at `expected_version`
/// and still open (I4: nothing is written for a workflow that changed meanwhile).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowChange {
    /// The workflow.
    pub id: Uuid,
    /// Its version when it was claimed.
    pub expected_version: i32,
    /// New status (pending or escalated).
    pub status: Status,
    /// New assignee.
    pub assignee: String,
    /// New escalation level.
    pub level: i32,
    /// New warning instant.
    pub warn_at: DateTime<Utc>,
    /// New deadline.
    pub due_at: DateTime<Utc>,
    /// New paused time of the level (reset to 0 by an escalation).
    pub paused_seconds: i64,
    /// Reminder sent for the current level.
    pub reminded_at: Option<DateTime<Utc>>,
    /// Last escalation.
    pub escalated_at: Option<DateTime<Utc>>,
    /// Chain end recorded.
    pub exhausted_at: Option<DateTime<Utc>>,
    /// Next time a check must look at it.
    pub next_check_at: Option<DateTime<Utc>>,
}

/// An audit row to write with a change.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAudit {
    /// The workflow.
    pub workflow_id: Uuid,
    /// Action name (see the `audit_logs.action` check).
    pub action: &'static str,
    /// sla, manual or api.
    pub reason: &'static str,
    /// Who did it.
    pub actor: String,
    /// Assignee before.
    pub from_assignee: Option<String>,
    /// Assignee after.
    pub to_assignee: Option<String>,
    /// Level after.
    pub level: i32,
    /// Cycle.
    pub cycle: i32,
    /// Policy version used.
    pub policy_version: i32,
    /// How long the level had run.
    pub elapsed_seconds: Option<i64>,
    /// The check run.
    pub check_run_id: Option<i64>,
    /// Anything else.
    pub details: serde_json::Value,
}

/// An in-app notification to write with a change.
#[derive(Debug, Clone, PartialEq)]
pub struct NewNotification {
    /// User id.
    pub recipient: String,
    /// The workflow.
    pub workflow_id: Uuid,
    /// reminder, escalation, exhausted.
    pub kind: &'static str,
    /// to or cc.
    pub role: &'static str,
    /// Subject.
    pub subject: String,
    /// Body.
    pub body: String,
    /// Unique per (recipient, effect): a second write is ignored.
    pub dedup_key: String,
}

/// A delivery to queue with a change.
#[derive(Debug, Clone, PartialEq)]
pub struct NewOutbox {
    /// email, sms, slack, webhook, event.
    pub channel: &'static str,
    /// Address.
    pub recipient: String,
    /// The workflow, if any.
    pub workflow_id: Option<Uuid>,
    /// What to send.
    pub payload: serde_json::Value,
    /// Unique key (I2).
    pub idempotency_key: String,
}

/// Everything one batch writes. Rows that belong to a workflow whose change was refused (it
/// moved on since the claim) are dropped with it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchEffects {
    /// The check run the batch belongs to.
    pub check_run_id: Option<i64>,
    /// Set on the transaction that finishes batch number `i` of its run: a batch applied twice
    /// completes its run only once. None for intermediate rounds of a batch.
    pub batch_index: Option<i32>,
    /// Workflow state changes.
    pub changes: Vec<WorkflowChange>,
    /// Audit rows.
    pub audits: Vec<NewAudit>,
    /// In-app notifications.
    pub notifications: Vec<NewNotification>,
    /// Deliveries.
    pub outbox: Vec<NewOutbox>,
    /// Counts to add to the check run (reminded/escalated are recomputed from what applied).
    pub counts: BatchCounts,
}

/// What a batch actually changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Workflows whose change was written.
    pub changed: Vec<Uuid>,
    /// Audit rows written.
    pub audits: u64,
    /// Notifications written.
    pub notifications: u64,
    /// Outbox rows written.
    pub outbox: u64,
    /// Counts added to the check run.
    pub counts: BatchCounts,
    /// This batch was the last of its run: the run is now `succeeded`.
    pub run_completed: bool,
}

impl BatchEffects {
    /// Keep only the rows of workflows whose change was applied; rows with no workflow stay.
    pub(crate) fn retain_applied(&self, changed: &[Uuid]) -> BatchEffects {
        let ok: std::collections::HashSet<Uuid> = changed.iter().copied().collect();
        let mut counts = self.counts;
        counts.reminded = 0;
        counts.escalated = 0;
        let audits: Vec<NewAudit> = self
            .audits
            .iter()
            .filter(|a| ok.contains(&a.workflow_id))
            .cloned()
            .collect();
        for a in &audits {
            match a.action {
                "remind" => counts.reminded += 1,
                "escalate" => counts.escalated += 1,
                _ => {}
            }
        }
        BatchEffects {
            check_run_id: self.check_run_id,
            batch_index: self.batch_index,
            changes: Vec::new(),
            audits,
            notifications: self
                .notifications
                .iter()
                .filter(|n| ok.contains(&n.workflow_id))
                .cloned()
                .collect(),
            outbox: self
                .outbox
                .iter()
                .filter(|o| o.workflow_id.is_none_or(|w| ok.contains(&w)))
                .cloned()
                .collect(),
            counts,
        }
    }
}
