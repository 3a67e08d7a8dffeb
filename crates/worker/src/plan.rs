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

use crate::message::{Kind, MessageSettings, Renderer, Role};

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
    /// Escalations planned, with how late each is (applied − due_at), for the latency histogram.
    pub escalations: Vec<(Uuid, Duration)>,
    /// Workflows found past their deadline (escalated or at the end of their chain).
    pub over_sla: Vec<Uuid>,
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

/// Evaluates every claimed workflow as due at `as_of`, new deadlines from `at`
/// ([`escalator_policy::evaluate_applied`]), passing over the users in `gone` (who have left);
/// None where its rules are missing.
pub fn decide<'a>(
    due: &[DueWorkflow],
    rules: impl Fn(&Workflow) -> Option<Rules<'a>>,
    gone: &BTreeSet<String>,
    as_of: DateTime<Utc>,
    at: DateTime<Utc>,
) -> Vec<Option<Decision>> {
    due.iter()
        .map(|d| {
            let r = rules(&d.workflow)?;
            let mut snapshot = d.workflow.snapshot(d.assignee_manager.clone());
            snapshot.passed_over.clone_from(gone);
            Some(escalator_policy::evaluate_applied(
                &snapshot, r.policy, r.calendar, as_of, at,
            ))
        })
        .collect()
}

/// The moment a check at `as_of` carries its decisions out when the clock reads `now`: `now`,
/// or `as_of` itself for a check asked about the future. New levels' deadlines and the rows'
/// timestamps (reminded, escalated, exhausted) date from it. Whole microseconds, as the
/// databases store instants, so the audit's copy of a deadline equals the workflow's.
pub fn applied_at(as_of: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::SubsecRound as _;
    now.trunc_subsecs(6).max(as_of)
}

/// When a batch decides: the instant its check asks about (`as_of`) and the moment it carries
/// the decisions out (`at`, [`applied_at`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dated {
    /// The check's instant: what is due is due at it.
    pub as_of: DateTime<Utc>,
    /// The moment the rows date from.
    pub at: DateTime<Utc>,
}

impl Dated {
    /// A check at `as_of` applied when the clock reads `now`.
    pub fn new(as_of: DateTime<Utc>, now: DateTime<Utc>) -> Self {
        Self {
            as_of,
            at: applied_at(as_of, now),
        }
    }
}

/// The channels each policy version sends on to people who have not chosen their own (only
/// policies that say so).
pub type PolicyChannels = HashMap<(String, i32), Vec<String>>;

/// Builds the batch's rows from its decisions, taken at `when.as_of` and dated `when.at` (the
/// moment they are applied: [`applied_at`]). `users` holds (at least) the recipients;
/// messages follow `settings` ([`crate::message::settings`] in a running process), and `channels`
/// holds the defaults of the policies that set them.
pub fn build(
    due: &[DueWorkflow],
    decisions: &[Option<Decision>],
    users: &HashMap<String, User>,
    batch: BatchRef,
    when: Dated,
    settings: &MessageSettings,
    channels: &PolicyChannels,
) -> Planned {
    let at = when.at;
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
                .push(reschedule(w, Some(at + SET_ASIDE)));
            continue;
        };
        let mut e = Effect::new(w, batch.check_run_id, at, settings);
        e.default_channels = channels
            .get(&(w.policy_id.clone(), w.policy_version))
            .map(Vec::as_slice);
        match decision {
            Decision::Nothing => {
                // an exhausted workflow not due at the check's instant (its deadline measured
                // again on resume, or a check dated before it) is looked at when its deadline
                // passes, not unscheduled for good; that deadline may have passed by now, when
                // a check dated before it runs late, and the next check then takes it
                let next = escalator_store::logic::open_next_check(w).or_else(|| {
                    (w.status.is_open() && w.exhausted_at.is_some() && w.due_at > when.as_of)
                        .then_some(w.due_at)
                });
                out.effects.changes.push(reschedule(w, next));
                continue;
            }
            Decision::Remind { level } => {
                let mut c = reschedule(w, Some(w.due_at));
                c.reminded_at = Some(at);
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
                out.over_sla.push(w.id);
                out.escalations.push((w.id, at - w.due_at));
                let level_i = to_i32(*level);
                out.effects.changes.push(WorkflowChange {
                    status: Status::Escalated,
                    assignee: target.clone(),
                    level: level_i,
                    warn_at: deadlines.warn_at,
                    due_at: deadlines.due_at,
                    paused_seconds: 0,
                    reminded_at: None,
                    escalated_at: Some(at),
                    exhausted_at: None,
                    next_check_at: Some(deadlines.warn_at),
                    ..reschedule(w, None)
                });
                // a level naming the holder may have been passed over: from_level says so
                let details = serde_json::json!({
                    "missed_due_at": w.due_at, "new_due_at": deadlines.due_at, "stage": w.stage,
                    "from_level": w.escalation_level,
                });
                e.audit("escalate", *level, Some(&w.assignee), target, details);
                if settings.events {
                    e.event(*level, target, deadlines.due_at);
                }
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
                out.over_sla.push(w.id);
                let mut c = reschedule(w, *next_check_at);
                c.exhausted_at = Some(at);
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
                // the breach was counted once, when the workflow escalated or was exhausted:
                // counting each renotification made HighSLABreachRate fire for ever over a
                // few workflows left at the end of a repeating chain
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
                e.notify(users, Kind::Exhausted, &to, *level, Some(at));
            }
        }
        out.effects.audits.extend(e.audits);
        out.effects.notifications.extend(e.notifications);
        out.effects.outbox.extend(e.outbox);
    }
    out.effects.counts = counts;
    out
}

