//! The heart of a batch, without I/O: turn claimed workflows into the decisions of the SLA
//! clock and those decisions into rows — state changes, audit entries, in-app notifications
//! and outbox deliveries — that the store applies set-wise in one transaction.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Duration, Utc};
use escalator_policy::{Calendar, Decision, Policy, Status};
use escalator_store::{
    BatchCounts, BatchEffects, DueWorkflow, NewAudit, NewNotification, NewOutbox, User, Workflow,
    WorkflowChange, logic::SLA_ACTOR,
};
use uuid::Uuid;

use crate::message::{self, Kind, Role};

/// How long a workflow that cannot be evaluated (its policy is unreadable) is set aside, so
/// that it does not starve the due workflows behind it.
pub const SET_ASIDE: Duration = Duration::minutes(5);

/// The policy and calendar a workflow is evaluated with.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    /// The pinned policy version.
    pub policy: &'a Policy,
    /// Its business-hours calendar, None for 24x7.
    pub calendar: Option<&'a Calendar>,
}

/// Which run and batch the effects belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchRef {
    /// The check run.
    pub check_run_id: Option<i64>,
    /// The batch's index in it, on the transaction that finishes the batch.
    pub batch_index: Option<i32>,
}

/// What a batch decided.
#[derive(Debug, Clone, Default)]
pub struct Planned {
    /// The rows to write.
    pub effects: BatchEffects,
    /// Escalations planned, with how late each is (as_of − due_at), for the latency histogram.
    pub escalations: Vec<(Uuid, Duration)>,
    /// Workflows found past their deadline (escalated or at the end of their chain).
    pub over_sla: u64,
    /// Workflows that could not be evaluated, with the reason.
    pub failures: Vec<(Uuid, String)>,
}

/// The user ids whose contact details the effects of `decisions` need.
pub fn recipients_needed(due: &[DueWorkflow], decisions: &[Option<Decision>]) -> Vec<String> {
    let mut ids = BTreeSet::new();
    for (d, decision) in due.iter().zip(decisions) {
        let w = &d.workflow;
        match decision {
            Some(Decision::Remind { .. }) => {
                ids.insert(w.assignee.clone());
            }
            Some(Decision::Escalate { target, .. }) => {
                ids.extend([target.clone(), w.assignee.clone(), w.initiator.clone()]);
            }
            Some(Decision::Exhausted { .. } | Decision::Renotify { .. }) => {
                ids.extend([w.assignee.clone(), w.initiator.clone()]);
            }
            Some(Decision::Nothing) | None => {}
        }
    }
    ids.into_iter().collect()
}

/// Evaluates every claimed workflow; None where its rules are missing.
pub fn decide<'a>(
    due: &[DueWorkflow],
    rules: impl Fn(&Workflow) -> Option<Rules<'a>>,
    as_of: DateTime<Utc>,
) -> Vec<Option<Decision>> {
    due.iter()
        .map(|d| {
            let r = rules(&d.workflow)?;
            let snapshot = d.workflow.snapshot(d.assignee_manager.clone());
            Some(escalator_policy::evaluate(
                &snapshot, r.policy, r.calendar, as_of,
            ))
        })
        .collect()
}

