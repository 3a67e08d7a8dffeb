//! The rows the store reads and writes, as plain Rust values shared by both backends.

use chrono::{DateTime, Utc};
use escalator_policy::{Deadlines, Snapshot, Status};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A person in the org chart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Stable id, referenced by workflows (`assignee`, `initiator`, ...).
    pub id: String,
    /// Name shown in messages.
    pub display_name: String,
    /// Email address, if the user takes email.
    pub email: Option<String>,
    /// Phone number for SMS, if any.
    pub phone: Option<String>,
    /// Slack member id or webhook handle, if any.
    pub slack: Option<String>,
    /// "escalate to the assignee's manager" walks this.
    pub manager_id: Option<String>,
    /// Inactive users receive nothing.
    pub active: bool,
    /// Channels besides in-app that this user is reached on ("email", "sms", "slack",
    /// "webhook"); None means the default, email only. Writing None keeps what is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
}

/// A stored, immutable policy version.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyRecord {
    /// Policy id (stable across versions).
    pub id: String,
    /// Version number, 1 for the first.
    pub version: i32,
    /// Human-readable name.
    pub name: String,
    /// The validated policy.
    pub policy: escalator_policy::Policy,
    /// When this version was created.
    pub created_at: DateTime<Utc>,
}

/// What a caller supplies to open a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewWorkflow {
    /// The caller's id; creating twice with the same body is a no-op.
    pub external_id: String,
    /// Short description.
    pub title: String,
    /// Free-form type, e.g. "purchase_request".
    pub kind: String,
    /// Current stage, e.g. "Manager Approval".
    pub stage: String,
    /// Who must act now.
    pub assignee: String,
    /// Who started the workflow (cc'd on escalations).
    pub initiator: String,
    /// Per-workflow override of the first escalation level's target.
    pub escalation_target: Option<String>,
    /// Policy id; the latest version is pinned at creation. None = "default".
    pub policy_id: Option<String>,
    /// When the stage's clock started; None = now.
    pub stage_started_at: Option<DateTime<Utc>>,
    /// Caller's data, kept as is.
    pub metadata: serde_json::Value,
}

/// A workflow row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Workflow {
    /// Our id.
    pub id: Uuid,
    /// The caller's id (unique).
    pub external_id: String,
    /// Short description.
    pub title: String,
    /// Free-form type.
    pub kind: String,
    /// Current stage.
    pub stage: String,
    /// Lifecycle status.
    pub status: Status,
    /// Pinned policy.
    pub policy_id: String,
    /// Pinned policy version.
    pub policy_version: i32,
    /// Who must act now.
    pub assignee: String,
    /// Who started it.
    pub initiator: String,
    /// Override of level 1's target.
    pub escalation_target: Option<String>,
    /// 0 = original assignee, n = escalated n times this cycle.
    pub escalation_level: i32,
    /// Increments each time a stage restarts the clock.
    pub cycle: i32,
    /// When the current stage's clock started.
    pub stage_started_at: DateTime<Utc>,
    /// Set while on hold.
    pub paused_at: Option<DateTime<Utc>>,
    /// Time spent on hold during the current level (business seconds with a calendar).
    pub paused_seconds: i64,
    /// When the current level's reminder is due.
    pub warn_at: DateTime<Utc>,
    /// When the current level's SLA is breached.
    pub due_at: DateTime<Utc>,
    /// When the current level's reminder went out.
    pub reminded_at: Option<DateTime<Utc>>,
    /// When the workflow last escalated.
    pub escalated_at: Option<DateTime<Utc>>,
    /// When the end of the escalation chain was recorded.
    pub exhausted_at: Option<DateTime<Utc>>,
    /// Earliest instant at which a check has something to do; None when closed or held.
    pub next_check_at: Option<DateTime<Utc>>,
    /// Caller's data.
    pub metadata: serde_json::Value,
    /// Row creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Optimistic-concurrency version, +1 on every change.
    pub version: i32,
}

impl Workflow {
    /// The current level's deadlines.
    pub fn deadlines(&self) -> Deadlines {
        Deadlines {
            warn_at: self.warn_at,
            due_at: self.due_at,
        }
    }

