//! The pure decision: given a workflow's snapshot and `now`, what the clock wants done.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Calendar, Deadlines, Policy, PolicyError, Target, schedule};

/// Lifecycle state of a workflow (`workflows.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting on the original assignee (level 0).
    Pending,
    /// Waiting on someone further up the chain.
    Escalated,
    /// Paused: the clock does not run.
    OnHold,
    /// Closed, approved or otherwise finished.
    Completed,
    /// Closed without completion.
    Cancelled,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 5] = [
        Status::Pending,
        Status::Escalated,
        Status::OnHold,
        Status::Completed,
        Status::Cancelled,
    ];

    /// Whether the SLA clock runs: pending or escalated.
    pub fn is_open(self) -> bool {
        matches!(self, Status::Pending | Status::Escalated)
    }

    /// The database / JSON spelling, e.g. `"on_hold"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Escalated => "escalated",
            Status::OnHold => "on_hold",
            Status::Completed => "completed",
            Status::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                PolicyError::new(
                    "status",
                    format!(
                        "unknown status {s:?}; expected pending, escalated, on_hold, completed \
                         or cancelled"
                    ),
                )
            })
    }
}

/// Where a workflow stands against its current level's deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SlaStatus {
    /// Before `warn_at`.
    Ok,
    /// Between `warn_at` (inclusive) and `due_at`.
    Warning,
    /// At or after `due_at`.
    Breached,
}

impl SlaStatus {
    /// The JSON / metrics label spelling, e.g. `"breached"`.
    pub fn as_str(self) -> &'static str {
        match self {
            SlaStatus::Ok => "ok",
            SlaStatus::Warning => "warning",
            SlaStatus::Breached => "breached",
        }
    }
}

impl fmt::Display for SlaStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the clock needs to know about a workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Lifecycle state; only open workflows are acted on.
    pub status: Status,
    /// Current escalation level, 0 = original assignee.
    pub level: u32,
    /// Deadlines of the current level.
    pub deadlines: Deadlines,
    /// Warning already sent for this level/cycle.
    pub reminded: bool,
    /// Chain end (or an unresolvable target) already recorded.
    pub exhausted: bool,
    /// Who holds the workflow now.
    pub assignee: String,
    /// `manager_id` of the assignee, for [`Target::Manager`].
    pub assignee_manager: Option<String>,
    /// Per-workflow override of level 1's target.
    pub escalation_target: Option<String>,
    /// Users known to have left (`active: false`): a level naming one of them is passed over
    /// as if it named the holder, since an inactive user receives nothing. Empty unless the
    /// caller found such a target ([`Decision::Escalate`] to an inactive user).
    pub passed_over: BTreeSet<String>,
}

/// Why the chain cannot go further.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exhaustion {
    /// The last level's deadline passed.
    ChainEnd,
    /// The next level's target could not be resolved (e.g. `manager` with no manager).
    NoTarget,
}

impl Exhaustion {
    /// The audit / JSON spelling, e.g. `"no_target"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Exhaustion::ChainEnd => "chain_end",
            Exhaustion::NoTarget => "no_target",
        }
    }
}

/// What to do with a workflow now.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing is due.
    Nothing,
    /// Send the warning reminder for `level` (once).
    Remind {
        /// The level being warned about (the current one).
        level: u32,
    },
    /// Escalate to `level` (= snapshot.level + 1), reassign to `target`, fresh deadlines for the
    /// new level starting at `now` (the moment it is applied: [`evaluate_applied`]).
    Escalate {
        /// The new level.
        level: u32,
        /// User id of the new assignee.
        target: String,
        /// Deadlines of the new level, from `now`.
        deadlines: Deadlines,
    },
    /// The chain is over (or no target could be resolved): record once. `next_check_at` is
    /// `Some(now + every)` for [`AfterLast::Repeat`](crate::AfterLast::Repeat), `None` for [`AfterLast::Stop`](crate::AfterLast::Stop).
    Exhausted {
        /// The level the workflow stays at.
        level: u32,
        /// Why it cannot escalate.
        reason: Exhaustion,
        /// When to renotify, if the policy repeats.
        next_check_at: Option<DateTime<Utc>>,
    },
    /// [`AfterLast::Repeat`](crate::AfterLast::Repeat) after exhaustion was recorded: notify again, next check at
    /// `now + every`.
    Renotify {
        /// The level the workflow stays at.
        level: u32,
        /// When to renotify next.
        next_check_at: DateTime<Utc>,
    },
}