/// The rows that set a workflow aside for [`SET_ASIDE`] after `at`, counted as a failure
/// of its run: its next check moves, nothing else changes (its own effects were refused).
pub fn set_aside(w: &Workflow, batch: BatchRef, at: DateTime<Utc>, why: String) -> Planned {
    let mut out = Planned::default();
    out.effects.check_run_id = batch.check_run_id;
    out.effects.batch_index = batch.batch_index;
    out.effects
        .changes
        .push(reschedule(w, Some(at + SET_ASIDE)));
    out.effects.counts = BatchCounts {
        checked: 1,
        failed: 1,
        ..BatchCounts::default()
    };
    out.failures.push((w.id, why));
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
    /// When the effect is made (dates its audit row's elapsed time).
    at: DateTime<Utc>,
    settings: &'w MessageSettings,
    /// The policy's channels for recipients without their own choice (None: email).
    default_channels: Option<&'w [String]>,
    audits: Vec<NewAudit>,
    notifications: Vec<NewNotification>,
    outbox: Vec<NewOutbox>,
}

impl<'w> Effect<'w> {
    fn new(
        w: &'w Workflow,
        check_run_id: Option<i64>,
        at: DateTime<Utc>,
        settings: &'w MessageSettings,
    ) -> Self {
        Effect {
            w,
            check_run_id,
            at,
            settings,
            default_channels: None,
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
            elapsed_seconds: Some((self.at - w.level_started_at()).num_seconds().max(0)),
            check_run_id: self.check_run_id,
            details,
        });
    }

    /// The escalation's event: one delivery on channel `event`, whoever the recipients are,
    /// keyed by (workflow, cycle, level) like the escalation itself (I1), never digested.
    fn event(&mut self, level: u32, target: &str, new_due_at: DateTime<Utc>) {
        let w = self.w;
        self.outbox.push(NewOutbox {
            channel: "event",
            recipient: "webhook".into(),
            workflow_id: Some(w.id),
            payload: serde_json::json!({
                "kind": "workflow.escalated", "workflow_id": w.id,
                "external_id": w.external_id, "title": w.title, "stage": w.stage,
                "level": level, "cycle": w.cycle, "from": w.assignee, "to": target,
                "initiator": w.initiator, "missed_due_at": w.due_at, "new_due_at": new_due_at,
                "escalated_at": self.at, "check_run_id": self.check_run_id,
                "policy_id": w.policy_id, "policy_version": w.policy_version,
            }),
            idempotency_key: format!("event:escalate:{}:{}:{level}", w.id, w.cycle),
        });
    }

    /// One in-app notification per active recipient; one email message (to the first
    /// recipient, cc the others) to those who take email; one SMS, Slack or webhook message
    /// to each who takes those and has the address. Inactive recipients get nothing and are
    /// named in the decision's audit row. Escalation messages to the new assignee within a
    /// check run are held for the run's digest decision. `repeat` makes the keys unique per
    /// repetition (AfterLast::Repeat).
    fn notify(
        &mut self,
        users: &HashMap<String, User>,
        kind: Kind<'_>,
        recipients: &[(&str, Role)],
        level: u32,
        repeat: Option<DateTime<Utc>>,
    ) {
        let w = self.w;
        let templates = &self.settings.templates;
        let suffix = repeat
            .map(|t| format!(":{}", t.timestamp()))
            .unwrap_or_default();
        let base = format!("{}:{}:{}:{}", kind.action(), w.id, w.cycle, level);
        // digests gather escalations to one person within one run
        let threshold = match (kind, self.check_run_id, self.settings.digest_threshold) {
            (Kind::Escalation { .. }, Some(_), t) if t > 0 => Some(t),
            _ => None,
        };
        let hold = |o: NewOutbox, user: &str, role: Role| match threshold {
            Some(t) if role == Role::To => o.held_for_digest(user, t),
            _ => o,
        };
        // who holds the workflow once this message's change is made: the target of an
        // escalation, else the assignee
        let holder = match kind {
            Kind::Escalation { target } => target,
            Kind::Reminder | Kind::Exhausted => w.assignee.as_str(),
        };
        let common = serde_json::json!({
            "kind": kind.notification_kind(), "workflow_id": w.id, "title": w.title,
            "due_at": w.due_at, "level": level, "check_run_id": self.check_run_id,
            // the state the message is about, checked again before it is sent
            // (obsolete_deliveries): its level, stage (cycle) and holder (messages written
            // before this named the assignee `assignee_id`, the same for all but escalations)
            "cycle": w.cycle, "holder_id": holder,
        });
        let with = |extra: serde_json::Value| {
            let mut p = common.clone();
            if let (Some(p), serde_json::Value::Object(extra)) = (p.as_object_mut(), extra) {
                p.extend(extra);
            }
            p
        };
        let mut to = Vec::new();
        let mut cc = Vec::new();
        let mut email: Option<(serde_json::Value, &str, Role)> = None;
        // who the email reaches: a message none of them is active for any more when it is
        // sent is not sent (obsolete_deliveries)
        let mut emailed: Vec<&str> = Vec::new();
        let mut skipped = Vec::new();
        for (user_id, role) in recipients {
            let user = users.get(*user_id);
            if user.is_some_and(|u| !u.active) {
                skipped.push(*user_id);
                continue;
            }
            let r = Renderer::new(templates, w, &kind, *role, user, users);
            let msg = r.message();
            let channels = user
                .map(|u| channels_of(u, self.default_channels))
                .unwrap_or_default();
            if let Some(address) = user
                .and_then(|u| u.email.as_deref())
                .filter(|_| channels.contains(&"email"))
            {
                match role {
                    Role::To => to.push(address.to_owned()),
                    Role::Cc => cc.push(address.to_owned()),
                }
                emailed.push(user_id);
                if *role == Role::To || email.is_none() {
                    email = Some((r.fields(), *user_id, *role));
                }
            }
            // one message per person on each other channel they take and have an address for
            let mut personal =
                |channel: &'static str, recipient: &str, extra: serde_json::Value| {
                    let mut payload = with(extra);
                    // whom it reaches, looked at again when it is sent
                    payload["user_ids"] = serde_json::json!([user_id]);
                    let o = NewOutbox {
                        channel,
                        recipient: recipient.to_owned(),
                        workflow_id: Some(w.id),
                        payload,
                        idempotency_key: format!("{base}:{user_id}:{channel}{suffix}"),
                    };
                    self.outbox.push(hold(o, user_id, *role));
                };
            if let Some(phone) = user
                .and_then(|u| u.phone.as_deref())
                .filter(|_| channels.contains(&"sms"))
            {
                personal(
                    "sms",
                    phone,
                    serde_json::json!({
                        "to": phone, "body": r.part("sms.txt"), "subject": msg.subject,
                        "greeting": r.greeting(),
                    }),
                );
            }
            if let Some(slack) = user
                .and_then(|u| u.slack.as_deref())
                .filter(|_| channels.contains(&"slack"))
            {
                personal(
                    "slack",
                    slack,
                    serde_json::json!({
                        "to": slack, "text": r.part("slack.txt"), "subject": msg.subject,
                        "greeting": r.greeting(),
                    }),
                );
            }
            if channels.contains(&"webhook") {
                personal(
                    "webhook",
                    user_id,
                    serde_json::json!({
                        "to": user_id, "role": role.as_str(), "subject": msg.subject,
                        "body": msg.body, "assignee": w.assignee, "greeting": r.greeting(),
                    }),
                );
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
        if !skipped.is_empty()
            && let Some(audit) = self.audits.last_mut()
            && audit.details.is_object()
        {
            audit.details["skipped_inactive"] = serde_json::json!(skipped);
        }
        // each address once (two people may share a mailbox); the first copied one stands in
        // for a direct recipient taking no email
        let Some((to, cc)) = escalator_notify::email::primaries_and_copies(to, cc) else {
            return;
        };
        let Some((mut fields, user_id, role)) = email else {
            return;
        };
        // the subject, text and HTML are rendered when the message is sent, from these fields
        fields["to"] = serde_json::json!(to);
        fields["cc"] = serde_json::json!(cc);
        fields["user_ids"] = serde_json::json!(emailed);
        let o = NewOutbox {
            channel: "email",
            recipient: to[0].clone(),
            workflow_id: Some(w.id),
            payload: with(fields),
            idempotency_key: format!("{base}:email{suffix}"),
        };
        self.outbox.push(hold(o, user_id, role));
    }
}