    /// When the current level's clock started: the stage start at level 0, else the escalation.
    pub fn level_started_at(&self) -> DateTime<Utc> {
        match self.escalated_at {
            Some(t) if self.escalation_level > 0 => t,
            _ => self.stage_started_at,
        }
    }

    /// The view of this workflow that the SLA clock decides on.
    pub fn snapshot(&self, assignee_manager: Option<String>) -> Snapshot {
        Snapshot {
            status: self.status,
            level: u32::try_from(self.escalation_level).unwrap_or(0),
            deadlines: self.deadlines(),
            reminded: self.reminded_at.is_some(),
            exhausted: self.exhausted_at.is_some(),
            assignee: self.assignee.clone(),
            assignee_manager,
            escalation_target: self.escalation_target.clone(),
            passed_over: std::collections::BTreeSet::new(),
        }
    }
}

/// A due workflow claimed by a batch, with what deciding on it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct DueWorkflow {
    /// The row as claimed (locked until the batch commits on PostgreSQL).
    pub workflow: Workflow,
    /// The assignee's manager, for `manager` targets.
    pub assignee_manager: Option<String>,
}

/// A change of workflow state requested by a person or an application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The stage was approved/finished: stop the clock for good.
    Complete,
    /// Abandoned: stop the clock for good.
    Cancel,
    /// Pause the clock.
    Hold,
    /// Restart a held clock; paused time does not count.
    Resume,
    /// Hand the workflow to someone else; the deadlines stay.
    Reassign {
        /// The new assignee.
        to: String,
    },
    /// Move to the next stage: a new SLA cycle at level 0.
    Advance {
        /// The new stage's name.
        stage: String,
        /// The new stage's assignee; None keeps the current one.
        assignee: Option<String>,
    },
}

impl Transition {
    /// The audit action this transition writes.
    pub fn action(&self) -> &'static str {
        match self {
            Transition::Complete => "complete",
            Transition::Cancel => "cancel",
            Transition::Hold => "hold",
            Transition::Resume => "resume",
            Transition::Reassign { .. } => "reassign",
            Transition::Advance { .. } => "advance",
        }
    }
}

/// Who asked for a transition, and under which precondition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionContext {
    /// Person or token name, recorded in the audit row.
    pub actor: String,
    /// "manual" or "api".
    pub reason: AuditReason,
    /// Refuse with `VersionConflict` unless the workflow is at this version.
    pub expected_version: Option<i32>,
    /// Free-form comment stored in the audit details.
    pub comment: Option<String>,
    /// The instant of the change.
    pub now: DateTime<Utc>,
    /// The caller's name for this request (`Idempotency-Key`), kept in the audit details: the
    /// same request again on the workflow is answered without being applied twice.
    pub idempotency_key: Option<String>,
}

/// The audit row a transition left under an idempotency key: what a retry is compared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoneUnderKey {
    /// Its action (`advance`, …).
    pub action: String,
    /// The assignee after it.
    pub to_assignee: Option<String>,
    /// The stage after it.
    pub stage: Option<String>,
}

/// Why an audit row was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditReason {
    /// The SLA clock did it.
    Sla,
    /// An operator through the CLI or console.
    Manual,
    /// An application through the HTTP API.
    Api,
}

impl AuditReason {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditReason::Sla => "sla",
            AuditReason::Manual => "manual",
            AuditReason::Api => "api",
        }
    }
}

/// Where a reader of the global audit log stands: after the row `id` written by transaction
/// `xact` (PostgreSQL's `xid8`; 0 for rows older than that column and on SQLite).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct AuditPosition {
    /// The writing transaction.
    pub xact: i64,
    /// The row.
    pub id: i64,
}

