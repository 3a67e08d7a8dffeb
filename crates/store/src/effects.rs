//! The effects of one batch, applied set-wise in one transaction: a handful of statements,
//! whatever the number of workflows.

use std::borrow::Cow;

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

/// A delivery held back until its check run finishes: at that point each (run, group) is
/// either released as its individual rows or replaced by one digest (see [`crate::digest`]).
#[derive(Debug, Clone, PartialEq)]
pub struct HeldOutbox<'a> {
    /// `"{user id}:{channel}"`: the unit of a digest.
    pub group_key: String,
    /// More than this many items in the group make a digest.
    pub threshold: u32,
    /// The row it becomes when not digested (its key is the held item's unique key). Its
    /// payload still carries the hold mark: [`crate::digest::item`] leaves it out, so the
    /// row is stored without being copied.
    pub outbox: &'a NewOutbox,
}

impl NewOutbox {
    /// This delivery, to be held for its run's digest decision: more than `threshold` held
    /// deliveries of one run to `user` on this channel become one digest. The mark travels
    /// in the payload (`"hold"`) and is removed before the row is written; without a check
    /// run the row is written at once.
    pub fn held_for_digest(mut self, user: &str, threshold: u32) -> NewOutbox {
        self.payload["hold"] = serde_json::json!({
            "group": format!("{user}:{}", self.channel), "threshold": threshold,
        });
        self
    }
}

/// Splits the rows marked by [`NewOutbox::held_for_digest`] off `outbox`. Without a run there
/// is nothing to wait for: they stay in `outbox`, their mark removed.
pub(crate) fn split_held(
    outbox: &[NewOutbox],
    run: Option<i64>,
) -> (Vec<Cow<'_, NewOutbox>>, Vec<HeldOutbox<'_>>) {
    let mut direct = Vec::new();
    let mut held = Vec::new();
    for o in outbox {
        let Some(hold) = o.payload.get("hold") else {
            direct.push(Cow::Borrowed(o));
            continue;
        };
        if run.is_none() {
            let mut o = o.clone();
            if let Some(m) = o.payload.as_object_mut() {
                m.remove("hold");
            }
            direct.push(Cow::Owned(o));
            continue;
        }
        held.push(HeldOutbox {
            group_key: hold["group"].as_str().unwrap_or_default().to_owned(),
            threshold: hold["threshold"]
                .as_u64()
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(u32::MAX),
            outbox: o,
        });
    }
    (direct, held)
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

/// How a batch writes its notifications and outbox rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EffectInserts {
    /// Plain inserts. Every key is new: a batch writes effects only for the workflows whose
    /// conditional UPDATE it just made, and each key names that workflow's cycle and level. A
    /// key that exists anyway fails the transaction ([`crate::StoreError::is_duplicate_key`]),
    /// and the caller redoes the batch with [`EffectInserts::Idempotent`]. On PostgreSQL this
    /// saves the speculative insertion of `ON CONFLICT`: ~20 % of each insert.
    Fresh,
    /// `ON CONFLICT DO NOTHING`: a key that exists is skipped.
    Idempotent,
}

impl EffectInserts {
    /// The clause that ends an insert on the unique column `key` (same text on both backends).
    pub(crate) fn on_conflict(self, key: &str) -> String {
        match self {
            EffectInserts::Fresh => String::new(),
            EffectInserts::Idempotent => format!(" ON CONFLICT ({key}) DO NOTHING"),
        }
    }
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
    /// Outbox rows written (including those a finishing run released from hold).
    pub outbox: u64,
    /// Deliveries held for the run's digest decision.
    pub held: u64,
    /// Counts added to the check run.
    pub counts: BatchCounts,
    /// This batch was the last of its run: the run is now `succeeded`.
    pub run_completed: bool,
}

impl BatchEffects {
    /// Keep only the rows of workflows whose change was applied; rows with no workflow stay.
    /// Returns them (borrowed when every change applied, as it almost always does) and the
    /// counts to add to the run, reminded, escalated, exhausted and renotified counted from
    /// what is kept.
    pub(crate) fn retain_applied(&self, changed: &[Uuid]) -> (Cow<'_, BatchEffects>, BatchCounts) {
        let kept = if changed.len() == self.changes.len() {
            Cow::Borrowed(self)
        } else {
            Cow::Owned(self.filtered(changed))
        };
        let mut counts = self.counts;
        counts.reminded = 0;
        counts.escalated = 0;
        counts.exhausted = 0;
        counts.renotified = 0;
        for a in &kept.audits {
            match a.action {
                "remind" => counts.reminded += 1,
                "escalate" => counts.escalated += 1,
                "exhausted" => counts.exhausted += 1,
                "notify" => counts.renotified += 1,
                _ => {}
            }
        }
        (kept, counts)
    }

    fn filtered(&self, changed: &[Uuid]) -> BatchEffects {
        let ok: std::collections::HashSet<Uuid> = changed.iter().copied().collect();
        let audits: Vec<NewAudit> = self
            .audits
            .iter()
            .filter(|a| ok.contains(&a.workflow_id))
            .cloned()
            .collect();
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
            counts: self.counts,
        }
    }
}