/// The channels besides in-app that `user` is reached on: their choice, else the policy's,
/// else email.
fn channels_of<'a>(user: &'a User, policy: Option<&'a [String]>) -> Vec<&'a str> {
    match (&user.channels, policy) {
        (Some(c), _) => c.iter().map(String::as_str).collect(),
        (None, Some(c)) => c.iter().map(String::as_str).collect(),
        (None, None) => vec!["email"],
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use escalator_policy::Deadlines;

    fn t0() -> DateTime<Utc> {
        "2026-11-25T12:00:00Z".parse().unwrap()
    }

    fn workflow(n: u128, assignee: &str, initiator: &str, title: &str) -> DueWorkflow {
        let w: Workflow = serde_json::from_value(serde_json::json!({
            "id": Uuid::from_u128(n), "external_id": format!("ext-{n}"), "title": title,
            "kind": "purchase", "stage": "approval", "status": "pending",
            "policy_id": "default", "policy_version": 1, "assignee": assignee,
            "initiator": initiator, "escalation_target": null, "escalation_level": 0,
            "cycle": 1, "stage_started_at": t0() - Duration::hours(25), "paused_at": null,
            "paused_seconds": 0, "warn_at": t0() - Duration::hours(3),
            "due_at": t0() - Duration::hours(1), "reminded_at": null, "escalated_at": null,
            "exhausted_at": null, "next_check_at": t0() - Duration::hours(1), "metadata": {},
            "created_at": t0() - Duration::hours(25), "updated_at": t0(), "version": 1,
        }))
        .unwrap();
        DueWorkflow {
            workflow: w,
            assignee_manager: None,
        }
    }

    #[test]
    fn the_policys_channels_reach_people_without_a_choice_of_their_own() {
        let due = [workflow(4, "mgr", "emp", "Budget sign-off")];
        let users: HashMap<_, _> = [
            user("head", None),
            user("mgr", None),
            user("emp", Some(&["email"])),
        ]
        .into_iter()
        .collect();
        let channels: PolicyChannels = [(
            ("default".to_owned(), 1),
            vec!["slack".to_owned(), "sms".to_owned()],
        )]
        .into();
        let p = build(
            &due,
            &[escalate("head")],
            &users,
            run(),
            Dated::new(t0(), t0()),
            &settings(0),
            &channels,
        );
        let mut rows: Vec<_> = p
            .effects
            .outbox
            .iter()
            .map(|o| (o.channel, o.recipient.as_str()))
            .collect();
        rows.sort();
        // head and mgr take the policy's Slack and SMS; emp chose email and keeps it
        assert_eq!(
            rows,
            [
                ("email", "emp@example.com"),
                ("slack", "U-head"),
                ("slack", "U-mgr"),
                ("sms", "+15553"),
                ("sms", "+15554"),
            ]
        );
        // another policy version, no default: email for everyone
        let p = build(
            &due,
            &[escalate("head")],
            &users,
            run(),
            Dated::new(t0(), t0()),
            &settings(0),
            &[(("default".to_owned(), 2), vec!["sms".to_owned()])].into(),
        );
        assert!(p.effects.outbox.iter().all(|o| o.channel == "email"));
    }

    fn user(id: &str, channels: Option<&[&str]>) -> (String, User) {
        (
            id.to_owned(),
            User {
                id: id.into(),
                display_name: format!("Name of {id}"),
                email: Some(format!("{id}@example.com")),
                phone: Some(format!("+1555{}", id.len())),
                slack: Some(format!("U-{id}")),
                manager_id: None,
                active: true,
                channels: channels.map(|c| c.iter().map(|s| (*s).to_owned()).collect()),
            },
        )
    }

    fn escalate(to: &str) -> Option<Decision> {
        Some(Decision::Escalate {
            level: 1,
            target: to.into(),
            deadlines: Deadlines {
                warn_at: t0() + Duration::hours(22),
                due_at: t0() + Duration::hours(24),
            },
        })
    }

    fn run() -> BatchRef {
        BatchRef {
            check_run_id: Some(7),
            batch_index: None,
        }
    }

    /// [`build`] with every policy sending email by default.
    fn build_with(
        due: &[DueWorkflow],
        decisions: &[Option<Decision>],
        users: &HashMap<String, User>,
        batch: BatchRef,
        at: DateTime<Utc>,
        settings: &MessageSettings,
    ) -> Planned {
        build(
            due,
            decisions,
            users,
            batch,
            Dated { as_of: at, at },
            settings,
            &PolicyChannels::new(),
        )
    }

    fn settings(threshold: u32) -> MessageSettings {
        MessageSettings {
            templates: escalator_notify::Templates::builtin(),
            digest_threshold: threshold,
            events: false,
        }
    }

    #[test]
    fn with_events_on_every_escalation_emits_one_event_and_reminders_none() {
        let due = [
            workflow(1, "mgr", "emp", "Buy chairs"),
            workflow(2, "mgr", "emp", "Hire"),
        ];
        let users: HashMap<_, _> = [user("mgr", None), user("emp", None), user("head", None)]
            .into_iter()
            .collect();
        let remind = Some(Decision::Remind { level: 0 });
        let events = MessageSettings {
            events: true,
            ..settings(5)
        };
        let p = build_with(
            &due,
            &[escalate("head"), remind],
            &users,
            run(),
            t0(),
            &events,
        );
        let ev: Vec<_> = p
            .effects
            .outbox
            .iter()
            .filter(|o| o.channel == "event")
            .collect();
        assert_eq!(ev.len(), 1, "{:?}", p.effects.outbox);
        let e = ev[0];
        assert_eq!(e.workflow_id, Some(due[0].workflow.id));
        assert_eq!(
            e.idempotency_key,
            format!("event:escalate:{}:1:1", due[0].workflow.id)
        );
        assert_eq!(e.payload["kind"], "workflow.escalated");
        assert_eq!(
            (&e.payload["from"], &e.payload["to"]),
            (&"mgr".into(), &"head".into())
        );
        assert_eq!(e.payload["level"], 1);
        assert_eq!(e.payload["check_run_id"], 7);
        assert!(e.payload.get("hold").is_none(), "events are never digested");
        // the same decision planned again gives the same key (a re-run writes nothing new)
        let again = build_with(
            &due,
            &[escalate("head"), None],
            &users,
            run(),
            t0(),
            &events,
        );
        assert!(
            again
                .effects
                .outbox
                .iter()
                .any(|o| o.idempotency_key == e.idempotency_key)
        );
        // off by default
        let off = build_with(
            &due,
            &[escalate("head"), None],
            &users,
            run(),
            t0(),
            &settings(5),
        );
        assert!(off.effects.outbox.iter().all(|o| o.channel != "event"));
    }

    /// A workflow whose policy or calendar could not be read (no decision) is set aside: only
    /// its next check moves, 5 minutes on, and it counts as the batch's failure, named.
    #[test]
    fn a_workflow_without_its_rules_is_set_aside_and_counted_failed() {
        let due = [
            workflow(1, "emp", "boss", "Buy chairs"),
            workflow(2, "emp", "boss", "Buy desks"),
        ];
        let users: HashMap<String, User> = [user("emp", None), user("boss", None)]
            .into_iter()
            .collect();
        let p = build_with(
            &due,
            &[None, Some(Decision::Nothing)],
            &users,
            run(),
            t0(),
            &settings(5),
        );
        assert_eq!((p.effects.counts.checked, p.effects.counts.failed), (2, 1));
        assert_eq!(p.failures.len(), 1);
        assert_eq!(p.failures[0].0, due[0].workflow.id);
        let set_aside = &p.effects.changes[0];
        assert_eq!(set_aside.id, due[0].workflow.id);
        assert_eq!(set_aside.next_check_at, Some(t0() + SET_ASIDE));
        assert_eq!(set_aside.level, due[0].workflow.escalation_level);
        assert_eq!(set_aside.assignee, due[0].workflow.assignee);
        assert!(p.effects.audits.is_empty() && p.effects.outbox.is_empty());
    }

    /// An exhausted workflow found not due (its deadline measured again on resume lies ahead)
    /// is looked at when its deadline passes; it was unscheduled for good. One past its
    /// deadline, at the end of a chain that stops, is unscheduled as before.
    #[test]
    fn an_exhausted_workflow_not_due_yet_is_looked_at_when_its_deadline_passes() {
        let mut ahead = workflow(1, "emp", "boss", "Buy chairs");
        ahead.workflow.exhausted_at = Some(t0() - Duration::hours(2));
        ahead.workflow.due_at = t0() + Duration::hours(13);
        let mut done = workflow(2, "emp", "boss", "Buy desks");
        done.workflow.exhausted_at = Some(t0() - Duration::hours(1));
        let users: HashMap<String, User> = [user("emp", None), user("boss", None)]
            .into_iter()
            .collect();
        let p = build_with(
            &[ahead.clone(), done],
            &[Some(Decision::Nothing), Some(Decision::Nothing)],
            &users,
            run(),
            t0(),
            &settings(0),
        );
        let next: Vec<_> = p.effects.changes.iter().map(|c| c.next_check_at).collect();
        assert_eq!(next, [Some(ahead.workflow.due_at), None]);
        assert!(p.effects.audits.is_empty() && p.effects.outbox.is_empty());
    }

    /// A check dated before an exhausted workflow's deadline that runs after it (a backlog)
    /// leaves the workflow to the next check, which is dated after the deadline; it was
    /// unscheduled for good, since the deadline was behind the moment the rows were written.
    #[test]
    fn a_late_check_dated_before_an_exhausted_workflows_deadline_leaves_it_scheduled() {
        let mut late = workflow(1, "emp", "boss", "Buy chairs");
        late.workflow.exhausted_at = Some(t0() - Duration::hours(2));
        late.workflow.due_at = t0() + Duration::hours(1);
        let users: HashMap<String, User> = [user("emp", None), user("boss", None)]
            .into_iter()
            .collect();
        let p = build(
            std::slice::from_ref(&late),
            &[Some(Decision::Nothing)],
            &users,
            run(),
            Dated::new(t0(), t0() + Duration::hours(3)),
            &settings(0),
            &PolicyChannels::new(),
        );
        let next: Vec<_> = p.effects.changes.iter().map(|c| c.next_check_at).collect();
        assert_eq!(next, [Some(late.workflow.due_at)]);
        assert!(p.effects.audits.is_empty() && p.effects.outbox.is_empty());
    }

    /// A breach counts once, at the escalation or exhaustion that meets it; renotifying a
    /// workflow left at the end of its chain is no new breach.
    #[test]
    fn only_escalations_and_exhaustions_count_as_breaches() {
        let due = [
            workflow(1, "emp", "boss", "Buy chairs"),
            workflow(2, "emp", "boss", "Buy desks"),
            workflow(3, "emp", "boss", "Buy lamps"),
        ];
        let users: HashMap<String, User> =
            [user("emp", None), user("boss", None), user("head", None)]
                .into_iter()
                .collect();
        let later = t0() + Duration::hours(1);
        let p = build_with(
            &due,
            &[
                escalate("head"),
                Some(Decision::Exhausted {
                    level: 0,
                    reason: escalator_policy::Exhaustion::NoTarget,
                    next_check_at: Some(later),
                }),
                Some(Decision::Renotify {
                    level: 1,
                    next_check_at: later,
                }),
            ],
            &users,
            run(),
            t0(),
            &settings(0),
        );
        assert_eq!(p.over_sla, [due[0].workflow.id, due[1].workflow.id]);
        assert_eq!(p.effects.changes.len(), 3);
    }

    /// Two user records sharing one mailbox (letters in another case too): the address is
    /// named once, or SendGrid refuses the whole message for good.
    #[test]
    fn an_address_shared_by_two_recipients_is_named_once() {
        let due = [workflow(1, "mgr", "emp", "Buy chairs")];
        let (_, mut emp) = user("emp", None);
        emp.email = Some("Head@Example.com".into());
        let users: HashMap<_, _> = [user("head", None), user("mgr", None), ("emp".into(), emp)]
            .into_iter()
            .collect();
        let p = build_with(&due, &[escalate("head")], &users, run(), t0(), &settings(0));
        let email = &p.effects.outbox[0];
        assert_eq!(email.payload["to"], serde_json::json!(["head@example.com"]));
        assert_eq!(email.payload["cc"], serde_json::json!(["mgr@example.com"]));
    }

    #[test]
    fn an_escalation_goes_to_the_new_assignee_copying_the_previous_one_and_the_initiator() {
        let due = [workflow(1, "mgr", "emp", "Buy chairs")];
        let users: HashMap<_, _> = [user("mgr", None), user("emp", None), user("head", None)]
            .into_iter()
            .collect();
        let p = build_with(&due, &[escalate("head")], &users, run(), t0(), &settings(0));
        let n: Vec<_> = p
            .effects
            .notifications
            .iter()
            .map(|n| (n.recipient.as_str(), n.role))
            .collect();
        assert_eq!(n, [("head", "to"), ("mgr", "cc"), ("emp", "cc")]);
        assert_eq!(
            p.effects.outbox.len(),
            1,
            "one email, email being the default"
        );
        let email = &p.effects.outbox[0];
        assert_eq!(email.payload["to"], serde_json::json!(["head@example.com"]));
        assert_eq!(
            email.payload["cc"],
            serde_json::json!(["mgr@example.com", "emp@example.com"])
        );
        // whom it reaches: not sent if none of them is active any more when it is sent
        assert_eq!(
            email.payload["user_ids"],
            serde_json::json!(["head", "mgr", "emp"])
        );
        // the state it is about, checked again before it is sent: the new level, held by the
        // target (reassigned since, it goes nowhere)
        assert_eq!(
            (&email.payload["holder_id"], &email.payload["level"]),
            (&serde_json::json!("head"), &serde_json::json!(1))
        );
        assert!(email.payload.get("hold").is_none(), "digests are off");
        // the message is written when it is sent: the payload carries the template set and
        // every value the templates use, and no rendered part
        assert_eq!(email.payload["template"], "escalation_to");
        assert!(email.payload.get("subject").is_none());
        assert!(email.payload.get("html").is_none());
        let t = escalator_notify::Templates::builtin();
        let subject = t
            .render("escalation_to", "subject.txt", &email.payload)
            .unwrap();
        assert!(
            subject.starts_with("Escalated to you: \"Buy chairs\""),
            "{subject}"
        );
        let body = t
            .render("escalation_to", "body.txt", &email.payload)
            .unwrap();
        let in_app = &p.effects.notifications[0];
        assert_eq!(
            (subject.as_str(), body.as_str()),
            (in_app.subject.as_str(), in_app.body.as_str()),
            "the email says what the new assignee's in-app notification says"
        );
        let html = t
            .render("escalation_to", "body.html", &email.payload)
            .unwrap();
        assert!(html.contains("<p>"), "{html}");
    }

    #[test]
    fn recipients_are_deduplicated_and_inactive_ones_skipped_with_an_audit_note() {
        // the initiator is the new assignee; the previous assignee has left
        let due = [workflow(2, "gone", "head", "Hire")];
        let (id, mut gone) = user("gone", None);
        gone.active = false;
        let users: HashMap<_, _> = [user("head", None), (id, gone)].into_iter().collect();
        let p = build_with(&due, &[escalate("head")], &users, run(), t0(), &settings(0));
        let n: Vec<_> = p
            .effects
            .notifications
            .iter()
            .map(|n| n.recipient.as_str())
            .collect();
        assert_eq!(n, ["head"]);
        assert_eq!(
            p.effects.outbox[0].payload["cc"],
            serde_json::json!([]),
            "{:?}",
            p.effects.outbox[0]
        );
        let audit = &p.effects.audits[0];
        assert_eq!(audit.action, "escalate");
        assert_eq!(
            audit.details["skipped_inactive"],
            serde_json::json!(["gone"])
        );
    }

    #[test]
    fn each_user_gets_the_channels_they_chose_where_they_have_an_address() {
        let due = [workflow(3, "mgr", "emp", "Buy <desks>")];
        let (id, mut mgr) = user("mgr", Some(&["sms"]));
        mgr.phone = None; // chose SMS but has no number: nothing for SMS
        let users: HashMap<_, _> = [
            user("head", Some(&["sms", "slack", "webhook"])),
            (id, mgr),
            user("emp", Some(&["email", "slack"])),
        ]
        .into_iter()
        .collect();
        let p = build_with(&due, &[escalate("head")], &users, run(), t0(), &settings(0));
        let mut rows: Vec<_> = p
            .effects
            .outbox
            .iter()
            .map(|o| (o.channel, o.recipient.as_str(), o.idempotency_key.as_str()))
            .collect();
        rows.sort();
        let w = Uuid::from_u128(3);
        assert_eq!(
            rows,
            [
                // head takes no email: the copied initiator gets the message as its addressee
                (
                    "email",
                    "emp@example.com",
                    &*format!("escalate:{w}:1:1:email")
                ),
                ("slack", "U-emp", &*format!("escalate:{w}:1:1:emp:slack")),
                ("slack", "U-head", &*format!("escalate:{w}:1:1:head:slack")),
                ("sms", "+15554", &*format!("escalate:{w}:1:1:head:sms")),
                (
                    "webhook",
                    "head",
                    &*format!("escalate:{w}:1:1:head:webhook")
                ),
            ]
        );
        let sms = p
            .effects
            .outbox
            .iter()
            .find(|o| o.channel == "sms")
            .unwrap();
        assert!(
            sms.payload["body"]
                .as_str()
                .unwrap()
                .contains("Buy <desks>"),
            "{sms:?}"
        );
        // each person's own messages name them, the email only those who take email
        let reaches = |channel: &str, recipient: &str| {
            let o = p
                .effects
                .outbox
                .iter()
                .find(|o| o.channel == channel && o.recipient == recipient);
            o.unwrap().payload["user_ids"].clone()
        };
        assert_eq!(reaches("sms", "+15554"), serde_json::json!(["head"]));
        assert_eq!(reaches("slack", "U-emp"), serde_json::json!(["emp"]));
        assert_eq!(
            reaches("email", "emp@example.com"),
            serde_json::json!(["emp"])
        );
        // in-app is always written
        assert_eq!(p.effects.notifications.len(), 3);
    }

    #[test]
    fn escalations_to_the_new_assignee_in_a_run_are_held_for_the_digest() {
        let due = [workflow(4, "mgr", "emp", "A")];
        let users: HashMap<_, _> = [
            user("head", Some(&["email", "slack"])),
            user("mgr", Some(&["slack"])),
            user("emp", None),
        ]
        .into_iter()
        .collect();
        let p = build_with(&due, &[escalate("head")], &users, run(), t0(), &settings(5));
        let held: Vec<_> = p
            .effects
            .outbox
            .iter()
            .filter(|o| o.payload.get("hold").is_some())
            .map(|o| (o.channel, o.payload["hold"]["group"].as_str().unwrap()))
            .collect();
        assert_eq!(held, [("slack", "head:slack"), ("email", "head:email")]);
        // a copy to the previous assignee is not a digest candidate
        let mgr = p
            .effects
            .outbox
            .iter()
            .find(|o| o.recipient == "U-mgr")
            .unwrap();
        assert!(mgr.payload.get("hold").is_none());
        // without a check run (an api-triggered single check has one too, but the store
        // writes held rows at once when there is none) nothing is marked
        let solo = BatchRef {
            check_run_id: None,
            batch_index: None,
        };
        let p = build_with(&due, &[escalate("head")], &users, solo, t0(), &settings(5));
        assert!(
            p.effects
                .outbox
                .iter()
                .all(|o| o.payload.get("hold").is_none())
        );
    }

    #[test]
    fn a_reminder_goes_to_the_assignee_only() {
        let due = [workflow(5, "mgr", "emp", "R")];
        let users: HashMap<_, _> = [user("mgr", None), user("emp", None)].into_iter().collect();
        let p = build_with(
            &due,
            &[Some(Decision::Remind { level: 0 })],
            &users,
            run(),
            t0(),
            &settings(5),
        );
        assert_eq!(p.effects.notifications.len(), 1);
        assert_eq!(p.effects.notifications[0].recipient, "mgr");
        assert_eq!(p.effects.outbox.len(), 1);
        let payload = &p.effects.outbox[0].payload;
        assert!(payload.get("hold").is_none(), "reminders are not digested");
        // what the deliverer checks again before sending (the template's `assignee` is a
        // display name, hence a key of its own)
        assert_eq!(
            (&payload["holder_id"], &payload["cycle"], &payload["level"]),
            (
                &serde_json::json!("mgr"),
                &serde_json::json!(1),
                &serde_json::json!(0)
            ),
            "{payload}"
        );
    }
}