/// One audit row (append-only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// Sequence number.
    pub id: i64,
    /// The workflow.
    pub workflow_id: Uuid,
    /// create, remind, escalate, reassign, complete, cancel, hold, resume, advance, notify, exhausted.
    pub action: String,
    /// sla, manual, api.
    pub reason: String,
    /// Who: "escalator" for the SLA clock, else the person or token.
    pub actor: String,
    /// Assignee before.
    pub from_assignee: Option<String>,
    /// Assignee after.
    pub to_assignee: Option<String>,
    /// Escalation level after the action.
    pub level: i32,
    /// SLA cycle.
    pub cycle: i32,
    /// Policy version in force.
    pub policy_version: i32,
    /// Time the stage/level had been running.
    pub elapsed_seconds: Option<i64>,
    /// The check run that caused it, for SLA actions.
    pub check_run_id: Option<i64>,
    /// Anything else worth keeping.
    pub details: serde_json::Value,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// A check run: one execution of the planner over the due workflows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckRun {
    /// Id carried by the jobs.
    pub id: i64,
    /// The cron slot it runs for, if scheduled.
    pub slot: Option<DateTime<Utc>>,
    /// beat, deadline, api or cli.
    pub requested_by: String,
    /// "all" or "workflow:<uuid>".
    pub scope: String,
    /// The instant the SLA clock is evaluated at.
    pub as_of: DateTime<Utc>,
    /// Report only, write nothing.
    pub dry_run: bool,
    /// queued, running, succeeded, failed.
    pub status: String,
    /// How many missed slots this run stands for.
    pub coalesced: i32,
    /// Batch jobs fanned out.
    pub batches: i32,
    /// Batch jobs finished.
    pub batches_done: i32,
    /// Workflows evaluated.
    pub checked: i32,
    /// Reminders written.
    pub reminded: i32,
    /// Escalations written.
    pub escalated: i32,
    /// Workflows found with no one left to escalate to.
    #[serde(default)]
    pub exhausted: i32,
    /// Workflows renotified after their chain (a repeating policy).
    #[serde(default)]
    pub renotified: i32,
    /// Workflows that failed to process.
    pub failed: i32,
    /// Row creation.
    pub created_at: DateTime<Utc>,
    /// Planner start.
    pub started_at: Option<DateTime<Utc>>,
    /// Last batch done, or failure.
    pub finished_at: Option<DateTime<Utc>>,
    /// Failure message.
    pub error: Option<String>,
}

/// A request for a check run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCheckRun {
    /// Cron slot (UNIQUE): None for deadline, api and cli checks.
    pub slot: Option<DateTime<Utc>>,
    /// beat, deadline, api or cli.
    pub requested_by: &'static str,
    /// "all" or "workflow:<uuid>".
    pub scope: String,
    /// Evaluation instant.
    pub as_of: DateTime<Utc>,
    /// Report only.
    pub dry_run: bool,
    /// Missed slots this run stands for (1 normally).
    pub coalesced: i32,
    /// Row creation time.
    pub now: DateTime<Utc>,
}

/// Counts one batch contributes to its check run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchCounts {
    /// Workflows evaluated.
    pub checked: i32,
    /// Reminders applied.
    pub reminded: i32,
    /// Escalations applied.
    pub escalated: i32,
    /// Exhaustions applied (no one left to escalate to).
    pub exhausted: i32,
    /// Renotifications applied (after the chain).
    pub renotified: i32,
    /// Workflows that could not be processed.
    pub failed: i32,
}

/// Open workflows (pending or escalated; not on hold) by the state of their SLA clock, and how
/// many of them are within their SLA.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlaCounts {
    /// Before the current level's warning.
    pub ok: i64,
    /// Past the warning, before the deadline.
    pub warning: i64,
    /// Past the current level's deadline.
    pub breached: i64,
    /// Never escalated in their current stage and not past their deadline: the workflows
    /// meeting their SLA. An escalated workflow missed it, whatever its new level's clock says.
    pub compliant: i64,
}

impl SlaCounts {
    /// All open workflows counted.
    pub fn open(&self) -> i64 {
        self.ok + self.warning + self.breached
    }

    /// The share of open workflows meeting their SLA ([`SlaCounts::compliant`]); 1 when none
    /// is open, so an idle system does not alert.
    pub fn compliance_ratio(&self) -> f64 {
        let open = self.open();
        if open <= 0 {
            1.0
        } else {
            self.compliant as f64 / open as f64
        }
    }
}