/// Builds the batch's rows from its decisions. `users` holds (at least) the recipients.
pub fn build(
    due: &[DueWorkflow],
    decisions: &[Option<Decision>],
    users: &HashMap<String, User>,
    batch: BatchRef,
    as_of: DateTime<Utc>,
) -> Planned {
    let mut out = Planned::default();
    out.effects.check_run_id = batch.check_run_id;
    out.effects.batch_index = batch.batch_index;
    let mut counts = BatchCounts::default();
    for (d, decision) in due.iter().zip(decisions) {
        counts.checked += 1;
        let w = &d.workflow;
        let Some(decision) = decision else {
            counts.failed += 1;
            out.failures
                .push((w.id, "policy or calendar unavailable".into()));
            out.effects
                .changes
                .push(reschedule(w, Some(as_of + SET_ASIDE)));
            continue;
        };
        let mut e = Effect::new(w, batch.check_run_id, as_of);
        match decision {
            Decision::Nothing => {
                let next = escalator_store::logic::open_next_check(w);
                out.effects.changes.push(reschedule(w, next));
                continue;
            }
            Decision::Remind { level } => {
                let mut c = reschedule(w, Some(w.due_at));
                c.reminded_at = Some(as_of);
                out.effects.changes.push(c);
                e.audit(
                    "remind",
                    *level,
                    None,
                    &w.assignee,
                    serde_json::json!({ "due_at": w.due_at }),
                );
                e.notify(
                    users,
                    Kind::Reminder,
                    &[(w.assignee.as_str(), Role::To)],
                    *level,
                    None,
                );
            }
            Decision::Escalate {
                level,
                target,
                deadlines,
            } => {
                out.over_sla += 1;
                out.escalations.push((w.id, as_of - w.due_at));
                let level_i = to_i32(*level);
                out.effects.changes.push(WorkflowChange {
                    status: Status::Escalated,
                    assignee: target.clone(),
                    level: level_i,
                    warn_at: deadlines.warn_at,
                    due_at: deadlines.due_at,
                    paused_seconds: 0,
                    reminded_at: None,
                    escalated_at: Some(as_of),
                    exhausted_at: None,
                    next_check_at: Some(deadlines.warn_at),
                    ..reschedule(w, None)
                });
                let details = serde_json::json!({
                    "missed_due_at": w.due_at, "new_due_at": deadlines.due_at, "stage": w.stage,
                });
                e.audit("escalate", *level, Some(&w.assignee), target, details);
                let mut to = vec![(target.as_str(), Role::To)];
                for cc in [w.assignee.as_str(), w.initiator.as_str()] {
                    if to.iter().all(|(id, _)| *id != cc) {
                        to.push((cc, Role::Cc));
                    }
                }
                e.notify(users, Kind::Escalation { target }, &to, *level, None);
            }
            Decision::Exhausted {
                level,
                reason,
                next_check_at,
            } => {
                out.over_sla += 1;
                let mut c = reschedule(w, *next_check_at);
                c.exhausted_at = Some(as_of);
                out.effects.changes.push(c);
                let details = serde_json::json!({ "reason": reason.as_str(), "due_at": w.due_at });
                e.audit("exhausted", *level, None, &w.assignee, details);
                let to = recipients_once(&w.assignee, &w.initiator);
                e.notify(users, Kind::Exhausted, &to, *level, None);
            }
            Decision::Renotify {
                level,
                next_check_at,
            } => {
                out.over_sla += 1;
                out.effects
                    .changes
                    .push(reschedule(w, Some(*next_check_at)));
                e.audit(
                    "notify",
                    *level,
                    None,
                    &w.assignee,
                    serde_json::json!({ "repeat": true }),
                );
                let to = recipients_once(&w.assignee, &w.initiator);
                e.notify(users, Kind::Exhausted, &to, *level, Some(as_of));
            }
        }
        out.effects.audits.extend(e.audits);
        out.effects.notifications.extend(e.notifications);
        out.effects.outbox.extend(e.outbox);
    }
    out.effects.counts = counts;
    out
}

fn recipients_once<'a>(assignee: &'a str, initiator: &'a str) -> Vec<(&'a str, Role)> {
    if assignee == initiator {
        vec![(assignee, Role::To)]
    } else {
        vec![(assignee, Role::To), (initiator, Role::Cc)]
    }
}

/// A change that keeps the workflow's SLA state and only moves its next check.
fn reschedule(w: &Workflow, next_check_at: Option<DateTime<Utc>>) -> WorkflowChange {
    WorkflowChange {
        id: w.id,
        expected_version: w.version,
        status: w.status,
        assignee: w.assignee.clone(),
        level: w.escalation_level,
        warn_at: w.warn_at,
        due_at: w.due_at,
        paused_seconds: w.paused_seconds,
        reminded_at: w.reminded_at,
        escalated_at: w.escalated_at,
        exhausted_at: w.exhausted_at,
        next_check_at,
    }
}