/// `Ok` if `now < warn_at`, `Warning` if `warn_at <= now < due_at`, `Breached` if
/// `now >= due_at`.
pub fn sla_status(deadlines: &Deadlines, now: DateTime<Utc>) -> SlaStatus {
    if now >= deadlines.due_at {
        SlaStatus::Breached
    } else if now >= deadlines.warn_at {
        SlaStatus::Warning
    } else {
        SlaStatus::Ok
    }
}

/// The pure decision for `snapshot` at `now`.
///
/// Not open (on hold, closed) → `Nothing`. Breached with a level left → `Escalate` to the next
/// level's resolved target (level 1 honours the workflow's `escalation_target`), or
/// `Exhausted { NoTarget }` when none resolves. Breached at the last level → `Exhausted
/// { ChainEnd }` once, then `Renotify` (repeat) or `Nothing` (stop). In the warning window and
/// not yet reminded → `Remind`. Otherwise `Nothing`.
///
/// The decision is idempotent given the recorded flags: the caller records `reminded`,
/// `exhausted` or the new level with the effect, so re-evaluating never repeats an effect.
pub fn evaluate(
    snapshot: &Snapshot,
    policy: &Policy,
    calendar: Option<&Calendar>,
    now: DateTime<Utc>,
) -> Decision {
    evaluate_applied(snapshot, policy, calendar, now, now)
}

/// [`evaluate`] for a check that judges what was due at `as_of` and carries its decisions out
/// at `applied_at`. A check that runs late (a backlog of jobs, a worker outage) still escalates
/// what had breached by `as_of`, but the new level's SLA, and the next renotification, start
/// when the escalation is made: the new assignee gets the whole SLA, not what the delay left of
/// it. An `applied_at` before `as_of` (a check asked about the future) counts as `as_of`, so the
/// new deadlines always lie after `as_of` and a second check at the same `as_of` finds nothing.
pub fn evaluate_applied(
    snapshot: &Snapshot,
    policy: &Policy,
    calendar: Option<&Calendar>,
    as_of: DateTime<Utc>,
    applied_at: DateTime<Utc>,
) -> Decision {
    if !snapshot.status.is_open() {
        return Decision::Nothing;
    }
    match sla_status(&snapshot.deadlines, as_of) {
        SlaStatus::Ok => Decision::Nothing,
        SlaStatus::Warning if snapshot.reminded => Decision::Nothing,
        SlaStatus::Warning => Decision::Remind {
            level: snapshot.level,
        },
        SlaStatus::Breached => breached(snapshot, policy, calendar, applied_at.max(as_of)),
    }
}

fn breached(
    snapshot: &Snapshot,
    policy: &Policy,
    calendar: Option<&Calendar>,
    now: DateTime<Utc>,
) -> Decision {
    // A target that resolves wins even after an earlier NoTarget was recorded: if the org
    // chart was fixed since (a manager assigned), the workflow should move on. A level naming
    // only whoever holds the workflow already (an override kept across a new stage, a
    // reassignment to the next level's user) is passed over: escalating from someone to
    // themselves tells no one. So is one naming a user who has left (`passed_over`).
    let mut reason = Exhaustion::ChainEnd;
    for next in snapshot.level + 1..=policy.level_count() {
        match resolve_target(snapshot, policy, next) {
            Resolved::To(target) => {
                if let Some(deadlines) = schedule(now, 0, next, policy, calendar) {
                    return Decision::Escalate {
                        level: next,
                        target,
                        deadlines,
                    };
                }
                reason = Exhaustion::NoTarget;
                break;
            }
            Resolved::Holder { gone } => {
                if gone {
                    reason = Exhaustion::NoTarget;
                }
            }
            // a `manager` level whose holder has no active manager is passed over too: the
            // chain's later levels (a director, an on-call) are its safety net, and stopping
            // here left them untold for good
            Resolved::Nobody => {
                reason = Exhaustion::NoTarget;
            }
        }
    }
    let next_check_at = policy
        .repeat_every_seconds()
        .map(|seconds| crate::clock::seconds_after(now, seconds));
    match (snapshot.exhausted, next_check_at) {
        (false, _) => Decision::Exhausted {
            level: snapshot.level,
            reason,
            next_check_at,
        },
        (true, Some(next_check_at)) => Decision::Renotify {
            level: snapshot.level,
            next_check_at,
        },
        (true, None) => Decision::Nothing,
    }
}