#[cfg(test)]
mod sla_counts_tests {
    use super::SlaCounts;

    #[test]
    fn compliance_is_the_share_never_escalated_nor_breached_and_one_when_idle() {
        let c = |ok, warning, breached, compliant| SlaCounts {
            ok,
            warning,
            breached,
            compliant,
        };
        assert_eq!(c(0, 0, 0, 0).compliance_ratio(), 1.0);
        assert_eq!(c(6, 2, 2, 8).compliance_ratio(), 0.8);
        // two of the eight on their clock were escalated to get there
        assert_eq!(c(6, 2, 2, 6).compliance_ratio(), 0.6);
        assert_eq!(c(0, 0, 3, 0).compliance_ratio(), 0.0);
    }
}

/// An in-app notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Notification {
    /// Id.
    pub id: i64,
    /// User id.
    pub recipient: String,
    /// The workflow concerned.
    pub workflow_id: Uuid,
    /// reminder, escalation, exhausted.
    pub kind: String,
    /// to or cc.
    pub role: String,
    /// Rendered subject.
    pub subject: String,
    /// Rendered body.
    pub body: String,
    /// When the recipient marked it read.
    pub read_at: Option<DateTime<Utc>>,
    /// When written.
    pub created_at: DateTime<Utc>,
}

/// One delivery in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Id.
    pub id: i64,
    /// email, sms, slack, webhook, event.
    pub channel: String,
    /// Address on that channel.
    pub recipient: String,
    /// The workflow concerned, if any.
    pub workflow_id: Option<Uuid>,
    /// The check run that wrote it, if any.
    pub check_run_id: Option<i64>,
    /// What to send.
    pub payload: serde_json::Value,
    /// Unique; also sent to providers that accept one.
    pub idempotency_key: String,
    /// pending, sent, failed, dead.
    pub status: String,
    /// Delivery attempts so far.
    pub attempts: i32,
    /// Not before.
    pub next_attempt_at: DateTime<Utc>,
    /// Last failure.
    pub last_error: Option<String>,
    /// When delivered.
    pub sent_at: Option<DateTime<Utc>>,
    /// When written.
    pub created_at: DateTime<Utc>,
}

/// Filters for listing workflows; all optional, combined with AND.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkflowFilter {
    /// Only this status.
    pub status: Option<Status>,
    /// Only this assignee.
    pub assignee: Option<String>,
    /// Only open workflows in this SLA state as of `as_of`.
    pub sla_status: Option<(escalator_policy::SlaStatus, DateTime<Utc>)>,
    /// Only open workflows (pending, escalated) due before this instant.
    pub due_before: Option<DateTime<Utc>>,
    /// Cursor: only workflows after this (created_at, id).
    pub after: Option<(DateTime<Utc>, Uuid)>,
    /// Page size (capped at 1000).
    pub limit: u32,
}

/// The outcome of a create.
#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    /// The workflow (new or existing).
    pub workflow: Workflow,
    /// false when the external_id existed with the same body.
    pub created: bool,
}

/// A slice of the due workflows in `(next_check_at, id)` order: from `(from, from_id)`
/// inclusive to `(until, until_id)` exclusive, unbounded where the instant is None; a bound
/// without its id stands before every workflow of that instant (`from`: all included;
/// `until`: all excluded), and an id without its instant is ignored. The planner cuts a check into disjoint ranges so that concurrent batches scan
/// disjoint parts of the index instead of all re-reading (and skipping) the same rows. The ids
/// split workflows that share one `next_check_at` (deadlines snapped to the start of business
/// hours, bulk imports): without them such a crowd was one slice, worked by one batch alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DueRange {
    /// Inclusive lower bound.
    #[serde(default)]
    pub from: Option<DateTime<Utc>>,
    /// The first workflow of the `from` instant that the range holds (in id order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_id: Option<Uuid>,
    /// Exclusive upper bound.
    #[serde(default)]
    pub until: Option<DateTime<Utc>>,
    /// The first workflow of the `until` instant that the range leaves to the next one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_id: Option<Uuid>,
}