fn to_i32(level: u32) -> i32 {
    i32::try_from(level).unwrap_or(i32::MAX)
}

/// The audit row and messages of one decision.
struct Effect<'w> {
    w: &'w Workflow,
    check_run_id: Option<i64>,
    as_of: DateTime<Utc>,
    audits: Vec<NewAudit>,
    notifications: Vec<NewNotification>,
    outbox: Vec<NewOutbox>,
}

impl<'w> Effect<'w> {
    fn new(w: &'w Workflow, check_run_id: Option<i64>, as_of: DateTime<Utc>) -> Self {
        Effect {
            w,
            check_run_id,
            as_of,
            audits: Vec::new(),
            notifications: Vec::new(),
            outbox: Vec::new(),
        }
    }

    fn audit(
        &mut self,
        action: &'static str,
        level: u32,
        from: Option<&str>,
        to: &str,
        details: serde_json::Value,
    ) {
        let w = self.w;
        self.audits.push(NewAudit {
            workflow_id: w.id,
            action,
            reason: "sla",
            actor: SLA_ACTOR.into(),
            from_assignee: from.map(str::to_owned),
            to_assignee: Some(to.to_owned()),
            level: to_i32(level),
            cycle: w.cycle,
            policy_version: w.policy_version,
            elapsed_seconds: Some((self.as_of - w.level_started_at()).num_seconds().max(0)),
            check_run_id: self.check_run_id,
            details,
        });
    }

    /// One in-app notification per recipient, and one email message (to the first
    /// recipient, cc the others) to every active recipient with an address. `repeat` makes
    /// the keys unique per repetition (AfterLast::Repeat).
    fn notify(
        &mut self,
        users: &HashMap<String, User>,
        kind: Kind<'_>,
        recipients: &[(&str, Role)],
        level: u32,
        repeat: Option<DateTime<Utc>>,
    ) {
        let w = self.w;
        let suffix = repeat
            .map(|t| format!(":{}", t.timestamp()))
            .unwrap_or_default();
        let base = format!("{}:{}:{}:{}", kind.action(), w.id, w.cycle, level);
        let mut to = Vec::new();
        let mut cc = Vec::new();
        let mut email: Option<message::Message> = None;
        for (user_id, role) in recipients {
            let user = users.get(*user_id);
            if user.is_some_and(|u| !u.active) {
                continue;
            }
            let msg = message::render(w, &kind, *role, user, users);
            if let Some(address) = user.and_then(|u| u.email.as_deref()) {
                match role {
                    Role::To => to.push(address.to_owned()),
                    Role::Cc => cc.push(address.to_owned()),
                }
                if *role == Role::To || email.is_none() {
                    email.get_or_insert_with(|| msg.clone());
                }
            }
            self.notifications.push(NewNotification {
                recipient: (*user_id).to_owned(),
                workflow_id: w.id,
                kind: kind.notification_kind(),
                role: role.as_str(),
                subject: msg.subject,
                body: msg.body,
                dedup_key: format!("{base}:{user_id}{suffix}"),
            });
        }
        if to.is_empty() {
            // the direct recipient has no address: the first copied one gets the message
            if cc.is_empty() {
                return;
            }
            to.push(cc.remove(0));
        }
        let Some(msg) = email else { return };
        self.outbox.push(NewOutbox {
            channel: "email",
            recipient: to[0].clone(),
            workflow_id: Some(w.id),
            payload: serde_json::json!({
                "to": to, "cc": cc, "subject": msg.subject, "body": msg.body,
                "kind": kind.notification_kind(), "workflow_id": w.id,
                "check_run_id": self.check_run_id,
            }),
            idempotency_key: format!("{base}:email{suffix}"),
        });
    }
}