/// Whom a level escalates to.
enum Resolved {
    /// This user, who does not hold the workflow.
    To(String),
    /// Only the user who holds it already, or one who has left (`gone`): the next level is
    /// tried.
    Holder {
        /// The level's target has left: if no later level resolves, no one could be reached.
        gone: bool,
    },
    /// No one (`manager` with no active manager): passed over to the chain's next level; with
    /// none resolving, exhausted until the org chart names someone.
    Nobody,
}

/// Whom level `level` escalates to: level 1's override if the workflow has one, else the
/// policy's target (also when the override is the holder: the policy's level 1 may still
/// name someone above). Blank ids count as absent, so an empty override or manager column
/// never "escalates" to nobody.
fn resolve_target(snapshot: &Snapshot, policy: &Policy, level: u32) -> Resolved {
    let overridden = if level == 1 {
        present(&snapshot.escalation_target)
    } else {
        None
    };
    let configured = match policy.target(level) {
        Some(Target::User(id)) => Some(id.as_str()),
        Some(Target::Manager) => present(&snapshot.assignee_manager),
        None => None,
    };
    let mut holder = false;
    let mut gone = false;
    for id in [overridden, configured].into_iter().flatten() {
        if id == snapshot.assignee {
            holder = true;
        } else if snapshot.passed_over.contains(id) {
            gone = true;
        } else {
            return Resolved::To(id.to_owned());
        }
    }
    // a missing manager wins over the holder: giving the assignee a manager moves it on
    if (holder || gone) && configured.is_some() {
        Resolved::Holder { gone }
    } else {
        Resolved::Nobody
    }
}

fn present(id: &Option<String>) -> Option<&str> {
    id.as_deref().filter(|id| !id.trim().is_empty())
}

/// When the workflow must next be looked at: `None` if not open or exhausted (the caller
/// schedules [`AfterLast::Repeat`](crate::AfterLast::Repeat) renotifications itself); else `warn_at` until the reminder
/// is recorded, then `due_at`.
pub fn next_check_at(snapshot: &Snapshot) -> Option<DateTime<Utc>> {
    if !snapshot.status.is_open() || snapshot.exhausted {
        return None;
    }
    let Deadlines { warn_at, due_at } = snapshot.deadlines;
    Some(if snapshot.reminded {
        due_at
    } else {
        warn_at.min(due_at)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_parse_from_their_own_spelling() {
        for status in Status::ALL {
            assert_eq!(status.as_str().parse(), Ok(status));
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::json!(status.as_str())
            );
        }
        let err = "open".parse::<Status>().unwrap_err();
        assert_eq!(err.field, "status");
        assert!(err.message.contains("\"open\""), "{err}");
    }

    #[test]
    fn only_pending_and_escalated_are_open() {
        let open: Vec<Status> = Status::ALL.into_iter().filter(|s| s.is_open()).collect();
        assert_eq!(open, [Status::Pending, Status::Escalated]);
    }

    #[test]
    fn labels_match_their_serde_spelling() {
        for status in [SlaStatus::Ok, SlaStatus::Warning, SlaStatus::Breached] {
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::json!(status.as_str())
            );
        }
        for reason in [Exhaustion::ChainEnd, Exhaustion::NoTarget] {
            assert_eq!(
                serde_json::to_value(reason).unwrap(),
                serde_json::json!(reason.as_str())
            );
        }
    }
}
